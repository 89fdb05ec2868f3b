"""The error a user can fix. Everything the product raises for a user's mistake (a bad flag, a
missing or malformed input, a config that cannot work) derives from :class:`RefsegError`; the CLI
prints those as one line and exits 1. Any other exception is a bug and shows its traceback."""

from __future__ import annotations


class RefsegError(Exception):
    """A user's mistake: bad input, bad config, a missing file. One line, exit 1."""


class ConfigError(RefsegError, ValueError):
    """A configuration value (preset, YAML key, ``--set``) that is unknown or out of range."""


class InputError(RefsegError, ValueError):
    """Input data that cannot be used as given (a record, an image, a text, a table)."""


class MissingInputError(RefsegError, FileNotFoundError):
    """A file or folder the user named (or a step needs from an earlier one) does not exist."""


class CheckpointError(RefsegError, ValueError):
    """A checkpoint file that cannot be read or does not describe a model."""
