"""The Chinese translation table: ``sent_id, text_zh`` as CSV, JSONL or Parquet (by extension).

Rows with a bad or duplicated sent_id go to the quarantine (kind ``translation``), as do rows that
match no expression. Text is not checked here: it is checked per expression, so that the reason
names the sent_id. Undecodable bytes are kept (as bytes, or as lone surrogates from JSON) and
refused later.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict

import pandas as pd
import pyarrow as pa

from components.data import storage
from components.data.manifest import parquet_table
from components.data.refer.layout import ReferImportError
from components.data.refer.quarantine import Problem, Quarantine
from components.data.refer.values import as_id

TRANSLATION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                       ".pq": "parquet"}


def _format(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1].lower()
    fmt = next((f for ext, f in TRANSLATION_FORMATS.items() if name.endswith(ext)), None)
    if fmt is None:
        raise ReferImportError(
            f"{uri}: unknown translation table format; use one of "
            f"{', '.join(sorted(TRANSLATION_FORMATS))}"
        )
    return fmt


def _read_jsonl(data: bytes) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Line by line with the json module: pandas' ujson cannot carry undecodable bytes, and a
    broken line must be reported by its number, not fail the whole table."""
    records, bad_lines = [], []
    for lineno, line in enumerate(data.decode("utf-8", "surrogateescape").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            bad_lines.append((lineno, f"line {lineno}: not a JSON object ({exc})"))
            continue
        if not isinstance(rec, dict):
            bad_lines.append((lineno, f"line {lineno}: not a JSON object (not a JSON object)"))
            continue
        records.append({"_line": lineno, **rec})
    # dtype=object: pandas' default string dtype cannot hold the lone surrogates.
    df = pd.DataFrame(records, dtype=object) if records else pd.DataFrame()
    if len(df.columns) == 0:  # every line broken (or none)
        df = pd.DataFrame({"sent_id": [], "text_zh": []})
    return df, bad_lines


def _read_table(uri: str, fmt: str, data: bytes) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """The table as a frame, plus the JSONL lines that could not be read: (line number, reason)."""
    try:
        if fmt == "csv":
            # latin-1 maps every byte to one character, losslessly: the raw bytes of each value are
            # recovered below and decoded strictly per row, so a bad byte is blamed on its sent_id.
            df = pd.read_csv(io.BytesIO(data), dtype=object, keep_default_na=False,
                             encoding="latin-1")
            return df.map(lambda v: v.encode("latin-1") if isinstance(v, str) else v), []
        if fmt == "jsonl":
            return _read_jsonl(data)
        return parquet_table(data).to_pandas(), []
    except (ValueError, pa.ArrowInvalid, pd.errors.ParserError) as exc:
        raise ReferImportError(f"{uri}: cannot read the {fmt} translation table ({exc})") from None


def read_translations(uri: str, quarantine: Quarantine) -> tuple[dict[int, object], dict]:
    """Read the translation table. Returns ({sent_id: raw text_zh}, info) where info holds
    ``rows`` (all rows read), ``bad_rows`` (unreadable rows or sent_ids) and ``duplicate_ids``."""
    uri = str(uri)
    fmt = _format(uri)
    data = storage.read_bytes(uri)
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark (spreadsheet exports)
        data = data[3:]
    df, bad_lines = _read_table(uri, fmt, data)
    missing = [c for c in ("sent_id", "text_zh") if c not in df.columns]
    if missing:
        raise ReferImportError(
            f"{uri}: translation table lacks column(s) {', '.join(missing)} "
            f"(has {', '.join(map(str, df.columns)) or 'none'})"
        )
    for lineno, reason in bad_lines:
        quarantine.add("translation", f"line {lineno}", [Problem("bad_row", reason)])

    by_id: dict[int, list] = defaultdict(list)
    bad_id = len(bad_lines)
    for i, rec in enumerate(df.to_dict("records")):
        where = f"line {rec['_line']}" if "_line" in rec else f"row {i}"
        try:
            sid = as_id(rec["sent_id"], "sent_id")
        except ValueError as exc:
            quarantine.add("translation", where, [Problem("bad_sent_id", f"{where}: {exc}")])
            bad_id += 1
            continue
        by_id[sid].append(rec["text_zh"])
    table: dict[int, object] = {}
    duplicates = []
    for sid, texts in by_id.items():
        if len(texts) > 1:
            duplicates.append(sid)
            for _ in texts:
                quarantine.add("translation", sid, [Problem(
                    "duplicate_sent_id", f"sent_id {sid}: {len(texts)} rows in the translation table"
                )])
        else:
            table[sid] = texts[0]
    info = {"rows": len(df) + len(bad_lines), "bad_rows": bad_id, "duplicate_ids": sorted(duplicates)}
    return table, info


def quarantine_unmatched(table: dict[int, object], sent_ids: set[int], quarantine: Quarantine,
                         refs_uri: str) -> list[int]:
    """Quarantine the translations whose sent_id names no expression; returns their ids."""
    unmatched = sorted(set(table) - sent_ids)
    for sid in unmatched:
        quarantine.add("translation", sid, [Problem(
            "unmatched_translation", f"sent_id {sid}: no expression with this id in {refs_uri}"
        )])
    return unmatched
