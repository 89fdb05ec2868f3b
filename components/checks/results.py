"""What the checks found, as the step writes it.

:class:`Outcome` turns the per-row reasons of :func:`components.checks.compute.compute_checks` into
the failing rows, the frame validated by Great Expectations and the per-reason counts;
:func:`write_tables` writes the two tables of the output folder:

    clean.parquet       rows that pass every check (components.data.manifest.write_manifest)
    quarantine.parquet  rows that fail: all input columns + ``row`` (position in the input) and
                        ``checks`` and ``reasons`` (lists of strings ``"<check>: <reason>"``)

and :func:`summary` the content of ``summary.json``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.checks.compute import CHECKS
from components.checks.expectations import SUITE
from components.checks.gate import Gate
from components.data import manifest as mf
from components.data import storage

CLEAN, QUARANTINE, SUMMARY = "clean.parquet", "quarantine.parquet", "summary.json"


@dataclass
class Outcome:
    """Per-row results: ``failed[check]`` (bool per row), the failing rows' checks and reasons."""

    reasons: pd.DataFrame
    failed: dict[str, np.ndarray]
    bad_idx: np.ndarray
    clean_idx: np.ndarray
    row_checks: list[list[str]]
    row_reasons: list[list[str]]

    @classmethod
    def of(cls, reasons: pd.DataFrame) -> Outcome:
        failed = {c: np.array([bool(r) for r in reasons[c]], dtype=bool) for c in CHECKS}
        any_fail = np.zeros(len(reasons), dtype=bool)
        for c in CHECKS:
            any_fail |= failed[c]
        bad_idx = np.flatnonzero(any_fail)
        return cls(reasons, failed, bad_idx, np.flatnonzero(~any_fail),
                   [[c for c in CHECKS if failed[c][i]] for i in bad_idx],
                   [[f"{c}: {r}" for c in CHECKS for r in reasons[c].iat[i]] for i in bad_idx])

    def messages(self, sample_ids: pd.Series) -> pd.DataFrame:
        """The frame Great Expectations validates: ``sample_id`` and one column per check, None
        for a passing row and ``"<sample_id>: <reasons>"`` for a failing one."""
        ids = [str(v) if v is not None else f"<row {i}>" for i, v in enumerate(sample_ids)]
        out = pd.DataFrame({"sample_id": sample_ids.astype(object)})
        for c in CHECKS:
            out[c] = [f"{ids[i]}: {'; '.join(r)}" if r else None
                      for i, r in enumerate(self.reasons[c])]
        return out

    def kinds(self) -> Counter:
        """Failing reasons counted by ``check/kind`` (``meaning/contradiction``)."""
        return Counter(_kind(r) for rs in self.row_reasons for r in rs)


def _kind(reason: str) -> str:
    """``"meaning: contradiction: en says ..."`` -> ``"meaning/contradiction"``."""
    check, _, rest = reason.partition(": ")
    return f"{check}/{rest.split(':', 1)[0].strip()}"


def write_tables(table, df: pd.DataFrame, outcome: Outcome, out_dir: str) -> None:
    """clean.parquet (the passing rows of ``df``) and quarantine.parquet (the failing rows of the
    input ``table`` as read, with ``row``, ``checks`` and ``reasons``) in the local ``out_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    clean_df = df.iloc[outcome.clean_idx].reset_index(drop=True)
    mf.write_manifest(clean_df, os.path.join(out_dir, CLEAN))
    bad = pa.array(outcome.bad_idx, type=pa.int64())
    qt = table.take(bad)
    qt = qt.append_column("row", bad)
    qt = qt.append_column("checks", pa.array(outcome.row_checks, type=pa.list_(pa.string())))
    qt = qt.append_column("reasons", pa.array(outcome.row_reasons, type=pa.list_(pa.string())))
    pq.write_table(qt, os.path.join(out_dir, QUARANTINE), compression="zstd")


def final_path(path: str | None, local_out: str, final_out: str) -> str | None:
    """Where a file written under the staged ``local_out`` ends up under ``final_out``."""
    if path is None or not storage.is_s3(final_out):
        return path
    return storage.join(final_out, *Path(os.path.relpath(path, local_out)).parts)


def summary(manifest_uri: str, outcome: Outcome, messages: pd.DataFrame, gate: Gate, stats: dict,
            config: dict, gx_result: dict, local_out: str, final_out: str, timings: dict) -> dict:
    """The content of summary.json: counts (rows_in = rows_clean + rows_quarantined), counts per
    check and reason, the length band, the images checked and refused, the gate, the configuration, Great Expectations' results,
    the report's path, the outputs and the timings."""
    n = gate.rows
    out = {
        "manifest": manifest_uri,
        "rows_in": n,
        "rows_clean": int(len(outcome.clean_idx)),
        "rows_quarantined": int(len(outcome.bad_idx)),
        "fail_rate": round(gate.fail_rate, 6),
        "max_fail_rate": gate.max_fail_rate,
        "gate": "pass" if gate.passed else "fail",
        "per_check": {c: int(outcome.failed[c].sum()) for c in CHECKS},
        "per_reason": dict(outcome.kinds().most_common()),
        "examples": {c: [messages[c].iat[i] for i in np.flatnonzero(outcome.failed[c])[:3]]
                     for c in CHECKS},
        "length_band": stats["length_band"],
        "words": stats.get("words", {}),
        "images": stats.get("images", {}),
        "config": config,
        "great_expectations": {"suite": SUITE, "success": gx_result["success"],
                               "expectations": gx_result["expectations"]},
        "report": final_path(gx_result["report"], local_out, final_out),
        "validation_page": final_path(gx_result["validation_page"], local_out, final_out),
        "outputs": {k: storage.join(final_out, f) for k, f in
                    (("clean", CLEAN), ("quarantine", QUARANTINE), ("summary", SUMMARY))},
        "timings_s": timings,
    }
    assert out["rows_clean"] + out["rows_quarantined"] == n
    return out
