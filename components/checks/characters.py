"""Invisible characters and over-long expressions: the text limits of the checks.

An expression fails (in the ``script`` check) when it holds a control or format character:
Unicode categories Cc (C0/C1 controls: NUL, ESC, DEL, ...), Cf (format: the bidi embeddings and
overrides U+202A-U+202E, the isolates U+2066-U+2069, the marks U+200E/U+200F/U+061C, zero-width
space/joiners U+200B-U+200D, word joiner U+2060, the BOM U+FEFF, soft hyphen U+00AD, ...), Zl/Zp
(U+2028/U+2029) and Cs (lone surrogates). Such characters are invisible or reorder what a reader
sees, and a tokenizer turns them into vocabulary entries. Tab, line feed and carriage return are
allowed: they are whitespace like the space, and normalisation collapses every run of whitespace
into one space (``components.text.zh``), so they never reach a token. Every other Unicode space
(no-break space, the ideographic space U+3000) is allowed for the same reason.

An expression fails (in the ``length`` check) when it has more characters (code points, as
stored) than its language's maximum (:data:`DEFAULT_MAX_CHARS`, ``--max-chars-en`` /
``--max-chars-zh``): one such pair would otherwise weigh like thousands in the word-vector
training, and tokenize keeps only its first words anyway.
"""

from __future__ import annotations

import unicodedata

CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
ALLOWED_CONTROLS = frozenset("\t\n\r")
# RefCOCO/RefCOCO+/RefCOCOg expressions average about 3.5-8.4 English words (about 20-45 characters);
# the limits leave a factor of about 7 over RefCOCOg's mean (and tokenize keeps 20 en / 30 zh
# tokens of an expression).
DEFAULT_MAX_CHARS = {"en": 300, "zh": 150}
_C0_NAMES = {0x00: "NULL", 0x07: "BELL", 0x08: "BACKSPACE", 0x0B: "LINE TABULATION",
             0x0C: "FORM FEED", 0x1B: "ESCAPE", 0x7F: "DELETE"}


def is_control(ch: str) -> bool:
    """True for a control or format character that an expression may not hold."""
    return ch not in ALLOWED_CONTROLS and unicodedata.category(ch) in CONTROL_CATEGORIES


def control_characters(text: str) -> list[str]:
    """The distinct control/format characters of ``text``, in order of first appearance."""
    if text.isprintable():  # C-speed fast path: every character we look for is unprintable
        return []
    return list(dict.fromkeys(c for c in text if is_control(c)))


def describe(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: the code point and its name."""
    cp = ord(ch)
    name = unicodedata.name(ch, "") or _C0_NAMES.get(cp) or f"control, category {unicodedata.category(ch)}"
    return f"U+{cp:04X} ({name})"


def control_reason(text: str, column: str) -> str | None:
    """``control character: U+202E (RIGHT-TO-LEFT OVERRIDE) in text_zh`` (up to three named), or
    None when ``text`` has none."""
    found = control_characters(text)
    if not found:
        return None
    shown = ", ".join(describe(c) for c in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"control character: {shown}{more} in {column}"


def too_long_reason(text: str, column: str, max_chars: int, option: str) -> str | None:
    """``too long: text_en has 10000 characters, over the limit of 300 (--max-chars-en)``, or
    None."""
    if len(text) <= max_chars:
        return None
    return f"too long: {column} has {len(text)} characters, over the limit of {max_chars} ({option})"
