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

A resume location (``--resume-uri``, the pipeline's ``resume_root``: a local folder or an s3://
prefix that outlives the machine, components.training.state.ResumeLocation):

    <uri>/resume-a.pt, resume-b.pt   the whole training state, the two slots written in turn
    <uri>/best-a.pt, best-b.pt       the best checkpoint so far, the same way
    <uri>/latest.json                names the slots of the newest complete state; written last

In the pipeline the location is ``<resume_root>/train-resume/<pipeline run id>/<lang>-<config>-
s<seed>`` (:func:`pipeline_resume_uri`): a retry of the same task finds it, another run does not.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from components.errors import ConfigError

CHECKPOINTS = "checkpoints"
BEST, LAST = "best.pt", "last.pt"
TOKENIZER = "tokenizer"
SUMMARY = "summary.json"
RUN_ID = "run_id.txt"
RESUME = "resume.pt"

# a resume location's objects
RESUME_POINTER = "latest.json"
RESUME_SLOTS = ("resume-a.pt", "resume-b.pt")
BEST_SLOTS = ("best-a.pt", "best-b.pt")
PIPELINE_RESUME_DIR = "train-resume"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

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


def pipeline_resume_uri(root: str, pipeline_run: str, lang: str, config: str, seed: int) -> str:
    """The resume location of one train task of a pipeline run: ``<root>/train-resume/<pipeline
    run>/<lang>-<config>-<8 hex of the config>-s<seed>`` (local or s3://, like ``root``). Every
    retry of the task computes the same location; another run, language, config or seed another
    one. A run id that is not a plain name (an unresolved ``{{$.pipeline_job_uuid}}``, a ``/``)
    is refused: every run would share its location."""
    from components.data import storage

    if not _RUN_ID.fullmatch(str(pipeline_run)):
        raise ConfigError(f"pipeline run id {pipeline_run!r} is not a plain name (letters, "
                          "digits, _ - .): the train step cannot key its resume state by it")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(config)).strip("_.-")[-48:] or "config"
    digest = hashlib.sha256(str(config).encode()).hexdigest()[:8]
    key = f"{PIPELINE_RESUME_DIR}/{pipeline_run}/{lang}-{name}-{digest}-s{int(seed)}"
    return storage.safe_join(str(root), key, record="the train step's resume location")
