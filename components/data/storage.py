"""Storage for local paths and s3:// URIs (boto3), used by every step.

S3 goes through boto3 with the endpoint from ``AWS_ENDPOINT_URL`` (MinIO, moto), adaptive retries,
and a SHA-256 checksum: stored as object metadata on upload and verified on download, plus S3's own
flexible checksum where the server supports it.
"""

from __future__ import annotations

import base64
import hashlib
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
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return uri


def read_bytes(uri: str) -> bytes:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            obj = s3_client().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            data = obj["Body"].read()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise NoSuchFileError(f"{uri}: no such object ({code})") from None
            raise StorageError(f"download of {uri} failed: {exc}") from exc
        expected = (obj.get("Metadata") or {}).get(SHA_META)
        if expected and _sha256(data) != expected:
            raise StorageError(f"{uri}: checksum mismatch (sha256 {_sha256(data)} != {expected})")
        return data
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise NoSuchFileError(f"{uri}: no such file") from None


def exists(uri: str) -> bool:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot stat {uri}: {exc}") from exc
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
    head = prefix.rstrip("/") + "/"
    return uri[len(head):] if uri.startswith(head) else uri


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


def local_copy(uri: str, cache_dir: str) -> str:
    """Return a local path for ``uri``: itself if local, else downloaded into ``cache_dir``
    (at :func:`cache_path`; never outside ``cache_dir``)."""
    if not is_s3(uri):
        return str(uri)
    target = Path(cache_path(uri, cache_dir))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(uri))
    return str(target)


@contextmanager
def staged_output(uri: str, prefix: str = "refseg-") -> Iterator[str]:
    """A local folder to write a step's output into: ``uri`` itself when local (created), else a
    temporary folder whose files are copied to the s3:// ``uri`` when the block ends without an
    exception (and removed either way). Nothing partial reaches S3."""
    uri = str(uri)
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
