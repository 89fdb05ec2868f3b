"""The resume file (``OUT/resume.pt``): the whole training state, written atomically.

It holds the weights, the optimiser and scheduler states, every RNG state (Python, NumPy, torch,
CUDA), the position inside the epoch, the MLflow run id, the best validation so far and the
validation history, as plain tensors and values: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import CheckpointError

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
