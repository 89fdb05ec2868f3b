"""The import's output folder and its summary::

    manifest.parquet     one row per kept expression (the manifest schema plus ``sent_id``)
    quarantine.parquet   kind, record_id, sample_id, code, reason: one row per refused record
    summary.json         per kind of record: in = kept + quarantined; the ids worth a look

This module is the one place that spells those file names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from components.data import manifest as mf
from components.data import storage
from components.data.refer.quarantine import KINDS, Problem, Quarantine, parquet_bytes
from components.data.refer.records import Expressions

FILES = {"manifest": "manifest.parquet", "quarantine": "quarantine.parquet",
         "summary": "summary.json"}


def output_uris(out_dir: str) -> dict[str, str]:
    """``{"manifest", "quarantine", "summary"}`` -> their URIs under ``out_dir``."""
    return {key: storage.join(out_dir, name) for key, name in FILES.items()}


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    """The kept rows as a manifest frame (an empty one, with ``sent_id``, when none was kept)."""
    if rows:
        return pd.DataFrame(rows, columns=[*mf.COLUMNS, "sent_id"])
    manifest = mf.empty_manifest()
    manifest["sent_id"] = pd.Series([], dtype="int64")
    return manifest


@dataclass
class ImportRecords:
    """Everything the import read and decided, to count and summarise."""

    n_refs: int
    n_sentences: int
    images: dict[int, tuple[str | None, Problem | None]]  # check_images' result
    expressions: Expressions
    translation_info: dict  # read_translations' info
    unmatched_translations: list[int]
    quarantine: Quarantine

    def counts(self) -> dict[str, dict[str, int]]:
        """Per kind of record: in, kept, quarantined. Raises AssertionError (a bug, never the
        user's input) when in != kept + quarantined."""
        qcount = Counter(r["kind"] for r in self.quarantine.rows)
        counts = {
            "image": {"in": len(self.images),
                      "kept": sum(p is None for _, p in self.images.values()),
                      "quarantined": qcount["image"]},
            "ref": {"in": self.n_refs, "kept": self.expressions.refs_kept,
                    "quarantined": qcount["ref"]},
            "sentence": {"in": self.n_sentences, "kept": len(self.expressions.rows),
                         "quarantined": qcount["sentence"]},
            "translation": {"in": self.translation_info["rows"],
                            "kept": len(self.expressions.matched_translations),
                            "quarantined": qcount["translation"]},
        }
        for kind, c in counts.items():
            if c["in"] != c["kept"] + c["quarantined"]:
                raise AssertionError(f"{kind} counts do not reconcile: {c}")
        return counts

    def summary(self, settings: dict) -> dict:
        """The summary: ``settings`` (the import's inputs) first, then the counts and ids."""
        rows, frame = self.expressions.rows, self.quarantine.frame()
        return {
            **settings,
            "counts": self.counts(),
            "manifest_rows": len(rows),
            "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
            "quarantine_codes": {
                kind: dict(sorted(Counter(frame.loc[frame["kind"] == kind, "code"]).items()))
                for kind in KINDS
            },
            "unmatched_translation_ids": self.unmatched_translations,
            "duplicate_translation_ids": self.translation_info["duplicate_ids"],
            "untranslated_sent_ids": sorted(self.expressions.untranslated),
            "missing_image_ids": sorted(
                i for i, (_, p) in self.images.items() if p is not None and p.code == "missing_image"
            ),
        }


def write_outputs(folder: str, records: ImportRecords, summary: dict) -> None:
    """Write the manifest, the quarantine and ``summary`` into ``folder``."""
    paths = output_uris(folder)
    mf.write_manifest(manifest_frame(records.expressions.rows), paths["manifest"])
    storage.write_bytes(paths["quarantine"], parquet_bytes(records.quarantine.frame()))
    mf.write_json(paths["summary"], summary)
