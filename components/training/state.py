"""The resume file (``OUT/resume.pt``): the whole training state, written atomically.

It holds the weights, the optimiser and scheduler states, every RNG state (Python, NumPy, torch,
CUDA), the position inside the epoch, the MLflow run id, the best validation so far and the
validation history, as plain tensors and values: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import CheckpointError, ConfigError, InputError

RESUME_FORMAT = "bilingual-refseg/resume-v1"


def rng_state() -> dict[str, Any]:
    """Every RNG state of this process (NumPy's as tensors and numbers: weights_only-loadable)."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    v, internal, gauss = st["python"]
    random.setstate((v, tuple(internal), gauss))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_resume(state: dict[str, Any], path: str) -> None:
    """Write a resume file (``format`` added) with one atomic rename."""
    from model.checkpoint import atomic_save

    atomic_save({"format": RESUME_FORMAT, **state}, str(path))


def load_resume(path: str) -> dict[str, Any]:
    import torch

    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path}: cannot be loaded safely (weights_only): "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(st, dict) or st.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path} is not a {RESUME_FORMAT} file")
    return st


def saved_step(path: Path) -> str:
    """The step of the resume file at ``path`` for a message: a number, "none" or "unreadable"."""
    if not Path(path).exists():
        return "none"
    try:
        return str(int(load_resume(str(path))["step"]))
    except (ValueError, KeyError):
        return "unreadable"


# ---- a resume location that outlives the machine -----------------------------------------------
POINTER_FORMAT = "bilingual-refseg/resume-pointer-v1"


class ResumeLocation:
    """The training state kept where a restarted process on another machine finds it: a local
    folder (a shared volume) or an s3:// prefix (layout.py names the objects).

    :meth:`push` writes the resume file (and the best checkpoint when it changed) into the slot
    that the pointer does not name, then the pointer ``latest.json``: a process killed during an
    upload leaves the previous state whole and named. :meth:`fetch` reads the pointer, refuses a
    state of another language, data folder (vocabulary) or configuration, and downloads the
    state into the local OUT folder. The pointer also carries the step, so what it holds is known
    without downloading the state."""

    def __init__(self, uri: str):
        from components.data import storage

        uri = str(uri).rstrip("/")
        if "://" in uri and not storage.is_s3(uri):
            raise ConfigError(f"resume location {uri}: give a local folder or an s3:// prefix")
        if storage.is_s3(uri):
            storage.split_s3(uri)  # a bucket name
        self.uri = uri
        self._pointer: dict[str, Any] | None = None

    def _at(self, name: str) -> str:
        from components.data import storage

        return storage.join(self.uri, name)

    def pointer(self) -> dict[str, Any] | None:
        """The pointer of the newest complete state, or None when nothing was saved here."""
        from components.data import storage
        from components.training.layout import RESUME_POINTER

        try:
            raw = storage.read_bytes(self._at(RESUME_POINTER))
        except FileNotFoundError:
            return None
        try:
            ptr = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{self._at(RESUME_POINTER)}: not a resume pointer "
                                  f"({exc})") from None
        if not isinstance(ptr, dict) or ptr.get("format") != POINTER_FORMAT:
            raise CheckpointError(f"{self._at(RESUME_POINTER)} is not a {POINTER_FORMAT} file")
        self._pointer = ptr
        return ptr

    def check(self, ptr: dict[str, Any], lang: str, data_fingerprint: str,
              vocab_fingerprint: str) -> None:
        """Refuse (one line) a saved state of another language, vocabulary or data folder (the
        trainer compares the configuration, ``ptr["config"]``, field by field)."""
        where = self.uri
        if ptr.get("lang") != lang:
            raise InputError(f"resume location {where} holds a {ptr.get('lang')!r} run, not "
                             f"{lang!r}; give this run its own location")
        if ptr.get("vocab_fingerprint") not in (None, vocab_fingerprint):
            raise InputError(f"resume location {where} was trained with another vocabulary "
                             f"({str(ptr['vocab_fingerprint'])[:12]}, this data's "
                             f"{vocab_fingerprint[:12]}); give this run its own location")
        if ptr.get("data_fingerprint") != data_fingerprint:
            raise InputError(f"resume location {where} belongs to another data folder "
                             f"(fingerprint {str(ptr.get('data_fingerprint'))[:12]}, this data's "
                             f"{data_fingerprint[:12]}); give this run its own location")

    def fetch(self, ptr: dict[str, Any], resume_path: Path, best_path: Path) -> None:
        """Download the state ``ptr`` names into ``resume_path`` (and its best checkpoint into
        ``best_path``), each replaced in one rename."""
        _download(self._at(ptr["resume"]), Path(resume_path))
        if ptr.get("best"):
            _download(self._at(ptr["best"]), Path(best_path))

    def push(self, resume_path: Path, best_path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Upload the local resume file (and ``best_path`` when ``meta["best_step"]`` is new),
        then the pointer; returns the pointer. ``meta``: step, best_step, lang, the data and
        vocabulary fingerprints, config (the resolved configuration)."""
        from components.data import storage
        from components.training.layout import BEST_SLOTS, RESUME_POINTER, RESUME_SLOTS

        old = self._pointer if self._pointer is not None else (self.pointer() or {})
        resume = _other(RESUME_SLOTS, old.get("resume"))
        storage.write_bytes(self._at(resume), Path(resume_path).read_bytes())
        best, best_step = old.get("best"), old.get("best_step")
        if Path(best_path).exists() and meta.get("best_step") != best_step:
            best, best_step = _other(BEST_SLOTS, old.get("best")), meta.get("best_step")
            storage.write_bytes(self._at(best), Path(best_path).read_bytes())
        ptr = {**meta, "format": POINTER_FORMAT, "resume": resume, "best": best,
               "best_step": best_step}
        storage.write_bytes(self._at(RESUME_POINTER), json.dumps(ptr, indent=1).encode())
        self._pointer = ptr
        return ptr

    def clear(self) -> None:
        """Remove the pointer (first: a half-cleared location is not resumable), then the slots."""
        from components.data import storage
        from components.training.layout import BEST_SLOTS, RESUME_POINTER, RESUME_SLOTS

        for name in (RESUME_POINTER, *RESUME_SLOTS, *BEST_SLOTS):
            _remove(self._at(name))
        self._pointer = None
        if not storage.is_s3(self.uri):
            with contextlib.suppress(OSError):  # the folder, when nothing else is in it
                Path(self.uri).rmdir()


def _other(slots: tuple[str, str], current: str | None) -> str:
    """The slot that ``current`` is not (the first when there is none)."""
    return slots[1] if current == slots[0] else slots[0]


def _download(uri: str, path: Path) -> None:
    """``uri`` into the local ``path`` through a unique temporary file and one rename."""
    import os
    import tempfile

    from components.data import storage

    data = storage.read_bytes(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _remove(uri: str) -> None:
    """Delete one file or object; a missing one is fine."""
    from components.data import storage

    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        storage.s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)

