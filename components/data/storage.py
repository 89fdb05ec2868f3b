"""Storage for local paths and s3:// URIs (boto3), used by every step.

S3 goes through boto3 with the endpoint from ``AWS_ENDPOINT_URL`` (MinIO, moto), adaptive retries,
and a SHA-256 checksum: stored as object metadata on upload and verified on download, plus S3's own
flexible checksum where the server supports it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.errors import MissingInputError, RefsegError

SHA_META = "sha256"


class StorageError(RefsegError, RuntimeError):
    """A read or write failed; the message names the URI."""


class UnsafePathError(RefsegError, ValueError):
    """A file name tries to leave its root (``..``, absolute path, drive letter)."""


class BadURIError(RefsegError, ValueError):
    """An s3:// URI that names no bucket."""


class NoSuchFileError(MissingInputError):
    """A file or object that does not exist (a ``FileNotFoundError``); the message names the URI."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    if not is_s3(uri):
        raise BadURIError(f"not an s3:// uri: {uri!r}")
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if len(bucket) < 3:
        raise BadURIError(f"{uri!r}: bucket names have 3 or more characters")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join path parts for a local path or an s3:// uri."""
    base = str(base)
    if is_s3(base):
        return posixpath.join(base, *parts)
    return str(Path(base, *parts))


def safe_name(name: str, record: str = "") -> str:
    """Return ``name`` normalised, refusing what would leave a root: ``..``, an absolute path
    (``/x``, ``C:``, ``s3://``), a NUL byte, an empty name or one that names the root itself.
    Backslashes count as separators (``a\\..\\b`` is ``a/../b``). ``record`` names where the name
    came from (a sample, a file, an S3 object) in the message."""
    where = f" ({record})" if record else ""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"empty file name{where}")
    if "\x00" in name:
        raise UnsafePathError(f"file name {name!r} contains a NUL byte{where}")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or is_s3(norm):
        raise UnsafePathError(f"file name {name!r} is an absolute path{where}")
    if any(part == ".." for part in norm.split("/")):
        raise UnsafePathError(f"file name {name!r} contains '..' (path traversal){where}")
    norm = posixpath.normpath(norm)
    if norm == ".":
        raise UnsafePathError(f"file name {name!r} names no file{where}")
    return norm


def safe_join(root: str, name: str, record: str = "") -> str:
    """``root``/``name`` (local or s3://) for a ``name`` that comes from data (an S3 key, a file
    name in a dataset, a split): the one way to put such a name under a root. A name that would
    resolve outside ``root`` raises :class:`UnsafePathError` naming ``record``."""
    return join(root, safe_name(name, record))


_CLIENT = None
_CLIENT_KEY = None


def s3_client():
    """A boto3 S3 client; endpoint from AWS_ENDPOINT_URL, adaptive retries."""
    global _CLIENT, _CLIENT_KEY
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    key = (endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_DEFAULT_REGION"))
    if _CLIENT is None or key != _CLIENT_KEY:
        cfg = Config(
            retries={"mode": "adaptive", "max_attempts": 8},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_supported",
            response_checksum_validation="when_supported",
        )
        _CLIENT = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=cfg,
        )
        _CLIENT_KEY = key
    return _CLIENT


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes(uri: str, data: bytes) -> str:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        digest = hashlib.sha256(data).digest()
        try:
            s3_client().put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest).decode(),
                Metadata={SHA_META: digest.hex()},
            )
        except Exception as exc:  # botocore errors carry the reason
            raise StorageError(f"upload to {uri} failed: {exc}") from exc
        return uri
    _write_atomic(Path(uri), data)
    return uri


def read_bytes(uri: str) -> bytes:
    uri = str(uri)
    if is_s3(uri):
        return _get_object(uri)[0]
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise NoSuchFileError(f"{uri}: no such file") from None


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _get_object(uri: str) -> tuple[bytes, str]:
    """(the object's bytes, checked against its sha256 metadata; its ETag)."""
    bucket, key = split_s3(uri)
    try:
        obj = s3_client().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        data = obj["Body"].read()
    except Exception as exc:
        code = _error_code(exc)
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise NoSuchFileError(f"{uri}: no such object ({code})") from None
        raise StorageError(f"download of {uri} failed: {exc}") from exc
    expected = (obj.get("Metadata") or {}).get(SHA_META)
    if expected and _sha256(data) != expected:
        raise StorageError(f"{uri}: checksum mismatch (sha256 {_sha256(data)} != {expected})")
    return data, str(obj.get("ETag", ""))


def head(uri: str) -> dict:
    """Size, ETag and stored sha256 (None when the object has none) of the s3:// object ``uri``;
    :class:`NoSuchFileError` when there is no such object."""
    bucket, key = split_s3(uri)
    try:
        obj = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise NoSuchFileError(f"{uri}: no such object ({code})") from None
        raise StorageError(f"cannot stat {uri}: {exc}") from exc
    return {"size": int(obj["ContentLength"]), "etag": str(obj.get("ETag", "")),
            "sha256": (obj.get("Metadata") or {}).get(SHA_META)}


def delete(uri: str) -> None:
    """Remove a file or object; one that is not there is no error."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise StorageError(f"cannot delete {uri}: {exc}") from exc
        return
    Path(uri).unlink(missing_ok=True)


def exists(uri: str) -> bool:
    uri = str(uri)
    if is_s3(uri):
        try:
            head(uri)
            return True
        except NoSuchFileError:
            return False
    return Path(uri).exists()


def list_files(prefix: str) -> list[str]:
    """All file URIs under a local folder or s3:// prefix, sorted."""
    prefix = str(prefix)
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = []
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            out += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
        return sorted(out)
    root = Path(prefix)
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def list_sizes(prefix: str) -> dict[str, int]:
    """Every file under a local folder or s3:// prefix: its name relative to ``prefix`` (with
    ``/``) -> its size in bytes. A folder that does not exist has none."""
    prefix = str(prefix)
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = {}
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            out.update({o["Key"][len(key):]: int(o["Size"]) for o in page.get("Contents", [])})
        return out
    root = Path(prefix)
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in root.rglob("*") if p.is_file()}


def copy_tree(src: str, dst: str) -> int:
    """Copy every file under ``src`` to ``dst`` (either side local or s3://). Returns a count."""
    src, dst = str(src), str(dst)
    files = list_files(src)
    for f in files:
        rel = _relative_key(f, src) if is_s3(src) else os.path.relpath(f, src).replace(os.sep, "/")
        target = safe_join(dst, rel, record=f"{f} copied from {src}")
        if not is_s3(src) and not is_s3(dst):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        else:
            write_bytes(target, read_bytes(f))
    return len(files)


def _relative_key(uri: str, prefix: str) -> str:
    """The part of the object ``uri`` below the s3:// ``prefix``, as stored (not normalised: a
    key with ``..`` stays visible to :func:`safe_join`)."""
    base = prefix.rstrip("/") + "/"
    return uri[len(base):] if uri.startswith(base) else uri


def cache_path(uri: str, cache_dir: str) -> str:
    """Where :func:`local_copy` keeps the s3:// ``uri``: ``cache_dir/<bucket>/<key>``. A key that
    would leave ``cache_dir`` (``..``, NUL) or that is not a plain relative path (an absolute,
    empty or ``.`` part, a backslash: two keys would share one file) raises
    :class:`UnsafePathError` naming the URI."""
    bucket, key = split_s3(uri)
    rel = safe_name(f"{bucket}/{key}", record=uri)
    if rel != f"{bucket}/{key}":
        raise UnsafePathError(f"{uri}: key {key!r} is not a plain relative path (an absolute, "
                              f"empty or '.' part, or a backslash; it would be cached as {rel!r})")
    return join(cache_dir, rel)


ETAG_DIR = ".etag"  # under a cache: what each cached file was downloaded from (no bucket
#                     name starts with a dot, so it never meets a cached object)
_VERIFIED: dict[str, tuple[int, int]] = {}  # cached path -> (size, mtime_ns) checked this process


def local_copy(uri: str, cache_dir: str) -> str:
    """Return a local path for ``uri``: itself if local, else a verified copy in ``cache_dir``
    (at :func:`cache_path`; never outside ``cache_dir``).

    A download goes to a temporary file in the same folder, then ``os.replace``: a reader never
    sees a partial file. Beside it (``cache_dir/.etag/<bucket>/<key>``) is what it was downloaded
    from: the object's ETag, size and sha256. A cached file is trusted only when those match the
    object now (one HEAD request, once per file and process) and its own size and sha256 match;
    otherwise (partial, corrupt, or the object changed) it is downloaded again."""
    if not is_s3(uri):
        return str(uri)
    target = Path(cache_path(uri, cache_dir))
    if _still_verified(target):
        return str(target)
    record = Path(cache_dir, ETAG_DIR, *target.relative_to(cache_dir).parts)
    if not (target.is_file() and record.is_file()
            and _cached_copy_matches(target, record, head(uri))):
        data, etag = _get_object(uri)
        _write_atomic(target, data)
        _write_atomic(record, json.dumps({"uri": uri, "etag": etag, "size": len(data),
                                          "sha256": _sha256(data)}).encode())
    st = target.stat()
    _VERIFIED[str(target)] = (st.st_size, st.st_mtime_ns)
    return str(target)


def _still_verified(target: Path) -> bool:
    """``target`` was checked in this process and has not changed since (size, mtime)."""
    seen = _VERIFIED.get(str(target))
    if seen is None:
        return False
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns) == seen


def _cached_copy_matches(target: Path, record: Path, obj: dict) -> bool:
    """The cached file is a whole copy of the object as it is now."""
    try:
        rec = json.loads(record.read_text(encoding="utf-8"))
        data = target.read_bytes()
    except (OSError, ValueError):
        return False
    return (rec.get("etag") == obj["etag"] and rec.get("size") == obj["size"] == len(data)
            and rec.get("sha256") == _sha256(data))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_output(uri: str, prefix: str = "refseg-", step: str | None = None) -> Iterator[str]:
    """A local folder to write a step's output into: ``uri`` itself when local (created), else a
    temporary folder whose files are copied to the s3:// ``uri`` when the block ends without an
    exception (and removed either way). Nothing partial reaches S3.

    With ``step``, the folder is a step's output with a completion marker
    (:mod:`components.data.outputs`): the marker of an earlier run goes first, the files it
    listed that this run did not write are removed, and a new marker, listing what this run
    wrote, is written last."""
    uri = str(uri)
    if step is not None:
        from components.data.outputs import step_output

        with step_output(uri, step, prefix=prefix) as out:
            yield out.local
        return
    if not is_s3(uri):
        os.makedirs(uri, exist_ok=True)
        yield uri
        return
    local = tempfile.mkdtemp(prefix=prefix)
    try:
        yield local
        copy_tree(local, uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
