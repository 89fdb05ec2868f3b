"""The bilingual lexicon of the meaning check and the English allowlist of the script check.

Both are package data files, ``components/data/lexicon.tsv`` and ``components/data/allowlist_en.txt``,
which the user may extend with files of their own (``--lexicon``, ``--allowlist``; local or s3://).

A lexicon line is ``group TAB concept TAB check TAB en terms TAB zh terms [TAB zh exclusions]``
(terms ``|``-separated, ``#`` comments): a concept found on one side needs its counterpart on the
other, and two concepts of the same group on the two sides contradict each other (left vs 右).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from components.data import storage
from components.errors import InputError, MissingInputError
from components.text import zh

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DEFAULT_LEXICON = str(DATA_DIR / "lexicon.tsv")
DEFAULT_ALLOWLIST = str(DATA_DIR / "allowlist_en.txt")
LEXICON_CHECKS = ("both", "en", "zh")


class LexiconError(InputError):
    """A lexicon file is malformed; the message names the file and line."""


@dataclass
class Concept:
    group: str
    name: str
    check: str
    en: list[str]
    zh: list[str]
    zh_exclude: list[str]


class Lexicon:
    """Concepts with English and Chinese terms; :meth:`en_concepts` / :meth:`zh_concepts` find them."""

    def __init__(self, concepts: list[Concept], sources: list[str]):
        self.concepts = {c.name: c for c in concepts}
        self.sources = sources
        # English: whole words / word sequences, plural -s/-es, longest first.
        en_map: dict[str, set[str]] = {}
        for c in concepts:
            for term in c.en:
                words = term.split()
                for last in (words[-1], words[-1] + "s", words[-1] + "es"):
                    en_map.setdefault(" ".join(words[:-1] + [last]), set()).add(c.name)
        self._en_map = en_map
        self._en_re = _alternation(en_map, boundaries=True)
        # Chinese: substrings, longest first; an entry means every concept whose term it contains,
        # less those that list it as an exclusion.
        entries = {t for c in concepts for t in c.zh + c.zh_exclude}
        zh_map: dict[str, set[str]] = {}
        for s in entries:
            got = {c.name for c in concepts if any(t in s for t in c.zh)}
            zh_map[s] = {n for n in got if s not in self.concepts[n].zh_exclude}
        self._zh_map = zh_map
        self._zh_re = _alternation(zh_map, boundaries=False)

    def en_concepts(self, tokens: list[str]) -> frozenset[str]:
        if not tokens or self._en_re is None:
            return frozenset()
        text = " ".join(tokens)
        return frozenset(n for m in self._en_re.findall(text) for n in self._en_map[m])

    def zh_concepts(self, text: str) -> frozenset[str]:
        if not text or self._zh_re is None:
            return frozenset()
        return frozenset(n for m in self._zh_re.findall(text) for n in self._zh_map[m])

    def compare(self, en: frozenset[str], zh_: frozenset[str]) -> list[str]:
        """Reasons (``kind: detail``) for one pair of concept sets; empty when they agree."""
        if en == zh_:
            return []
        by_group: dict[str, tuple[list[str], list[str]]] = {}
        for n in en - zh_:
            by_group.setdefault(self.concepts[n].group, ([], []))[0].append(n)
        for n in zh_ - en:
            by_group.setdefault(self.concepts[n].group, ([], []))[1].append(n)
        reasons = []
        for group in sorted(by_group):
            e, z = sorted(by_group[group][0]), sorted(by_group[group][1])
            if e and z:
                reasons.append(
                    f"contradiction: en says {'/'.join(e)} but zh says "
                    f"{'/'.join(self._zh_label(n) for n in z)} ({group})")
                continue
            for n in e:
                if self.concepts[n].check in ("both", "en"):
                    reasons.append(f"missing in zh: en {n!r} has no "
                                   f"{'|'.join(self.concepts[n].zh[:3])} in zh")
            for n in z:
                if self.concepts[n].check in ("both", "zh"):
                    reasons.append(f"missing in en: zh {self._zh_label(n)} has no "
                                   f"{'|'.join(self.concepts[n].en[:3])} in en")
        return reasons

    def _zh_label(self, name: str) -> str:
        return f"{name}({self.concepts[name].zh[0]})"


def _alternation(mapping: dict[str, set[str]], boundaries: bool) -> re.Pattern | None:
    keys = sorted(mapping, key=lambda s: (-len(s), s))
    if not keys:
        return None
    body = "|".join(re.escape(k) for k in keys)
    return re.compile(rf"(?<![\w'])(?:{body})(?![\w'])" if boundaries else f"(?:{body})")


def _paths(paths: list[str] | str | None, default: str) -> list[str]:
    if paths is None:
        return [default]
    return [paths] if isinstance(paths, str) else list(paths)


def _read_text(path: str, what: str, error: type[InputError]) -> str:
    try:
        return storage.read_bytes(str(path)).decode("utf-8-sig")
    except FileNotFoundError:
        raise MissingInputError(f"{what} {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not UTF-8 ({exc})") from None


def _parse_line(line: str, where: str) -> Concept:
    parts = [p.strip() for p in line.split("\t")]
    if len(parts) not in (5, 6):
        raise LexiconError(f"{where}: expected 5 or 6 TAB-separated fields "
                           f"(group, concept, check, en, zh[, zh exclusions]), got "
                           f"{len(parts)}: {line!r:.80}")
    group, name, check, en, zh_terms = parts[:5]
    exclude = parts[5] if len(parts) == 6 else ""
    if check not in LEXICON_CHECKS:
        raise LexiconError(f"{where}: check must be one of {LEXICON_CHECKS}, got {check!r}")
    if not group or not name:
        raise LexiconError(f"{where}: empty group or concept name")
    en_terms = [" ".join(zh.english_tokens(t)) for t in en.split("|") if t.strip()]
    zh_list = [zh.normalize_zh(t) for t in zh_terms.split("|") if t.strip()]
    if not en_terms or not zh_list or not all(en_terms) or not all(zh_list):
        raise LexiconError(f"{where}: concept {name!r} needs English and Chinese terms")
    return Concept(group, name, check, en_terms, zh_list,
                   [zh.normalize_zh(t) for t in exclude.split("|") if t.strip()])


def load_lexicon(paths: list[str] | str | None = None) -> Lexicon:
    """Read one or more lexicon TSV files (default ``components/data/lexicon.tsv``; the format is
    described at the top of that file)."""
    paths = _paths(paths, DEFAULT_LEXICON)
    concepts: list[Concept] = []
    seen: dict[str, str] = {}
    for path in paths:
        text = _read_text(path, "lexicon", LexiconError)
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"lexicon {path}, line {lineno}"
            concept = _parse_line(line, where)
            if concept.name in seen:
                raise LexiconError(f"{where}: concept {concept.name!r} already defined in "
                                   f"{seen[concept.name]}")
            seen[concept.name] = where
            concepts.append(concept)
    if not concepts:
        raise LexiconError(f"lexicon {', '.join(map(str, paths))}: no concepts")
    return Lexicon(concepts, [str(p) for p in paths])


def load_allowlist(paths: list[str] | str | None = None) -> set[str]:
    """Lower-cased English words allowed inside Chinese text, one a line with ``#`` comments
    (default ``components/data/allowlist_en.txt``)."""
    words: set[str] = set()
    for path in _paths(paths, DEFAULT_ALLOWLIST):
        text = _read_text(path, "allowlist", InputError)
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if line:
                words.add(line)
    return words
