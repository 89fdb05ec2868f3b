"""The train step's output folder (``OUT``) and the training run's MLflow artifacts, owned here:
no other module spells a file name of either.

    OUT/checkpoints/best.pt   best validation overall IoU (or the last weights without validation)
    OUT/checkpoints/last.pt   the weights after the last step
    OUT/resume.pt             the whole training state (components.training.state)
    OUT/tokenizer/            what inference needs (components.text.tokenizer)
    OUT/summary.json          what the run did (steps, best, timings, configs)
    OUT/run_id.txt            the MLflow run, for evaluate and for a resumed run
    OUT/cache/                decoded images of an s3:// dataset

The run's artifacts: ``checkpoints/best.pt``, ``tokenizer/``, ``train/summary.json``.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
BEST, LAST = "best.pt", "last.pt"
TOKENIZER = "tokenizer"
SUMMARY = "summary.json"
RUN_ID = "run_id.txt"
RESUME = "resume.pt"

# artifact paths in the training run (MLflow)
ARTIFACT_CHECKPOINT = f"{CHECKPOINTS}/{BEST}"
ARTIFACT_TOKENIZER = TOKENIZER
ARTIFACT_SUMMARY_DIR = "train"


class TrainOutput:
    """Paths of a local train ``OUT`` folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def checkpoint(self, name: str = BEST) -> Path:
        return self.root / CHECKPOINTS / name

    @property
    def best(self) -> Path:
        return self.checkpoint(BEST)

    @property
    def last(self) -> Path:
        return self.checkpoint(LAST)

    @property
    def resume(self) -> Path:
        return self.root / RESUME

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def run_id_file(self) -> Path:
        return self.root / RUN_ID

    @property
    def cache(self) -> Path:
        return self.root / "cache"


def run_id_file_beside(checkpoint: str) -> str:
    """Where the run id of a checkpoint's train folder is: ``<checkpoint dir>/../run_id.txt``
    (local path or s3:// URI, like the checkpoint)."""
    import os
    import posixpath

    if str(checkpoint).startswith("s3://"):
        return posixpath.join(posixpath.dirname(posixpath.dirname(str(checkpoint))), RUN_ID)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))), RUN_ID)
