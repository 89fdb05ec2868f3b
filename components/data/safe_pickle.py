"""Load pickles from the internet (the refer toolkit's ``refs(<split_by>).p``) without running code.

A pickle is a small program: its ``GLOBAL``/``STACK_GLOBAL`` opcodes import any callable by name and
``REDUCE`` calls it, so ``pickle.load`` on an untrusted file can run ``os.system``. The refs files hold
only plain data (lists of dicts of str/int/float), which the pickle machine builds with opcodes that
import nothing. What Python's own pickler emits for plain containers and scalars, measured across
protocols 0..5 (CPython 3.11):

- dict, list, tuple, str, int (any size), float, bool, None: no global at any protocol;
  set / frozenset: ``builtins.set`` / ``builtins.frozenset`` (``__builtin__.*`` at protocols 0-2,
  mapped to ``builtins`` by ``fix_imports``) plus REDUCE at protocols 0-3, dedicated opcodes at 4+;
- bytes: ``_codecs.encode(text, 'latin1')`` at protocols 0-2 (Python 3 writing a py2-compatible
  pickle), dedicated opcodes at 3+;
- ``copyreg._reconstructor`` (old-style object reconstruction) is never needed for these types.

So :class:`RestrictedUnpickler` resolves exactly ``set``, ``frozenset`` and a stand-in for
``_codecs.encode`` that accepts only a str and the latin-1 codec; every other global, persistent id
or extension code is refused with :class:`UnsafePickleError` naming the file and the global, before
anything is called. Python 2 pickles (the refer toolkit's) are protocol 2 and store text as py2
``str``: load them with ``encoding="bytes"`` (the default here) and decode each text field strictly
as UTF-8 yourself, so that an invalid byte can be reported against its record instead of failing the
whole file or being silently mis-decoded as latin-1.
"""

from __future__ import annotations

import io
import pickle

from components.errors import RefsegError


class UnsafePickleError(RefsegError, pickle.UnpicklingError):
    """The pickle asks for something other than plain data; nothing of it was run."""


class UnreadablePickleError(RefsegError, pickle.UnpicklingError):
    """The file is not a complete pickle (damaged, truncated or another format)."""


def _latin1_encode_for(source: str):
    def encode(obj, encoding="latin1", errors="strict"):
        # What Python 3 emits for bytes at protocols 0-2: _codecs.encode(str, 'latin1').
        if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in (
            "latin1",
            "latin-1",
        ):
            raise UnsafePickleError(
                f"{source}: refused _codecs.encode with codec {encoding!r} "
                "(only the latin-1 form that encodes bytes is allowed)"
            )
        return obj.encode("latin1")

    return encode


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that builds plain containers and scalars only (see the module docstring)."""

    def __init__(self, file, *, source: str = "pickle", encoding: str = "bytes"):
        super().__init__(file, fix_imports=True, encoding=encoding, errors="strict")
        self.source = source
        self._allowed = {
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("__builtin__", "set"): set,
            ("__builtin__", "frozenset"): frozenset,
            ("_codecs", "encode"): _latin1_encode_for(source),
        }

    def find_class(self, module: str, name: str):
        found = self._allowed.get((module, name))
        if found is None:
            raise UnsafePickleError(f"{self.source}: refused global '{module}.{name}'")
        return found

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r:.60}")


def safe_loads(data: bytes, source: str = "pickle", encoding: str = "bytes"):
    """Unpickle ``data`` allowing plain data only. ``source`` names the file in error messages.

    Raises :class:`UnsafePickleError` for any global outside the allow-list, and
    :class:`UnreadablePickleError` (a ``pickle.UnpicklingError``, with ``source`` in the message)
    for a damaged file.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UnreadablePickleError(f"{source}: not a readable pickle ({exc})") from None


def safe_load(uri: str, encoding: str = "bytes"):
    """Read a pickle from a local path or s3:// uri with :func:`safe_loads`."""
    from components.data import storage

    return safe_loads(storage.read_bytes(uri), source=str(uri), encoding=encoding)
