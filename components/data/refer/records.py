"""Refs and their sentences -> manifest rows. A ref is kept when its fields parse, its image is
kept, its annotation exists on that image with a mask inside it, and its category and split are
known; a sentence when its ref is kept, its sent_id is unique, and its English and Chinese texts
are valid. Everything refused goes to the quarantine with the reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from components.data import manifest as mf
from components.data.refer.layout import ReferSource
from components.data.refer.masks import annotation_rle
from components.data.refer.quarantine import Problem, Quarantine
from components.data.refer.values import as_id, as_label, check_text


@dataclass
class ParsedRef:
    """One ref as parsed: its id (``#<index>`` until ref_id parses), the ref dict with ``_ref_id``,
    ``_ann_id``, ``_image_id``, ``_split`` added, the problems found so far, and its sentences as
    (index, sent_id or None, sentence)."""

    rid: object
    ref: dict
    problems: list[Problem]
    sentences: list[tuple[int, int | None, object]]


@dataclass
class ParsedRefs:
    refs: list[ParsedRef]
    n_sentences: int
    sent_seen: Counter  # sent_id -> how many sentences carry it

    def image_ids(self) -> list[int]:
        """The images of the refs that parsed, each once, sorted."""
        return sorted({p.ref["_image_id"] for p in self.refs if not p.problems})


def _parse_ref(idx: int, ref) -> ParsedRef:
    problems: list[Problem] = []
    rid: object = f"#{idx}"
    if not isinstance(ref, dict):
        problems.append(Problem("bad_ref", f"ref #{idx} is a {type(ref).__name__}, not a dict"))
        ref = {}
    try:
        rid = as_id(ref.get("ref_id"), "ref_id")
        ref["_ref_id"] = rid
        ref["_ann_id"] = as_id(ref.get("ann_id"), "ann_id")
        ref["_image_id"] = as_id(ref.get("image_id"), "image_id")
        ref["_split"] = as_label(ref.get("split"))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(ref, dict) and ref:
            problems.append(Problem("bad_ref", f"ref {rid}: {exc}"))
    raw_sents = ref.get("sentences") if isinstance(ref, dict) else None
    if not isinstance(raw_sents, list):
        if ref:
            problems.append(Problem("bad_ref", f"ref {rid}: 'sentences' is not a list"))
        raw_sents = []
    sentences = []
    for j, s in enumerate(raw_sents):
        try:
            sid = as_id(s.get("sent_id"), "sent_id") if isinstance(s, dict) else None
        except ValueError:
            sid = None
        sentences.append((j, sid, s))
    return ParsedRef(rid, ref, problems, sentences)


def parse_refs(refs: list) -> ParsedRefs:
    """Parse every ref's fields and sentence ids (nothing is refused yet)."""
    parsed = [_parse_ref(idx, ref) for idx, ref in enumerate(refs)]
    sent_seen: Counter = Counter()
    for p in parsed:
        sent_seen.update(sid for _, sid, _ in p.sentences if sid is not None)
    return ParsedRefs(parsed, sum(len(p.sentences) for p in parsed), sent_seen)


@dataclass
class Expressions:
    """The kept rows and what the translations matched."""

    rows: list[dict] = field(default_factory=list)
    refs_kept: int = 0
    matched_translations: set[int] = field(default_factory=set)
    untranslated: list[int] = field(default_factory=list)


@dataclass
class RowBuilder:
    """Turns parsed refs into manifest rows (``images``: :func:`check_images`' result;
    ``translations``: sent_id -> raw text_zh; ``duplicate_translations``: refused sent_ids)."""

    source: ReferSource
    images: dict[int, tuple[str | None, Problem | None]]
    translations: dict[int, object]
    duplicate_translations: list[int]
    quarantine: Quarantine
    dataset: str
    split_by: str
    text_field: str = "sent"
    tolerance: float = 1.0
    masks: dict[int, tuple] = field(default_factory=dict)  # ann_id -> annotation_rle(...)
    out: Expressions = field(default_factory=Expressions)

    def build(self, parsed: ParsedRefs) -> Expressions:
        for p in parsed.refs:
            problems, category = self._check_ref(p)
            if problems:
                self.quarantine.add("ref", p.rid, problems)
            else:
                self.out.refs_kept += 1
            ref_problem = (
                [Problem(problems[0].code, f"ref {p.rid} quarantined: "
                         + "; ".join(q.reason for q in problems))]
                if problems else []
            )
            for j, sid, s in p.sentences:
                self._sentence(p, j, sid, s, ref_problem, category, parsed.sent_seen)
        return self.out

    def _check_ref(self, p: ParsedRef) -> tuple[list[Problem], str | None]:
        """The ref's problems (parse problems first) and its category name."""
        problems, ref, src = list(p.problems), p.ref, self.source
        if problems:
            return problems, None
        aid, iid = ref["_ann_id"], ref["_image_id"]
        image_problem = self.images[iid][1]
        if image_problem is not None:
            problems.append(Problem(image_problem.code,
                                    f"image {iid} quarantined: {image_problem.reason}"))
        ann = src.anns.get(aid)
        if ann is None:
            problems.append(Problem("missing_annotation", f"ann_id {aid} is not in instances.json"))
        elif int(ann.get("image_id", -1)) != iid:
            problems.append(Problem(
                "bad_ref", f"ann_id {aid} belongs to image {ann.get('image_id')}, ref says {iid}"
            ))
        elif iid in src.images and not problems:
            if aid not in self.masks:
                im = src.images[iid]
                self.masks[aid] = annotation_rle(
                    ann, int(im["height"]), int(im["width"]), self.tolerance
                )
            if self.masks[aid][1] is not None:
                problems.append(self.masks[aid][1])
        category = None
        cat_id = ref.get("category_id", ann.get("category_id") if ann else None)
        try:
            category = src.cats[as_id(cat_id, "category_id")]
        except (KeyError, ValueError):
            problems.append(Problem("unknown_category",
                                    f"category_id {cat_id!r} is not in instances.json"))
        if ref["_split"] not in mf.KNOWN_SPLITS:
            problems.append(Problem("unknown_split", f"split {ref['_split']!r} is not one of "
                                                     f"{', '.join(mf.KNOWN_SPLITS)}"))
        return problems, category

    def _sentence(self, p: ParsedRef, j: int, sid: int | None, s, ref_problem: list[Problem],
                  category: str | None, sent_seen: Counter) -> None:
        """Keep one sentence as a row, or quarantine it with every reason that applies."""
        sp = list(ref_problem)
        if sid is None:
            sp.append(Problem("bad_sentence", f"ref {p.rid} sentence #{j}: no integer sent_id"))
            self.quarantine.add("sentence", f"ref {p.rid} sentence #{j}", sp)
            return
        sample_id = f"{self.dataset}/{self.split_by}/sent_{sid}"
        if sent_seen[sid] > 1:
            sp.append(Problem("duplicate_sent_id", f"sent_id {sid} occurs {sent_seen[sid]} times "
                                                   f"in {self.source.refs_uri}"))
        field_ = self.text_field if self.text_field in s else ("raw" if "raw" in s else self.text_field)
        text_en, problem = check_text(s.get(field_), f"sent_id {sid}: English text ({field_})")
        if problem is not None:
            sp.append(problem)
        text_zh = None
        if sid in self.translations:
            self.out.matched_translations.add(sid)
            text_zh, problem = check_text(self.translations[sid], f"sent_id {sid}: Chinese text")
            if problem is not None:
                sp.append(problem)
        else:
            self.out.untranslated.append(sid)
            dup = sid in self.duplicate_translations
            sp.append(Problem(
                "duplicate_translation" if dup else "no_translation",
                f"sent_id {sid}: "
                + ("translation refused (duplicate sent_id in the translation table)" if dup
                   else "no Chinese translation"),
            ))
        if sp:
            self.quarantine.add("sentence", sid, sp, sample_id=sample_id)
            return
        self.out.rows.append(self._row(p.ref, sid, sample_id, category, text_en, text_zh))

    def _row(self, ref: dict, sid: int, sample_id: str, category: str | None, text_en: str | None,
             text_zh: str | None) -> dict:
        ann = self.source.anns[ref["_ann_id"]]
        return {
            "sample_id": sample_id,
            "dataset": self.dataset,
            "split": ref["_split"],
            "image_id": ref["_image_id"],
            "image_uri": self.images[ref["_image_id"]][0],
            "ref_id": ref["_ref_id"],
            "ann_id": ref["_ann_id"],
            "category": category,
            "bbox": [float(v) for v in ann["bbox"]],
            "mask": self.masks[ref["_ann_id"]][0],
            "text_en": text_en,
            "text_zh": text_zh,
            "sent_id": sid,
        }
