"""Field values as the refer pickles store them: ids that may be ints, floats or (py2) bytes,
labels as bytes, expressions that may be empty, undecodable or punctuation only."""

from __future__ import annotations

import unicodedata

import numpy as np

from components.data.refer.quarantine import Problem
from components.errors import InputError


def keys_to_str(obj):
    """py2 pickles loaded with encoding='bytes' have bytes dict keys; make keys str (values stay)."""
    if isinstance(obj, dict):
        return {
            (k.decode("ascii", "replace") if isinstance(k, bytes) else k): keys_to_str(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [keys_to_str(v) for v in obj]
    return obj


def as_id(v, what: str) -> int:
    """An integer id from an int, an integral float or a numeric string; InputError otherwise."""
    if isinstance(v, bool):
        raise InputError(f"{what} is a bool ({v!r})")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, (str, bytes)):
        s = v.decode("ascii", "replace") if isinstance(v, bytes) else v
        try:
            return int(s.strip())
        except ValueError:
            pass
    raise InputError(f"{what} {v!r:.40} is not an integer")


def as_label(v) -> str:
    """A short ascii-ish field (split, file_name) that py2 pickles store as bytes."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return str(v)


def check_text(value, what: str) -> tuple[str | None, Problem | None]:
    """Decode and check one expression. Returns (text, None) or (None, problem)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, Problem("empty_text", f"{what} is missing")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = bytes(value)[exc.start : exc.start + 4]
            return None, Problem(
                "invalid_utf8", f"{what} is not valid UTF-8 (bytes {bad!r} at offset {exc.start})"
            )
    if not isinstance(value, str):
        return None, Problem("bad_type", f"{what} is a {type(value).__name__}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: undecodable bytes (surrogateescape) or \udcxx
        return None, Problem(
            "invalid_utf8",
            f"{what} is not valid UTF-8 (undecodable character {value[exc.start]!r} "
            f"at offset {exc.start})",
        )
    text = " ".join(value.split())
    if not text:
        return None, Problem(
            "empty_text", f"{what} is empty" if not value else f"{what} is only whitespace"
        )
    if not any(unicodedata.category(c)[0] in "LN" for c in text):
        return None, Problem("punctuation_only", f"{what} {text!r:.40} has no letter or digit")
    return text, None
