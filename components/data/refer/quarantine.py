"""Refused records: one row per record with its kind, id, code and reasons. Nothing is dropped
silently: every record the importer reads is either kept or quarantined here."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

KINDS = ("image", "ref", "sentence", "translation")
QUARANTINE_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("record_id", pa.string()),
        ("sample_id", pa.string()),
        ("code", pa.string()),
        ("reason", pa.string()),
    ]
)


@dataclass
class Problem:
    """Why a record is refused: a short machine code and a sentence naming the record."""

    code: str
    reason: str


@dataclass
class Quarantine:
    """The refused records in the order they were found."""

    rows: list[dict] = field(default_factory=list)

    def add(self, kind: str, record_id, problems: list[Problem], sample_id: str | None = None):
        """Refuse one record; its code is the first problem's, its reason all of them."""
        self.rows.append(
            {
                "kind": kind,
                "record_id": str(record_id),
                "sample_id": sample_id,
                "code": problems[0].code,
                "reason": "; ".join(p.reason for p in problems),
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=QUARANTINE_SCHEMA.names)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """The quarantine table as Parquet (the schema above)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, schema=QUARANTINE_SCHEMA, preserve_index=False), buf)
    return buf.getvalue()
