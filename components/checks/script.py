"""The script check: is the Chinese side Chinese, and is either side readable text?

A Chinese text fails on a U+FFFD replacement character, on mojibake (UTF-8 read as Latin-1/cp1252:
"Ã", "â€"; or read as GBK: "锟斤拷", "鍙", "鐨"; or any text that decodes back to Chinese), on a
share of Han characters among Han + Latin letters under ``min_cjk_ratio``, and on an English word
that is not in the allowlist (``components/data/allowlist_en.txt``; single letters always pass, as
the T of "T恤"). The English side fails on U+FFFD and on Latin-1 mojibake.
"""

from __future__ import annotations

import re

from components.data.manifest import TEXT_COLUMN
from components.text import zh

# UTF-8 bytes of Chinese read as Latin-1 / cp1252: a lead byte E3-E9 (ã..é) then continuation bytes
# (U+0080-U+00BF, or the cp1252 punctuation they map to); also UTF-8 of Latin-1 doubled (Ã, Â).
_CP1252_CONT = ("\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
                "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122")
_MOJIBAKE_LATIN = re.compile(rf"[\u00c2-\u00ef][{_CP1252_CONT}]|â€")
# UTF-8 read as GBK: typical sequences and characters that are rare in real text.
_MOJIBAKE_GBK = re.compile("锟斤拷|烫烫烫|屯屯屯|[鍙鐨鏄鍦銆锛鑹鎴缁宸鍚鍓閲鈥]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+(?:['’-][A-Za-z\u00c0-\u024f]+)*")


def _reverses_to_chinese(text: str, codec: str) -> bool:
    """True when ``text`` is UTF-8 Chinese that was decoded with ``codec`` (it round-trips)."""
    try:
        back = text.encode(codec).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return False
    if back == text:
        return False
    letters = [c for c in back if not c.isspace()]
    odd = [c for c in letters if "\u0080" <= c < "\u3000"]
    return not odd and zh.count_han(back) >= max(1, len(letters) // 2)


def _mojibake_reason(raw: str) -> str | None:
    if _MOJIBAKE_LATIN.search(raw) or _reverses_to_chinese(raw, "cp1252") or \
            _reverses_to_chinese(raw, "latin-1"):
        m = _MOJIBAKE_LATIN.search(raw)
        return f"mojibake: UTF-8 read as Latin-1 ({(m.group(0) if m else raw[:6])!r})"
    if _MOJIBAKE_GBK.search(raw) or _reverses_to_chinese(raw, "gbk"):
        m = _MOJIBAKE_GBK.search(raw)
        return f"mojibake: UTF-8 read as GBK ({(m.group(0) if m else raw[:6])!r})"
    return None


def script_reasons(raw: str, norm: str, allow: set[str], min_cjk_ratio: float) -> list[str]:
    """Reasons (``kind: detail``) why one Chinese text (as given, and normalised) fails."""
    out = []
    if "\ufffd" in raw:
        out.append(f"replacement character: U+FFFD in {TEXT_COLUMN['zh']}")
    mojibake = _mojibake_reason(raw)
    if mojibake:
        out.append(mojibake)
    words = _LATIN_WORD.findall(norm)
    foreign = [w for w in words if len(w) > 1 and w.lower() not in allow]
    n_han = zh.count_han(norm)
    n_latin = sum(len(w) for w in foreign)
    ratio = n_han / (n_han + n_latin) if (n_han + n_latin) else 0.0
    if ratio < min_cjk_ratio:
        out.append(f"low CJK ratio: {ratio:.2f} < {min_cjk_ratio:.2f}")
    if foreign:
        shown = ", ".join(repr(w) for w in list(dict.fromkeys(foreign))[:4])
        out.append(f"untranslated English: {shown}")
    return out


def english_script_reasons(raw: str) -> list[str]:
    """Reasons why one English text (as given) is not readable: U+FFFD or Latin-1 mojibake."""
    out = []
    if "\ufffd" in raw:
        out.append(f"replacement character: U+FFFD in {TEXT_COLUMN['en']}")
    if _MOJIBAKE_LATIN.search(raw):
        out.append(f"mojibake: {TEXT_COLUMN['en']} has UTF-8 read as Latin-1")
    return out
