"""Where a run comes from and where it is filed: the git commit (for run and model-version tags)
and the MLflow experiment every step logs into."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

UNKNOWN = "unknown"
EXPERIMENT = "bilingual-refseg"  # the MLflow experiment of every run of the product


def git_commit() -> str:
    """``$GIT_COMMIT`` (set in the container image) or ``git rev-parse HEAD`` of this checkout;
    ``"unknown"`` when neither answers."""
    env = os.environ.get("GIT_COMMIT", "").strip()
    if env:
        return env
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else UNKNOWN


def tracking_uri(explicit: str | None = None) -> str:
    """The MLflow tracking store: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the SQLite
    file ``mlflow.db`` in the current folder (the embedded default)."""
    return (explicit or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{os.path.join(os.getcwd(), 'mlflow.db')}")
