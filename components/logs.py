"""Logging: one logger per step (``refseg.<step>``), one console format, one verbosity switch.

Steps log through :func:`get_logger`; the CLI (``-v/--verbose``, ``--quiet``) and each Kubeflow
task call :func:`configure` once. Lines look like ``[train zh] step 500/5000 ...``: the logger
name without the ``refseg.`` prefix, dots shown as spaces.
"""

from __future__ import annotations

import logging
import sys

ROOT = "refseg"
_HANDLER_FLAG = "_refseg_handler"


class _StepFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix(ROOT).lstrip(".").replace(".", " ") or ROOT
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = f"[{name}] {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be replaced, e.g.
    by a test's capture or the local runner's log file)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler sets it in __init__; the property ignores it
        pass


def get_logger(step: str, *parts: str) -> logging.Logger:
    """The logger of a step, e.g. ``get_logger("train", "zh")`` -> ``refseg.train.zh``."""
    return logging.getLogger(".".join([ROOT, step, *[p for p in parts if p]]))


def level_for(verbose: int = 0, quiet: bool = False) -> int:
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose > 0 else logging.INFO


def configure(level: int = logging.INFO, stream=None) -> None:
    """Send ``refseg.*`` records at ``level`` and above to ``stream`` (stderr by default), once:
    calling it again only changes the level."""
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    root.propagate = False
    for h in root.handlers:
        if getattr(h, _HANDLER_FLAG, False):
            h.setLevel(level)
            return
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(_StepFormatter())
    handler.setLevel(level)
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)


def progress_enabled(logger: logging.Logger) -> bool:
    """Progress bars only when the step's INFO lines are shown and stderr is a terminal."""
    return logger.isEnabledFor(logging.INFO) and sys.stderr.isatty()
