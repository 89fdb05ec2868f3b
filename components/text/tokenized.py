"""The tokenize step's output folder, owned by one type. No other module spells a file name in it.

Layout (local or s3://)::

    manifest.parquet            kept rows (the bilingual manifest)
    quarantine.parquet          refused rows with their reasons
    tokenizer.json              tokenizer config (components.text.tokenizer)
    vocab_<lang>.json           vocabulary per language (index = token id; 0 <pad>, 1 <unk>)
    embeddings_<lang>.npy       word vectors per language, one row per vocabulary entry
    userdict_zh.txt             the jieba user dictionary in effect
    shards/<lang>/<split>.npz   encoded expressions: sample_id, tokens, lengths
    summary.json                counts in / kept / quarantined, timings
    _COMPLETE.json              the completion marker, written last (components.data.outputs)

A reader opens the folder with :meth:`TokenizedData.checked`: the marker must vouch for every
file, and a file of this layout that it does not list (left by an earlier run) is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from components.data import storage
from components.data.names import check_split_name
from components.errors import InputError, MissingInputError
from components.text.tokenizer import (
    CONFIG_FILE,
    LANGS,
    USERDICT_FILE,
    Tokenizer,
    load_tokenizer,
    vocab_file,
    write_userdict,
)

MANIFEST_FILE = "manifest.parquet"
QUARANTINE_FILE = "quarantine.parquet"
SUMMARY_FILE = "summary.json"
STEP = "tokenize"  # the step name in the folder's completion marker
SHARDS_DIR = "shards"
SHARD_ARRAYS = ("sample_id", "tokens", "lengths")
QUARANTINE_COLUMNS = ("sample_id", "lang", "reason", "split", "text")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: same arrays, same bytes


def embeddings_file(lang: str) -> str:
    return f"embeddings_{lang}.npy"


def file_names() -> list[str]:
    """The folder's files as patterns (``{lang}``, ``{split}``), for help texts."""
    return [MANIFEST_FILE, vocab_file("{lang}"), embeddings_file("{lang}"),
            f"{SHARDS_DIR}/{{lang}}/{{split}}.npz", CONFIG_FILE, QUARANTINE_FILE, SUMMARY_FILE]


def owned(rel: str) -> bool:
    """Is the relative name ``rel`` a file of this layout (one a rerun of tokenize replaces)?"""
    return (rel in (MANIFEST_FILE, QUARANTINE_FILE, SUMMARY_FILE, CONFIG_FILE, USERDICT_FILE)
            or re.fullmatch(r"(vocab_[^/]+\.json|embeddings_[^/]+\.npy)", rel) is not None
            or rel.startswith(SHARDS_DIR + "/"))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (np.load-compatible, no pickle) with fixed timestamps: byte-identical reruns."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            one = io.BytesIO()
            np.lib.format.write_array(one, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, one.getvalue())
    return buf.getvalue()


def _check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise InputError(f"lang must be one of {LANGS}, got {lang!r}")
    return lang


def _check_split(split: str) -> str:
    return check_split_name(split, error=InputError)


class TokenizedData:
    """A tokenize output folder: paths of its files, readers, and its fingerprint per language."""

    def __init__(self, root: str):
        self.root = str(root)

    def __repr__(self) -> str:
        return f"TokenizedData({self.root!r})"

    @classmethod
    def checked(cls, root: str) -> TokenizedData:
        """The folder ``root``, once its completion marker vouches for it (what a step that
        reads a tokenize output calls first; :func:`components.data.outputs.check_complete`)."""
        from components.data.outputs import check_complete

        check_complete(str(root), STEP, owns=owned)
        return cls(root)

    # ---- where things are ------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def manifest_uri(self) -> str:
        return self.uri(MANIFEST_FILE)

    @property
    def quarantine_uri(self) -> str:
        return self.uri(QUARANTINE_FILE)

    @property
    def summary_uri(self) -> str:
        return self.uri(SUMMARY_FILE)

    @property
    def tokenizer_config_uri(self) -> str:
        return self.uri(CONFIG_FILE)

    @property
    def userdict_uri(self) -> str:
        return self.uri(USERDICT_FILE)

    def vocab_uri(self, lang: str) -> str:
        return self.uri(vocab_file(_check_lang(lang)))

    def embeddings_uri(self, lang: str) -> str:
        return self.uri(embeddings_file(_check_lang(lang)))

    def shard_uri(self, lang: str, split: str) -> str:
        name = f"{_check_split(split)}.npz"
        return storage.safe_join(self.uri(SHARDS_DIR, _check_lang(lang)), name,
                                 record=f"split {split!r}")

    # ---- readers -----------------------------------------------------------------------------
    def read_manifest(self):
        from components.data import manifest as mf

        return mf.read_manifest(self.manifest_uri)

    def read_summary(self) -> dict:
        return json.loads(self._read(self.summary_uri, "the tokenize summary").decode("utf-8"))

    def read_vocab(self, lang: str) -> list[str]:
        raw = self._read(self.vocab_uri(lang), f"no vocabulary for language {lang!r} (was "
                         "tokenize run with this language?)")
        return json.loads(raw.decode("utf-8"))

    def read_embeddings(self, lang: str) -> np.ndarray | None:
        """The word vectors of ``lang``, or None when the folder has none."""
        uri = self.embeddings_uri(lang)
        if not storage.exists(uri):
            return None
        return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)

    def splits(self, lang: str) -> list[str]:
        """The splits with a shard for ``lang``, sorted."""
        files = storage.list_files(self.uri(SHARDS_DIR, _check_lang(lang)))
        return sorted(os.path.basename(f)[:-4] for f in files if f.endswith(".npz"))

    def has_shard(self, lang: str, split: str) -> bool:
        return storage.exists(self.shard_uri(lang, split))

    def read_shard(self, lang: str, split: str) -> dict[str, np.ndarray]:
        """``shards/<lang>/<split>.npz`` as arrays (sample_id, tokens, lengths), unchecked."""
        uri = self.shard_uri(lang, split)
        raw = self._read(uri, "no such shard (was tokenize run for this language and split?)")
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            missing = [k for k in SHARD_ARRAYS if k not in z.files]
            if missing:
                raise InputError(f"{uri}: shard lacks array(s) {missing}")
            return {k: np.asarray(z[k]) for k in SHARD_ARRAYS}

    def tokenizer(self, lang: str | None = None) -> Tokenizer:
        return load_tokenizer(self.root, lang)

    # ---- writers (the tokenize step) -----------------------------------------------------------
    def write_manifest(self, df) -> str:
        from components.data import manifest as mf

        return mf.write_manifest(df, self.manifest_uri)

    def write_quarantine(self, rows: list[dict]) -> str:
        """Refused rows: sample_id, lang, reason, split, text (all strings)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string())
                                                             for c in QUARANTINE_COLUMNS]))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return storage.write_bytes(self.quarantine_uri, buf.getvalue())

    def write_summary(self, summary: dict) -> str:
        from components.data import manifest as mf

        return mf.write_json(self.summary_uri, summary)

    def write_embeddings(self, lang: str, emb: np.ndarray) -> str:
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        return storage.write_bytes(self.embeddings_uri(lang), buf.getvalue())

    def write_shard(self, lang: str, split: str, sample_id: np.ndarray, tokens: np.ndarray,
                    lengths: np.ndarray) -> str:
        """``shards/<lang>/<split>.npz``: np.load-compatible, no pickle, fixed timestamps (the
        same arrays give the same bytes)."""
        arrays = dict(zip(SHARD_ARRAYS, (sample_id, tokens, lengths), strict=True))
        return storage.write_bytes(self.shard_uri(lang, split), _npz_bytes(arrays))

    def save_tokenizer(self, tokenizer: Tokenizer) -> Path:
        """``tokenizer.json``, the vocabularies and the user dictionary (a local folder only)."""
        if storage.is_s3(self.root):
            raise ValueError(f"{self.root}: save the tokenizer into a local (staging) folder")
        return tokenizer.save(self.root)

    def write_userdict(self, sources: list[str]) -> str:
        """The jieba user dictionary in effect, from ``sources`` (a local folder only)."""
        if storage.is_s3(self.root):
            raise ValueError(f"{self.root}: write the user dictionary into a local (staging) folder")
        return str(write_userdict(self.root, sources))

    # ---- what belongs together -------------------------------------------------------------
    def fingerprint(self, lang: str) -> str:
        """sha256 over the manifest, the vocabulary of ``lang`` and every shard of ``lang``
        (sorted): two folders with the same fingerprint encode the same data the same way."""
        splits = self.splits(lang)
        if not splits:
            raise MissingInputError(f"{self.uri(SHARDS_DIR, lang)}: no shards for language "
                                    f"{lang!r} (was tokenize run with this language?)")
        names = [MANIFEST_FILE, vocab_file(lang)] + [f"{SHARDS_DIR}/{lang}/{s}.npz" for s in splits]
        h = hashlib.sha256()
        for name in names:
            data = storage.read_bytes(self.uri(*name.split("/")))
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()

    def export_tokenizer(self, lang: str, dst: str) -> Path:
        """Write what inference needs for ``lang`` (its vocabulary, the tokenizer config narrowed
        to it, the jieba user dictionary) into the local folder ``dst``."""
        if not storage.exists(self.tokenizer_config_uri):
            raise MissingInputError(f"{self.tokenizer_config_uri}: no such file (the tokenize step "
                                    "writes it; inference needs it)")
        if lang == "zh" and not storage.exists(self.userdict_uri):
            raise MissingInputError(f"{self.userdict_uri}: no such file (the tokenize step writes "
                                    "the jieba user dictionary in effect; Chinese inference "
                                    "needs it)")
        return self.tokenizer(lang).save(dst)

    # ---- helpers -----------------------------------------------------------------------------
    def _read(self, uri: str, what: str) -> bytes:
        try:
            return storage.read_bytes(uri)
        except FileNotFoundError:
            raise MissingInputError(f"{uri}: {what}") from None
