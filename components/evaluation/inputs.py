"""What the evaluate step reads, and the checks that the checkpoint and the data folder belong
together: the checkpoint (local or s3://), its language, the vocabulary it was trained on (size
and fingerprint), the split's shard and the manifest's expressions (through
:class:`TokenizedData`)."""

from __future__ import annotations

from components.data import storage
from components.errors import CheckpointError, InputError, MissingInputError
from components.text.tokenized import TokenizedData
from components.text.tokenizer import LANGS, check_vocab_fingerprint


def load_model(checkpoint: str, cache_dir: str):
    """(model, cfg, extra) of a checkpoint, downloaded into ``cache_dir`` when on S3."""
    from model import load_checkpoint

    checkpoint = str(checkpoint)
    if not storage.exists(checkpoint):
        raise MissingInputError(f"{checkpoint}: no such checkpoint (the train step writes "
                                "OUT/checkpoints/best.pt)")
    return load_checkpoint(storage.local_copy(checkpoint, cache_dir))


def to_device(model, device: str | None):
    """(the model in eval mode on ``device`` (default: cuda when present), that device)."""
    from model import prepare_model, select_device

    dev = select_device(device)
    return prepare_model(model, dev).eval(), dev


def language(requested: str | None, extra: dict, checkpoint: str) -> str:
    """The language asked for, else the checkpoint's."""
    lang = requested or extra.get("lang")
    if lang not in LANGS:
        raise CheckpointError(f"checkpoint {checkpoint} does not name its language "
                              f"(extra['lang'] = {extra.get('lang')!r}); pass --lang zh or en")
    return lang


def check_vocabulary(data: TokenizedData, lang: str, vocab_size: int, checkpoint: str,
                     extra: dict) -> None:
    """The data folder's vocabulary of ``lang`` is the checkpoint's: its size, then its content
    (the checkpoint's ``vocab_fingerprint``; a checkpoint without one: a warning)."""
    vocab = data.read_vocab(lang)
    if len(vocab) != int(vocab_size):
        raise InputError(f"checkpoint {checkpoint} has a vocabulary of {vocab_size} tokens but "
                         f"{data.vocab_uri(lang)} has {len(vocab)}: the data dir was not "
                         "tokenized with the vocabulary this model was trained on")
    check_vocab_fingerprint(extra, vocab, checkpoint, data.vocab_uri(lang))


def check_split(data: TokenizedData, lang: str, split: str) -> None:
    """The folder holds encoded expressions of ``split`` in ``lang``."""
    if not data.has_shard(lang, split):
        known = data.splits(lang)
        raise InputError(f"split {split!r}: {data.root} has no expressions of it in language "
                         f"{lang!r} (splits: {', '.join(known) if known else 'none'})")


def expressions(data: TokenizedData, lang: str) -> dict[str, dict]:
    """sample_id -> {ann_id, image_id, text, dataset} of the manifest, the text in ``lang``."""
    from components.data.manifest import TEXT_COLUMN

    df = data.read_manifest()
    col = TEXT_COLUMN[lang]
    names = df["dataset"] if "dataset" in df else [""] * len(df)
    return {
        sid: {"ann_id": int(a), "image_id": int(i), "text": t if isinstance(t, str) else "",
              "dataset": str(d) if isinstance(d, str) else ""}
        for sid, a, i, t, d in zip(df["sample_id"], df["ann_id"], df["image_id"], df[col], names,
                                   strict=True)
    }


def dataset_name(texts: dict[str, dict], sample_ids) -> str:
    """The manifest's ``dataset`` of the evaluated samples ("a+b" when they mix several)."""
    names = sorted({texts[s]["dataset"] for s in sample_ids if s in texts} - {""})
    return "+".join(names) if names else "unknown"
