"""The prediction loop of the evaluate step: every image of a split through the model once, with all
its expressions (and the shuffled ones of the sanity row) in the same forward pass.

The logits are upsampled (bilinear) to the ORIGINAL image size, passed through the sigmoid and
thresholded (``prob > params.threshold``, 0.5); intersections and unions are counted against the
original-resolution ground truth (``RefDataset.full_mask``). DenseCRF (:mod:`.crf`) runs on the
original image and the same probabilities in worker processes while the next batch is predicted.
``max_samples`` keeps the first N expressions in dataset order (images sorted by id).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from components.errors import InputError
from components.evaluation.crf import CRFParams, CRFPool
from components.evaluation.metrics import intersection_union, summarize
from components.evaluation.sanity import ShuffledRows, extend_batch, plan_batch


class Timings:
    """Seconds per phase, summed, in the order the phases first ran."""

    def __init__(self) -> None:
        self.t: dict[str, float] = OrderedDict()

    def add(self, key: str, seconds: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + float(seconds)

    def get(self, key: str) -> float:
        return self.t.get(key, 0.0)

    @contextlib.contextmanager
    def measure(self, key: str):
        t = time.perf_counter()
        yield
        self.add(key, time.perf_counter() - t)

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.t.items()}


def upsample_probs(logits, size: tuple[int, int], fit=None) -> np.ndarray:
    """logits [k,1,S,S] (torch, any device) -> float32 [k,H,W] probabilities at ``size``;
    ``fit``: the dataset's :class:`model.geometry.InputFit` (None: stretched to S x S)."""
    import torch

    from model.geometry import InputFit

    fit = fit or InputFit(int(logits.shape[-1]))
    return torch.sigmoid(fit.restore(logits, size))[:, 0].cpu().numpy().astype(np.float32)


def original_image(ds, item) -> np.ndarray:
    """uint8 HxWx3 of a RefDataset item at its original resolution (by dataset index when the
    item carries one: image ids need not be unique across image files)."""
    if "index" in item and hasattr(ds, "image"):
        img = ds.image(int(item["index"]))
    else:
        img = ds.original_image(int(item["image_id"]))
    return np.ascontiguousarray(img)


@dataclass
class Predictions:
    """What the loop found: one row per sample in dataset order (sample_id, image_id, language,
    intersection, union, and with CRF intersection_crf, union_crf, crf_seconds), the shuffled
    counts by row index, the sanity row's image counts, each CRF call's seconds and the dataset
    index of every image id."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    shuffled: dict[int, tuple[int, int]] = field(default_factory=dict)
    sanity_counts: dict[str, int] = field(
        default_factory=lambda: {"images_used": 0, "images_skipped_single_object": 0})
    crf_seconds: list[float] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)

    def counts(self, crf: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample (intersections, unions), before or after CRF, as int64 arrays."""
        i_key, u_key = ("intersection_crf", "union_crf") if crf else ("intersection", "union")
        return (np.array([r[i_key] for r in self.rows], dtype=np.int64),
                np.array([r[u_key] for r in self.rows], dtype=np.int64))

    def metrics(self, split: str, crf: bool) -> dict[str, float]:
        """``{split}_overall_iou`` ... and, with CRF, the same names ending in ``_crf``."""
        out = summarize(*self.counts(), prefix=f"{split}_")
        if crf:
            out.update(summarize(*self.counts(crf=True), prefix=f"{split}_", suffix="_crf"))
        return out


class Evaluator:
    """Runs the model over a :class:`RefDataset` split; see the module doc."""

    def __init__(self, model, ds, ann_id_of: dict[str, int], params: CRFParams,
                 pool: CRFPool | None, timings: Timings, *, seed: int, batch_images: int,
                 max_samples: int | None, lang: str):
        self.model, self.ds, self.ann_id_of = model, ds, ann_id_of
        self.params, self.pool, self.timings = params, pool, timings
        self.seed, self.batch_images, self.lang = int(seed), int(batch_images), lang
        self.budget = max_samples
        self.out = Predictions()
        self._next_image = 0
        # CRF tickets in submission order -> (row indices, ground truths)
        self._pending: OrderedDict[int, tuple[list[int], list[np.ndarray]]] = OrderedDict()

    def run(self, bar=None) -> Predictions:
        """Every image (or the first ``max_samples`` expressions); ``bar``: an optional tqdm bar
        advanced by images."""
        from components.data.refdata import collate_grouped

        while self._more():
            with self.timings.measure("data_s"):
                items = self._take()
                batch = collate_grouped(items)
            logits, shuffled, n_true = self._forward(items, batch)
            with self.timings.measure("postprocess_s"):
                self._score(items, logits, shuffled, n_true)
            if self.pool is not None:
                self._drain(keep=2 * self.pool.workers + 2)
            if bar is not None:
                bar.update(len(items))
        if self.pool is not None:
            self._drain(keep=0)
        return self.out

    # ---- the steps of one batch --------------------------------------------------------------
    def _more(self) -> bool:
        return self._next_image < len(self.ds) and (self.budget is None or self.budget > 0)

    def _take(self) -> list[dict[str, Any]]:
        """The next ``batch_images`` items, the last one cut to the remaining expression budget."""
        items = []
        while self._more() and len(items) < self.batch_images:
            it = self.ds[self._next_image]
            self.out.positions[int(it["image_id"])] = int(it.get("index", self._next_image))
            self._next_image += 1
            k = len(it["sample_ids"])
            if self.budget is not None and k > self.budget:
                b = self.budget
                it = dict(it, tokens=it["tokens"][:b], lengths=it["lengths"][:b],
                          masks=it["masks"][:b], sample_ids=it["sample_ids"][:b])
                k = b
            if self.budget is not None:
                self.budget -= k
            items.append(it)
        return items

    def _forward(self, items, batch):
        """Logits of the true expressions followed by the shuffled ones (sanity row)."""
        import torch

        from model import forward

        with self.timings.measure("forward_s"):
            shuffled = plan_batch(items, self.ann_id_of, self.seed, self.out.sanity_counts)
            n_true = batch["tokens"].shape[0]
            tokens, lengths, image_index = extend_batch(batch["tokens"], batch["lengths"],
                                                        batch["image_index"], shuffled)
            with torch.no_grad():
                logits = forward(self.model, batch["images"], tokens, lengths,
                                 image_index)["logits"]
            if logits.device.type == "cuda":
                torch.cuda.synchronize(logits.device)
        return logits, shuffled, n_true

    def _score(self, items, logits, shuffled: ShuffledRows, n_true: int) -> None:
        """Upsample to each original image, threshold, count; queue the CRF; score the shuffled
        rows against the original expressions' ground truth."""
        import torch

        offset = 0
        for it in items:
            k = len(it["sample_ids"])
            image = original_image(self.ds, it)
            h, w = image.shape[:2]
            probs = upsample_probs(logits[offset:offset + k], (h, w), getattr(self.ds, "fit", None))
            gts = [np.asarray(self.ds.full_mask(s)).astype(bool) for s in it["sample_ids"]]
            row_ids = self._count(it, probs, gts, (h, w))
            if self.pool is not None:
                with self.timings.measure("crf_submit_s"):
                    ticket = self.pool.submit(image, list(probs))
                self._pending[ticket] = (row_ids, gts)
            pos = shuffled.of_image(offset, offset + k)
            if pos:
                sel = torch.as_tensor([n_true + q for q in pos], dtype=torch.long,
                                      device=logits.device)
                sprobs = upsample_probs(logits.index_select(0, sel), (h, w),
                                        getattr(self.ds, "fit", None))
                for q, sp in zip(pos, sprobs, strict=True):
                    j = shuffled.sources[q] - offset
                    self.out.shuffled[row_ids[j]] = intersection_union(
                        sp > self.params.threshold, gts[j])
            offset += k

    def _count(self, it, probs: np.ndarray, gts: list[np.ndarray], size: tuple[int, int]
               ) -> list[int]:
        """One row per expression of ``it``; returns their row indices."""
        row_ids = []
        for j, s in enumerate(it["sample_ids"]):
            if gts[j].shape != size:
                raise InputError(f"sample {s}: ground-truth mask {gts[j].shape} does not match "
                                 f"its image {size}")
            i_, u_ = intersection_union(probs[j] > self.params.threshold, gts[j])
            row_ids.append(len(self.out.rows))
            self.out.rows.append({"sample_id": s, "image_id": int(it["image_id"]),
                                  "language": self.lang, "intersection": i_, "union": u_})
        return row_ids

    def _drain(self, keep: int) -> None:
        """Collect CRF results, oldest first, until at most ``keep`` images are in flight."""
        while len(self._pending) > keep:
            ticket, (row_ids, gts) = self._pending.popitem(last=False)
            with self.timings.measure("crf_wait_s"):
                masks, secs = self.pool.result(ticket)
            with self.timings.measure("postprocess_s"):
                for r, m, g, s in zip(row_ids, masks, gts, secs, strict=True):
                    i_, u_ = intersection_union(m, g)
                    self.out.rows[r].update(intersection_crf=i_, union_crf=u_, crf_seconds=s)
                    self.out.crf_seconds.append(s)
