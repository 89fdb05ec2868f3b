"""A step's output folder (local or s3://) and its completion marker, ``_COMPLETE.json``.

The marker is the last file a step writes into its output folder. It names the step, the time,
every file the run wrote (relative name, size, sha256) and a fingerprint over that list::

    {"step": "tokenize", "version": 1, "written_at": "2026-12-01T08:00:00Z",
     "files": {"manifest.parquet": {"size": 1234, "sha256": "..."}, ...},
     "fingerprint": "<sha256 over the sorted name, size, sha256 lines>"}

The step that reads the folder checks it first (:func:`check_complete`): no marker (the writer
did not finish), a listed file missing, of another size or content, or a file of the step's
layout that the marker does not list is one line naming the folder and the file. A folder
written before markers existed is refused too, unless ``REFSEG_ALLOW_UNMARKED=1`` (then: a
warning). :func:`seal` marks a folder built another way (by hand, by a test) as complete.

Writing (:func:`step_output`): a local folder is written in place: the earlier marker goes
first, with the files it listed and the files of the step's layout (``owns``), so a failed run
leaves no marker and no stale file; an s3:// output is staged in a temporary folder, uploaded
when the step's block ends (the earlier marker deleted first, stale objects after), then the
marker; the temporary folder is removed whether the step succeeds or fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from components.data import storage
from components.errors import MissingInputError

MARKER = "_COMPLETE.json"
MARKER_VERSION = 1
ALLOW_UNMARKED = "REFSEG_ALLOW_UNMARKED"

Owns = Callable[[str], bool]  # does a relative file name belong to the step's layout?

_WARNED: set[str] = set()


class IncompleteOutputError(MissingInputError):
    """A step's output folder that its marker does not vouch for; the message names the folder
    and the file."""


# ------------------------------------------------------------------------------------------------
# The marker
def fingerprint(files: dict[str, dict]) -> str:
    """sha256 over the sorted ``name size sha256`` lines of ``files``."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['size']}\0{files[name]['sha256']}\n".encode())
    return h.hexdigest()


def marker_document(step: str, files: dict[str, dict]) -> dict:
    return {"step": step, "version": MARKER_VERSION,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {k: files[k] for k in sorted(files)}, "fingerprint": fingerprint(files)}


def write_marker(uri: str, step: str, files: dict[str, dict]) -> dict:
    """Write ``uri``/_COMPLETE.json for ``files`` (relative name -> size, sha256)."""
    doc = marker_document(step, files)
    storage.write_bytes(storage.join(uri, MARKER),
                        json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8"))
    return doc


def read_marker(uri: str, step: str = "") -> dict | None:
    """The marker of the folder ``uri``, None when it has none; an unreadable one is an
    :class:`IncompleteOutputError`."""
    try:
        raw = storage.read_bytes(storage.join(uri, MARKER))
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
        files = doc["files"]
        if not isinstance(files, dict) or not all(
                isinstance(e, dict) and {"size", "sha256"} <= set(e) for e in files.values()):
            raise ValueError("files")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise IncompleteOutputError(f"{_label(step, uri)}: {MARKER} is not a valid marker "
                                    "(run the step again)") from None
    return doc


def describe(uri: str) -> dict:
    """Size and sha256 of one file or object (an object's sha256 from its metadata when it has
    one, else from its bytes)."""
    if storage.is_s3(uri):
        info = storage.head(uri)
        if info["sha256"]:
            return {"size": info["size"], "sha256": info["sha256"]}
        data = storage.read_bytes(uri)
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return _describe_local(Path(uri))


def _describe_local(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def seal(uri: str, step: str) -> dict:
    """Mark every file now in the folder ``uri`` as the complete output of ``step`` (for a
    folder built another way: by hand, by a test, or an old folder checked by a person)."""
    files = {rel: describe(storage.join(uri, *rel.split("/"))) for rel in _listing(uri)
             if rel != MARKER}
    return write_marker(uri, step, files)


# ------------------------------------------------------------------------------------------------
# Reading: the step that reads a folder checks it
def check_complete(uri: str, step: str, owns: Owns | None = None) -> dict | None:
    """Check that the folder ``uri`` is the whole output of ``step``: its marker exists, every
    file it lists is there with the same size and sha256, and no file of the step's layout
    (``owns``) is there that it does not list. Returns the marker (None for an unmarked folder
    allowed by ``REFSEG_ALLOW_UNMARKED=1``); raises :class:`IncompleteOutputError`."""
    uri = str(uri)
    label = _label(step, uri)
    marker = read_marker(uri, step)
    if marker is None:
        return _unmarked(uri, label)
    if marker.get("step") != step:
        raise IncompleteOutputError(f"{label}: {MARKER} was written by the step "
                                    f"{marker.get('step')!r}, not {step}")
    files, present = marker["files"], _listing(uri)
    for rel, entry in files.items():
        if rel not in present:
            raise IncompleteOutputError(f"{label} is incomplete: {rel} (listed in {MARKER}) "
                                        "is missing")
        if present[rel] != entry["size"]:
            raise IncompleteOutputError(f"{label}: {rel} has {present[rel]} bytes, {MARKER} "
                                        f"says {entry['size']} (changed after the step finished)")
    extra = sorted(rel for rel in present if rel not in files and owns is not None and owns(rel))
    if extra:
        raise IncompleteOutputError(f"{label}: {extra[0]} is not listed in {MARKER} (left by an "
                                    "earlier run or added after the step finished)")
    for rel, entry in files.items():
        _check_content(uri, rel, entry, label)
    return marker


def check_file(uri: str) -> None:
    """A file read as a step's input (a manifest): when its folder has a marker that lists it,
    the file must match it (a file beside no marker, or not listed, is read as it is)."""
    uri = str(uri)
    folder, rel = (posixpath.split(uri) if storage.is_s3(uri) else os.path.split(uri))
    marker = read_marker(folder or ".")
    if marker is None or rel not in marker["files"]:
        return
    label = _label(str(marker.get("step", "")), folder)
    entry = marker["files"][rel]
    try:
        got = describe(uri)
    except FileNotFoundError:
        raise IncompleteOutputError(f"{label} is incomplete: {rel} (listed in {MARKER}) is "
                                    "missing") from None
    if got != {"size": entry["size"], "sha256": entry["sha256"]}:
        raise IncompleteOutputError(f"{label}: {rel} does not match {MARKER} (size {got['size']}"
                                    f", sha256 {got['sha256'][:12]}; {MARKER} says "
                                    f"{entry['size']}, {entry['sha256'][:12]}): changed after "
                                    "the step finished")


def _check_content(uri: str, rel: str, entry: dict, label: str) -> None:
    got = describe(storage.join(uri, *rel.split("/")))
    if got["sha256"] != entry["sha256"]:
        raise IncompleteOutputError(f"{label}: {rel} does not match {MARKER} (sha256 "
                                    f"{got['sha256'][:12]}, {MARKER} says "
                                    f"{entry['sha256'][:12]}): changed after the step finished")


def _unmarked(uri: str, label: str) -> None:
    if os.environ.get(ALLOW_UNMARKED, "") not in ("", "0"):
        if uri not in _WARNED:
            _WARNED.add(uri)
            from components.logs import get_logger

            get_logger("outputs").warning(f"{label} has no {MARKER}; read anyway "
                                          f"({ALLOW_UNMARKED} is set)")
        return None
    raise IncompleteOutputError(f"{label} is incomplete: no {MARKER} (the step that wrote it did "
                                f"not finish; run it again, or set {ALLOW_UNMARKED}=1 to read a "
                                "folder written before markers existed)")


def _label(step: str, uri: str) -> str:
    return f"{step} output {uri}" if step else f"output {uri}"


def _listing(uri: str) -> dict[str, int]:
    """Every file under the folder ``uri``: relative name (with ``/``) -> size."""
    return storage.list_sizes(uri)


# ------------------------------------------------------------------------------------------------
# Writing
class StepOutput:
    """One run of a step writing the folder ``uri``: write into :attr:`local`; the marker is
    written by :meth:`finish` (see the module docstring for the order of things)."""

    def __init__(self, uri: str, step: str, prefix: str = "refseg-", owns: Owns | None = None):
        self.uri, self.step, self.owns = str(uri), step, owns
        self.s3 = storage.is_s3(self.uri)
        self.files: dict[str, dict] = {}   # what this run wrote: relative name -> size, sha256
        self._previous: set[str] = set()   # files the earlier run's marker listed
        self._before: dict[str, tuple] = {}
        self._published = False
        self.local = tempfile.mkdtemp(prefix=prefix) if self.s3 else self.uri
        if not self.s3:
            self._begin_local()

    # ---- local: in place ------------------------------------------------------------------
    def _begin_local(self) -> None:
        """Drop the earlier marker, then the earlier run's files and the step's own files; note
        what is left (files that are not the step's), to tell them from what this run writes."""
        os.makedirs(self.local, exist_ok=True)
        self._previous = self._previous_files()
        storage.delete(os.path.join(self.local, MARKER))
        for rel in self._stale(_listing(self.local), keep=set()):
            _remove_local(Path(self.local), rel)
        self._before = {rel: _signature(Path(self.local, *rel.split("/")))
                        for rel in _listing(self.local)}

    def _written_locally(self) -> dict[str, dict]:
        out = {}
        for rel in _listing(self.local):
            path = Path(self.local, *rel.split("/"))
            if rel != MARKER and self._before.get(rel) != _signature(path):
                out[rel] = _describe_local(path)
        return out

    # ---- s3: staged, uploaded --------------------------------------------------------------
    def publish(self) -> None:
        """Upload the staged files (s3:// only; once): the earlier marker is deleted first."""
        if not self.s3 or self._published:
            return
        self._previous = self._previous_files()
        storage.delete(storage.join(self.uri, MARKER))
        staged = {rel: _describe_local(Path(self.local, *rel.split("/")))
                  for rel in _listing(self.local)}
        storage.copy_tree(self.local, self.uri)
        self.files.update(staged)
        self._published = True

    def add(self, rel: str) -> None:
        """Note a file this run wrote straight into ``uri`` (after :meth:`publish`)."""
        self.files[rel] = describe(storage.join(self.uri, *rel.split("/")))

    # ---- both ------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Remove stale files, then write the marker: the last file of the folder."""
        if self.s3:
            self.publish()
            for rel in self._stale(_listing(self.uri), keep=set(self.files)):
                storage.delete(storage.join(self.uri, *rel.split("/")))
        else:
            self.files.update(self._written_locally())
        return write_marker(self.uri, self.step, self.files)

    def cleanup(self) -> None:
        """Remove the staging folder (s3:// only)."""
        if self.s3:
            shutil.rmtree(self.local, ignore_errors=True)

    def _previous_files(self) -> set[str]:
        try:
            marker = read_marker(self.uri, self.step)
        except IncompleteOutputError:
            return set()
        if marker is None or marker.get("step") != self.step:
            return set()
        return set(marker["files"])

    def _stale(self, present, keep: set[str]) -> list[str]:
        """Files of the earlier run or of the step's layout that this run did not write."""
        return sorted(rel for rel in present if rel not in keep and rel != MARKER and (
            rel in self._previous or (self.owns is not None and self.owns(rel))))


def _remove_local(root: Path, rel: str) -> None:
    """Remove ``root/rel``, then the folders it leaves empty (not ``root``)."""
    path = root.joinpath(*rel.split("/"))
    path.unlink()
    for parent in path.parents:
        if parent == root or not parent.is_relative_to(root):
            break
        try:
            parent.rmdir()
        except OSError:  # not empty
            break


def _signature(path: Path) -> tuple:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@contextmanager
def step_output(uri: str, step: str, prefix: str = "refseg-", owns: Owns | None = None
                ) -> Iterator[StepOutput]:
    """The output folder of one run of ``step``: write into ``out.local``; when the block ends
    without an exception the files are published and the marker written last; the staging
    folder of an s3:// output is removed either way."""
    out = StepOutput(uri, step, prefix, owns)
    try:
        yield out
        out.finish()
    finally:
        out.cleanup()
