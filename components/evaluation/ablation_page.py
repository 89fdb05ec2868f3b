"""The ablation table as one self-contained HTML page, shaped like the paper's Table 4: a row per
ablation row, its modules as check marks (MUTAN, LE, LA, CLAF, ConvLSTM, levels), then P@0.5 ...
P@0.9 and Overall IoU (%) without and with DenseCRF, mean over the seeds with the standard
deviation; below it an inline SVG bar chart of overall IoU per row (mean, min-max whisker).
No script and no external file. Cells carry ids ``<row>-<metric>`` (``row4_le_la-overall_iou``).
"""

from __future__ import annotations

import html
import os
from typing import Any

from components.evaluation.ablation_table import METRICS

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px;
color:#222}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
td.m{text-align:center}.sd{color:#777;font-size:11px}.muted{color:#777;font-size:12px}
"""
MODULE_COLUMNS = (("mutan", "MUTAN"), ("le", "LE"), ("la", "LA"), ("claf", "CLAF"),
                  ("convlstm", "ConvLSTM"))
_HEAD = {"overall_iou": "IoU", **{m: f"P@0.{m[-2]}" for m in METRICS if m.startswith("prec_")}}
# the paper's column order: P@0.5 ... P@0.9, then overall IoU
_ORDER = (*[m for m in METRICS if m != "overall_iou"], "overall_iou")


def _cell(row: dict[str, Any], metric: str) -> str:
    s = row["metrics"].get(metric)
    if s is None:
        return "<td>-</td>"
    sd = "" if s["std"] is None else f' <span class="sd">±{100 * s["std"]:.2f}</span>'
    return (f'<td id="{html.escape(row["row"])}-{metric}" title="min {100 * s["min"]:.2f}, '
            f'max {100 * s["max"]:.2f}, {s["n"]} seed(s)">{100 * s["mean"]:.2f}{sd}</td>')


def table_html(doc: dict[str, Any]) -> str:
    """The table (modules, then the metric groups: without DenseCRF, and with it when run)."""
    groups = [("", "without DenseCRF")] + ([("_crf", "with DenseCRF")] if doc["crf"] else [])
    n = len(_ORDER)
    head1 = ("<tr><th class=l rowspan=2>#</th><th class=l rowspan=2>row</th>"
             + "".join(f"<th rowspan=2>{label}</th>" for _, label in MODULE_COLUMNS)
             + "<th rowspan=2>levels</th><th rowspan=2>seeds</th>"
             + "".join(f"<th colspan={n}>{label}</th>" for _, label in groups) + "</tr>")
    head2 = "<tr>" + "".join(f"<th>{_HEAD[m]}</th>" for _ in groups for m in _ORDER) + "</tr>"
    body = []
    for row in doc["rows"]:
        mods = row["modules"]
        cells = [f"<td class=l>{row['number']}</td>",
                 f"<td class=l>{html.escape(row['row'])}</td>"]
        cells += [f"<td class=m>{'✓' if mods.get(key) else ''}</td>" for key, _ in MODULE_COLUMNS]
        cells.append(f"<td class=l>{html.escape('+'.join(mods.get('levels', [])))}</td>")
        cells.append(f"<td>{row['n_seeds']}</td>")
        cells += [_cell(row, m + suffix) for suffix, _ in groups for m in _ORDER]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="ablation">{head1}{head2}{"".join(body)}</table>'


def bar_chart_svg(doc: dict[str, Any], width: int = 720) -> str:
    """Overall IoU (%) per row: a bar for the mean (and one for DenseCRF when run), a whisker
    from the min to the max over the seeds."""
    rows = doc["rows"]
    series = [("overall_iou", "#4a78b5")] + ([("overall_iou_crf", "#e08a3c")] if doc["crf"] else [])
    left, top, plot_h, slot = 40, 20, 220, (width - 60) / max(1, len(rows))
    bar_w = max(2.0, slot * 0.8 / len(series))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="ablation-chart" width="{width}" '
             f'height="{top + plot_h + 50}" role="img" aria-label="overall IoU per row">']
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 4}" y="{y + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{pct}</text>')
    for i, row in enumerate(rows):
        x0 = left + i * slot + slot * 0.1
        for j, (metric, colour) in enumerate(series):
            s = row["metrics"][metric]
            x, h = x0 + j * bar_w, plot_h * s["mean"]
            parts.append(f'<rect class="bar" data-row="{html.escape(row["row"])}" '
                         f'data-metric="{metric}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
                         f'width="{bar_w - 1:.1f}" height="{h:.1f}" fill="{colour}">'
                         f'<title>{html.escape(row["row"])} {metric} '
                         f'{100 * s["mean"]:.2f}</title></rect>')
            if s["n"] > 1:
                cx = x + (bar_w - 1) / 2
                parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" '
                             f'y1="{top + plot_h * (1 - s["max"]):.1f}" '
                             f'y2="{top + plot_h * (1 - s["min"]):.1f}" stroke="#222"/>')
        parts.append(f'<text x="{x0 + slot * 0.4:.1f}" y="{top + plot_h + 14}" font-size="11" '
                     f'text-anchor="middle">{row["number"]}</text>')
    legend = " · ".join(f'<tspan fill="{c}">■</tspan> {m}' for m, c in series)
    parts.append(f'<text x="{left}" y="{top + plot_h + 36}" font-size="11">row; {legend}</text>')
    return "".join(parts) + "</svg>"


def page_html(doc: dict[str, Any]) -> str:
    """The whole page: title, what was run, the table, the chart."""
    seeds = sorted({s for r in doc["rows"] for s in r["seeds"]})
    preset = os.path.basename(str(doc.get("preset", "?")))  # a YAML file: its name
    title = f"Table 4 ablation ({doc.get('lang', '?')}, {preset})"
    note = (f"<p class=muted>{html.escape(str(doc.get('split')))} split"
            f" ({html.escape(str(doc.get('split_detail') or doc.get('split')))}); best.pt "
            f"selected on {html.escape(str(doc.get('select_split')))}; "
            f"{html.escape(str(doc.get('steps')))} steps; seeds "
            f"{', '.join(map(str, seeds))}. Mean over the seeds (%), ± sample standard "
            "deviation; hover a cell for min and max.</p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", note, table_html(doc),
        "<h2>Overall IoU per row</h2>", bar_chart_svg(doc), "</body></html>"])
