"""User errors of the product (see :mod:`model.errors`): re-exported here so that steps import
them from one place. A step raises one of these for anything the user can fix; the CLI prints it
as one line (exit 1). Any other exception is a bug: the CLI shows its traceback (exit 2)."""

from model.errors import CheckpointError, ConfigError, InputError, MissingInputError, RefsegError

__all__ = ["CheckpointError", "ConfigError", "InputError", "MissingInputError", "RefsegError"]
