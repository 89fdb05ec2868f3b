"""The results table, shaped like the paper's Tables 2 and 3: one row per (dataset, language), one
column group per split, each cell the overall IoU without and with DenseCRF (in percent, as the
paper prints them).

The evaluate step writes its one row as ``results.json`` (:func:`results_row`) and shows the table
in ``report.html`` (:func:`table_html`); the pipeline's results step merges the rows of every
language (:func:`merge_rows`) into one JSON document and one self-contained HTML page
(:func:`page_html`). Schema in docs/evaluation.md, "The results table".
"""

from __future__ import annotations

import html
from typing import Any

from components.evaluation.splits import order_splits

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px;
color:#222}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;
padding:4px 10px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
td.gate,th.gate{background:#eef5ff}.muted{color:#777;font-size:12px}
"""


def split_cell(metrics: dict[str, float], split: str, n_samples: int) -> dict[str, Any]:
    """One split's cell: n_samples, overall_iou, overall_iou_crf (None without CRF)."""
    return {"n_samples": int(n_samples), "overall_iou": metrics.get(f"{split}_overall_iou"),
            "overall_iou_crf": metrics.get(f"{split}_overall_iou_crf")}


def results_row(*, dataset: str, lang: str, metrics: dict[str, float],
                n_samples: dict[str, int], gate_split: str, select_split: str | None
                ) -> dict[str, Any]:
    """The evaluate step's row: per split (in evaluation order) and for the pooled gate."""
    splits = list(n_samples)
    row: dict[str, Any] = {
        "dataset": dataset, "lang": lang, "select_split": select_split,
        "gate_split": gate_split or None,
        "splits": {s: split_cell(metrics, s, n_samples[s]) for s in splits},
    }
    if gate_split:
        gate_n = sum(n_samples[s] for s in gate_split.split("+"))
        row["gate"] = split_cell(metrics, "gate", gate_n)
    return row


def merge_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of several evaluations -> ``{"schema_version", "splits", "rows"}``, rows sorted by
    (dataset, language), ``splits`` the union of their splits in table order."""
    ordered = sorted(rows, key=lambda r: (str(r.get("dataset")), str(r.get("lang"))))
    splits = order_splits(s for r in ordered for s in r.get("splits", {}))
    return {"schema_version": SCHEMA_VERSION, "splits": splits, "rows": ordered}


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100.0 * float(v):.2f}"


def table_html(doc: dict[str, Any]) -> str:
    """The table of a :func:`merge_rows` document (splits as column groups, each with the overall
    IoU and the same after DenseCRF; the gate's splits shaded)."""
    splits = doc["splits"]
    head1 = ("<tr><th class=l rowspan=2>dataset</th><th class=l rowspan=2>language</th>"
             + "".join(f"<th colspan=2>{html.escape(s)}</th>" for s in splits)
             + "<th class=l rowspan=2>selected on</th><th class=l rowspan=2>gate</th></tr>")
    head2 = "<tr>" + "<th>IoU</th><th>+CRF</th>" * len(splits) + "</tr>"
    body = []
    for r in doc["rows"]:
        gate = set((r.get("gate_split") or "").split("+"))
        cells = [f"<td class=l>{html.escape(str(r.get('dataset')))}</td>",
                 f"<td class=l>{html.escape(str(r.get('lang')))}</td>"]
        for s in splits:
            c = r.get("splits", {}).get(s) or {}
            cls = ' class="gate"' if s in gate else ""
            sid = html.escape(f"{r.get('dataset')}-{r.get('lang')}-{s}")
            cells.append(f'<td{cls} id="{sid}-iou">{_pct(c.get("overall_iou"))}</td>'
                         f'<td{cls} id="{sid}-crf">{_pct(c.get("overall_iou_crf"))}</td>')
        cells.append(f"<td class=l>{html.escape(str(r.get('select_split') or '-'))}</td>")
        cells.append(f"<td class=l>{html.escape(str(r.get('gate_split') or '-'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = ("<p class=muted>Overall IoU (%) per split, without and with DenseCRF. Shaded: the "
            "splits pooled into the promotion gate; the best checkpoint was selected on the "
            "split named under \"selected on\".</p>")
    return f'<table id="results">{head1}{head2}{"".join(body)}</table>{note}'


def page_html(doc: dict[str, Any], title: str = "refseg results") -> str:
    """A self-contained HTML page holding :func:`table_html` (no script, no external file)."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", table_html(doc), "</body></html>"])
