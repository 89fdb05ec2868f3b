"""Grouped data loading for training and evaluation.

A :class:`RefDataset` reads a tokenize output folder (its manifest and the language's shard of a
split, through :class:`components.text.tokenized.TokenizedData`) and gives ONE ITEM PER IMAGE
holding all of that image's expressions of the split, so that the network runs its backbone once
per image and fans the features out to the expressions (``image_index``). Images come from a local
path or ``s3://`` (downloaded once into ``cache_dir`` by :func:`components.data.storage.local_copy`),
are fitted to the model's input size by :class:`model.geometry.InputFit` (the same call as
``model.predict``: stretched, or scaled with the aspect ratio kept and padded, ``resize``), masks
are decoded from COCO RLE and fitted the same way with nearest-neighbour sampling.

:class:`GroupedSampler` orders the items of an epoch: it shuffles images with a seeded generator,
can cap the expressions per image per batch (an image with more expressions is split into several
chunks, so every expression is still seen once per epoch), shards the order over DDP ranks like
``DistributedSampler`` (rank r takes positions r, r + W, ...: the union of the ranks' i-th batches
is the single-process i-th global batch) and can start part-way through an epoch (resume).
Everything is deterministic: the same (seed, epoch) gives the same order on every machine.

:class:`PairSampler` (``batching: pair``, the paper's training) orders image-expression pairs
instead: each item is one image with ONE of its expressions, every pair once per epoch, with the
same seeding, sharding and resume offset.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from components.data import storage
from components.errors import ConfigError, InputError, MissingInputError
from components.text.tokenized import TokenizedData

if TYPE_CHECKING:
    from model.geometry import InputFit


class RefDataError(InputError):
    """The data folder is inconsistent; the message names the offending record."""


def _tokenized(data: str | TokenizedData) -> TokenizedData:
    return data if isinstance(data, TokenizedData) else TokenizedData(str(data))


def load_shard(data: str | TokenizedData, lang: str, split: str) -> dict[str, np.ndarray]:
    """The shard of ``lang`` and ``split`` as arrays, checked for shape consistency."""
    data = _tokenized(data)
    sh = data.read_shard(lang, split)
    uri = data.shard_uri(lang, split)
    ids, tok, lens = sh["sample_id"], sh["tokens"], sh["lengths"]
    if tok.ndim != 2 or ids.shape != (tok.shape[0],) or lens.shape != (tok.shape[0],):
        raise RefDataError(f"{uri}: inconsistent shapes sample_id {ids.shape}, tokens {tok.shape},"
                           f" lengths {lens.shape}")
    if len(ids):
        bad = np.flatnonzero((lens < 1) | (lens > tok.shape[1]))
        if len(bad):
            raise RefDataError(f"{uri}: sample {ids[bad[0]]!r} has length {int(lens[bad[0]])} "
                               f"outside [1, {tok.shape[1]}]")
    return {"sample_id": ids.astype(str), "tokens": tok.astype(np.int64),
            "lengths": lens.astype(np.int64)}


class RefDataset:
    """One item per image of ``split`` with all of its expressions in language ``lang``.

    Item: ``{"image": float32 [3,S,S] in [0,1], "tokens": int64 [k,T], "lengths": int64 [k],
    "masks": float32 [k,1,S,S], "sample_ids": list[str], "image_id": int, "index": int}``.
    ``dataset[(i, (j1, j2, ...))]`` gives image ``i`` with only the expressions at positions
    j1, j2, ... (what :class:`GroupedSampler` yields when it caps expressions per image).
    Images are ordered by (image_id, image_uri); expressions of an image keep their shard order.
    ``fit``: how images and masks sit in the S x S input (``InputFit.of(model_cfg)``; default:
    stretched to ``input_size``).
    """

    def __init__(self, data: str | TokenizedData, lang: str, split: str, input_size: int,
                 cache_dir: str | None = None, memory_cache: bool = False,
                 fit: InputFit | None = None):
        import pandas as pd

        from model.geometry import InputFit

        data = _tokenized(data)
        self.data_dir = data.root
        self.lang = lang
        self.split = split
        self.input_size = int(input_size)
        if self.input_size < 1:
            raise ConfigError(f"input_size must be >= 1, got {input_size}")
        self.fit = fit or InputFit(self.input_size)
        self.mirror = None  # a flip.MirrorTable: items drawn for a flip are mirrored (training)
        self.vmirror = None  # the same for vertical flips (axis "vertical")
        self._width: dict[int, int] = {}  # image index -> its width inside the input
        self._height: dict[int, int] = {}  # image index -> its height inside the input
        if self.fit.size != self.input_size:
            raise ConfigError(f"input_size {self.input_size} differs from the fit's {self.fit.size}")
        self.cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "refseg-image-cache")
        self.memory_cache = bool(memory_cache)
        self._mem: dict[int, tuple[Any, Any]] = {}

        shard = load_shard(data, lang, split)
        df = data.read_manifest()
        pos = pd.Series(np.arange(len(df)), index=df["sample_id"].to_numpy())
        ids = [str(s) for s in shard["sample_id"]]
        missing = [s for s in ids if s not in pos.index]
        if missing:
            raise RefDataError(f"{data.shard_uri(lang, split)}: sample {missing[0]!r} is not in "
                               f"{data.manifest_uri} ({len(missing)} missing)")
        rows = pos.loc[ids].to_numpy() if len(ids) else np.zeros(0, dtype=np.int64)
        image_ids = df["image_id"].to_numpy()[rows]
        uris = df["image_uri"].to_numpy()[rows]
        masks = df["mask"].to_numpy()[rows]
        splits = df["split"].to_numpy()[rows]
        wrong = np.flatnonzero(splits != split)
        if len(wrong):
            raise RefDataError(f"sample {ids[wrong[0]]!r} is in shard {split!r} but the manifest "
                               f"says split {str(splits[wrong[0]])!r}")

        groups: dict[tuple[int, str], list[int]] = {}
        for r, (iid, uri) in enumerate(zip(image_ids, uris, strict=True)):
            groups.setdefault((int(iid), str(uri)), []).append(r)
        for (_, uri), members in groups.items():
            self._check_image_uri(uri, ids[members[0]])
        self._keys = sorted(groups)
        self._members = [np.asarray(groups[k], dtype=np.int64) for k in self._keys]
        self._tokens = shard["tokens"]
        self._lengths = shard["lengths"]
        self._sample_ids = ids
        self._rle = {s: m for s, m in zip(ids, masks, strict=True)}
        self._by_image_id: dict[int, int] = {}
        self._dup_image_ids: dict[int, list[str]] = {}
        for i, (iid, uri) in enumerate(self._keys):
            if iid in self._by_image_id:
                self._dup_image_ids.setdefault(iid, [self._keys[self._by_image_id[iid]][1]])
                self._dup_image_ids[iid].append(uri)
            else:
                self._by_image_id[iid] = i

    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._keys)

    @property
    def num_expressions(self) -> int:
        return len(self._sample_ids)

    def expression_counts(self) -> list[int]:
        """Number of expressions of each image (dataset order)."""
        return [len(m) for m in self._members]

    @property
    def sample_ids(self) -> list[str]:
        return list(self._sample_ids)

    def image_ids(self) -> list[int]:
        return [k[0] for k in self._keys]

    def _check_image_uri(self, uri: str, sample_id: str) -> None:
        """An s3:// image must have a place inside the image cache (no ``..`` in its key, ...):
        checked for every image before any is read, the message names a sample."""
        if not storage.is_s3(uri):
            return
        try:
            storage.cache_path(uri, self.cache_dir)
        except (storage.UnsafePathError, storage.BadURIError) as exc:
            raise RefDataError(f"sample {sample_id!r}: image_uri refused: {exc}") from None

    def _local_image(self, uri: str) -> str:
        return storage.local_copy(uri, self.cache_dir)

    def _read_image(self, uri: str, record: str = "") -> np.ndarray:
        """The image as uint8 HxWx3. A missing, undecodable or truncated image, or one over
        Pillow's pixel limit (a decompression bomb), is an error naming the image and ``record``
        (the sample that uses it), never a bare Pillow error: check-translations quarantines such
        images before training (components/checks/images.py)."""
        from PIL import Image

        where = f"{record}: " if record else ""
        path = self._local_image(uri)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except FileNotFoundError:
            raise MissingInputError(f"{where}image {uri}: no such file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RefDataError(f"{where}image {uri} is over the pixel limit (decompression bomb "
                               f"guard): {exc}") from exc
        except OSError as exc:
            raise RefDataError(f"{where}image {uri} cannot be decoded: {exc}") from exc

    def _record(self, index: int) -> str:
        """The sample that names image ``index`` in errors (its first expression)."""
        members = self._members[index]
        return f"sample {self._sample_ids[members[0]]!r}" if len(members) else ""

    def _resized(self, index: int, rows=None):
        """(uint8 [3,S,S] tensor, {row: uint8 [S,S] tensor}) for image ``index``: the masks of
        ``rows`` (all of the image's when None or when the memory cache keeps them)."""
        import torch

        if index in self._mem:
            return self._mem[index]
        iid, uri = self._keys[index]
        img = self._read_image(uri, self._record(index))
        h, w = img.shape[:2]
        self._height[index], self._width[index] = self.fit.region(h, w)
        x = self.fit.image(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0)
        masks = {}
        for r in self._members[index] if rows is None or self.memory_cache else rows:
            sid = self._sample_ids[r]
            m = self._decode(sid)
            if m.shape != (h, w):
                raise RefDataError(f"sample {sid!r}: mask size {m.shape} differs from its image "
                                   f"{uri} ({h}x{w})")
            t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.uint8))
            masks[int(r)] = self.fit.mask(t)
        out = (x[0], masks)
        if self.memory_cache:
            self._mem[index] = out
        return out

    def _decode(self, sample_id: str) -> np.ndarray:
        from components.data.manifest import decode_mask

        try:
            return decode_mask(self._rle[sample_id])
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in split {self.split!r}") from None
        except Exception as exc:  # pycocotools raises bare errors on corrupt RLE
            raise RefDataError(f"sample {sample_id!r}: mask RLE cannot be decoded: {exc}") from exc

    def __getitem__(self, key) -> dict[str, Any]:
        import torch

        flip, zoom = 0, None
        if isinstance(key, (tuple, list)):  # (image, positions[, flip code[, zoom]]): augment.py
            index, sel = int(key[0]), key[1]
            flip = int(key[2]) if len(key) > 2 else 0
            zoom = key[3] if len(key) > 3 else None
        else:
            index, sel = int(key), None
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range [0, {len(self)})")
        members = self._members[index]
        if sel is not None:
            members = members[np.asarray(sel, dtype=np.int64)]
        image, masks = self._resized(index, None if sel is None else members)
        image = image.float()
        tokens = self._tokens[members]
        mask = torch.stack([masks[int(r)] for r in members])[:, None].float()
        if flip or zoom is not None:
            image, mask, tokens = self._augmented(index, image, mask, tokens, flip, zoom)
        return {
            "image": image,
            "tokens": torch.from_numpy(tokens),
            "lengths": torch.from_numpy(self._lengths[members]),
            "masks": mask,
            "sample_ids": [self._sample_ids[r] for r in members],
            "image_id": int(self._keys[index][0]),
            "index": index,
        }

    def _augmented(self, index: int, image, mask, tokens, flip: int, zoom):
        """The item's flips (bits of ``flip``; an expression without a mirror blocks its axis)
        and zoom-out (components/data/augment.py)."""
        import torch

        from components.data.augment import FLIP_H, FLIP_V, zoom_out
        from model.pixels import pad_colour

        for bit, table, dim in ((FLIP_H, self.mirror, -1), (FLIP_V, self.vmirror, -2)):
            if flip & bit and table is not None and table.flippable(tokens):
                image, mask = self._flipped(index, image, dim), self._flipped(index, mask, dim)
                tokens = table.mirror(tokens)
        if zoom is not None:
            region = (self._height[index], self._width[index])
            fill = torch.tensor(pad_colour(self.fit.pixels), dtype=image.dtype).view(3, 1, 1)
            image = zoom_out(image, region, zoom, fill, binary=False)
            mask = zoom_out(mask, region, zoom, 0.0, binary=True)
        return image, mask, tokens

    def _flipped(self, index: int, t, dim: int = -1):
        """``t`` [..., S, S] mirrored along ``dim`` (-1: left-right, -2: top-bottom) within the
        image's region of the input (with ``resize: pad`` the padding stays where it is)."""
        out = t.clone()
        if dim == -1:
            w = self._width[index]
            out[..., :w] = t[..., :w].flip(-1)
        else:
            h = self._height[index]
            out[..., :h, :] = t[..., :h, :].flip(-2)
        return out

    # ------------------------------------------------------------------------------------------
    def full_mask(self, sample_id: str) -> np.ndarray:
        """The ground-truth mask at the original resolution (uint8 HxW of 0/1)."""
        return self._decode(str(sample_id))

    def original_image(self, image_id: int) -> np.ndarray:
        """The image at its original resolution (uint8 HxWx3)."""
        iid = int(image_id)
        if iid in self._dup_image_ids:
            raise RefDataError(f"image_id {iid} names several images in split {self.split!r}: "
                               f"{self._dup_image_ids[iid][:3]}; use image(index)")
        if iid not in self._by_image_id:
            raise KeyError(f"image_id {iid} is not in split {self.split!r} of {self.data_dir}")
        index = self._by_image_id[iid]
        return self._read_image(self._keys[index][1], self._record(index))

    def image(self, index: int) -> np.ndarray:
        """The image of item ``index`` at its original resolution (uint8 HxWx3)."""
        return self._read_image(self._keys[int(index)][1], self._record(int(index)))


def collate_grouped(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items of :class:`RefDataset` -> one batch: ``images [B,3,S,S]``, ``tokens [N,T]`` (trimmed
    to the longest expression of the batch), ``lengths [N]``, ``image_index [N]`` (which image each
    expression belongs to), ``masks [N,1,S,S]``, ``sample_ids`` (N), ``image_ids`` (B)."""
    import torch

    if not items:
        raise ValueError("collate_grouped: no items")
    images = torch.stack([it["image"] for it in items])
    tokens = torch.cat([it["tokens"] for it in items])
    lengths = torch.cat([it["lengths"] for it in items])
    index = torch.cat([torch.full((len(it["lengths"]),), b, dtype=torch.long)
                       for b, it in enumerate(items)])
    t = int(lengths.max()) if len(lengths) else 1
    return {
        "images": images,
        "tokens": tokens[:, :max(t, 1)].contiguous(),
        "lengths": lengths,
        "image_index": index,
        "masks": torch.cat([it["masks"] for it in items]),
        "sample_ids": [s for it in items for s in it["sample_ids"]],
        "image_ids": [int(it["image_id"]) for it in items],
    }


class GroupedSampler:
    """Seeded order of (image, expression positions) items for one epoch, sharded over ranks.

    ``counts``: expressions per image (``RefDataset.expression_counts()``). With
    ``max_expressions`` set, an image with more expressions is split into chunks of at most that
    many (expressions shuffled first when ``shuffle``), each chunk an item of its own. With
    ``batch_size`` (images per rank per batch) and ``drop_last``, the epoch is cut to a multiple of
    ``batch_size * num_replicas`` so every rank gets full, equally sized batches (padded by
    repeating the start when the epoch is shorter than one global batch). ``set_epoch(e)`` changes
    the permutation; ``set_start(n)`` skips this rank's first n items (resume inside an epoch).
    """

    def __init__(self, counts: Sequence[int], shuffle: bool = True, seed: int = 0,
                 max_expressions: int | None = None, num_replicas: int = 1, rank: int = 0,
                 batch_size: int = 1, drop_last: bool = True, hflip: float = 0.0,
                 vflip: float = 0.0, zoom_out: float = 0.0):
        from components.data.augment import Augmentation

        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad rank {rank} for {num_replicas} replicas")
        if max_expressions is not None and int(max_expressions) < 1:
            raise ValueError(f"max_expressions must be >= 1 or None, got {max_expressions}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.counts = [int(c) for c in counts]
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.max_expressions = None if max_expressions is None else int(max_expressions)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.hflip = float(hflip)  # share of items drawn for a horizontal flip (flip.py)
        self.augment = Augmentation(float(hflip), float(vflip), float(zoom_out))
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0

    def set_start(self, n: int) -> None:
        self.start = int(n)

    def epoch_items(self, epoch: int | None = None) -> list:
        """All ranks' items of ``epoch`` in global order (before sharding)."""
        import torch

        epoch = self.epoch if epoch is None else int(epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        items = self._ordered(g)
        if self.augment.active:  # (image, positions, flip code, zoom); the order is drawn as
            # without augmentation (augment.py)
            draws = self.augment.draws(len(items), self.seed, epoch)
            items = [(it, None, f, z) if isinstance(it, int) else (it[0], it[1], f, z)
                     for it, (f, z) in zip(items, draws, strict=True)]
        return self._cut(items)

    def _ordered(self, g) -> list:
        """The epoch's items in order, drawn from the seeded generator ``g``."""
        import torch

        n = len(self.counts)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        items: list = []
        for i in order:
            k = self.counts[i]
            if k == 0:
                continue
            cap = self.max_expressions
            if cap is None or k <= cap:
                items.append(i if cap is None else (i, tuple(range(k))))
                continue
            pos = torch.randperm(k, generator=g).tolist() if self.shuffle else list(range(k))
            for c in range(0, k, cap):
                items.append((i, tuple(sorted(pos[c:c + cap]))))
        return items

    def _cut(self, items: list) -> list:
        """Whole global batches (``drop_last``) or a length divisible by the ranks."""
        if self.drop_last and items:
            glob = self.batch_size * self.num_replicas
            if len(items) < glob:
                items = (items * math.ceil(glob / len(items)))[:glob]
            else:
                items = items[: len(items) - len(items) % glob]
        elif items and len(items) % self.num_replicas:
            pad = self.num_replicas - len(items) % self.num_replicas
            items = items + items[:pad]
        return items

    def rank_items(self, epoch: int | None = None) -> list:
        return self.epoch_items(epoch)[self.rank::self.num_replicas]

    def batches_per_epoch(self) -> int:
        n = len(self.rank_items())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator:
        return iter(self.rank_items()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.rank_items()) - self.start)


class PairSampler(GroupedSampler):
    """Seeded order of image-expression PAIRS for one epoch (``batching: pair``), sharded over
    ranks like :class:`GroupedSampler` (whose cutting, sharding and resume offset it shares).

    Every expression of every image is one item ``(image, (position,))``: a group of one
    expression, so :class:`RefDataset` and :func:`collate_grouped` serve it unchanged (a batch of
    B pairs is B images, one expression each). The pairs of an epoch are one seeded permutation
    of all pairs; ``batch_size`` counts pairs per rank per batch.
    """

    def __init__(self, counts: Sequence[int], shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, batch_size: int = 1,
                 drop_last: bool = True, hflip: float = 0.0, vflip: float = 0.0,
                 zoom_out: float = 0.0):
        super().__init__(counts, shuffle=shuffle, seed=seed, max_expressions=None,
                         num_replicas=num_replicas, rank=rank, batch_size=batch_size,
                         drop_last=drop_last, hflip=hflip, vflip=vflip, zoom_out=zoom_out)
        self.pairs = [(i, (j,)) for i, k in enumerate(self.counts) for j in range(k)]

    def _ordered(self, g) -> list:
        import torch

        if not self.shuffle:
            return list(self.pairs)
        return [self.pairs[p] for p in torch.randperm(len(self.pairs), generator=g).tolist()]
