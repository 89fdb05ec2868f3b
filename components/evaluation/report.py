"""Self-contained HTML report of an evaluation: the results table, a metric table per split and
for the pooled gate, IoU histogram, best and worst examples as overlays, and the LA attention maps P^ of each level (the paper's Figure 8).

Figures are rendered with matplotlib's Agg canvas (no pyplot, no display) and embedded as base64
PNG ``data:`` URIs, so the file can be mailed or logged to MLflow as one artifact. Expressions are
written in the HTML (``lang="zh"``/``"en"``), not inside the figures: the browser picks a CJK font,
and the figures need none (figure text is ASCII only).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from typing import Any

import numpy as np

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",
"WenQuanYi Zen Hei","Microsoft YaHei",sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
.ok{background:#e9f7ec;border:1px solid #7bc48a;padding:8px 12px}
.warn{background:#fdecea;border:1px solid #e57373;padding:8px 12px;font-weight:600}
figure{margin:10px 0 22px 0}figcaption{font-size:14px;margin-top:4px}
.expr{font-size:16px;font-weight:600}.muted{color:#777;font-size:12px}
img{max-width:100%;height:auto}
"""

_LABELS = [("overall_iou", "overall IoU"), ("mean_iou", "mean IoU"), ("prec_50", "P@0.5"),
           ("prec_60", "P@0.6"), ("prec_70", "P@0.7"), ("prec_80", "P@0.8"),
           ("prec_90", "P@0.9")]


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def histogram_figure(per_sample) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.2), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0, 1, 21)
    ax.hist(per_sample["iou"].to_numpy(dtype=float), bins=bins, alpha=0.6, label="no CRF",
            color="#1f77b4")
    if "iou_crf" in per_sample and per_sample["iou_crf"].notna().any():
        ax.hist(per_sample["iou_crf"].dropna().to_numpy(dtype=float), bins=bins, alpha=0.5,
                label="DenseCRF", color="#2ca02c")
    if "iou_shuffled" in per_sample and per_sample["iou_shuffled"].notna().any():
        ax.hist(per_sample["iou_shuffled"].dropna().to_numpy(dtype=float), bins=bins,
                histtype="step", lw=2, label="shuffled expressions", color="#d62728")
    ax.set_xlabel("IoU per sample")
    ax.set_ylabel("samples")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", fontsize=8)
    ax.set_title("IoU distribution")
    return _png(fig)


def _spotlight(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask at full brightness, the rest dimmed: readable whatever the object's colour."""
    out = image.astype(np.float32).copy()
    m = np.asarray(mask, dtype=bool)
    out[~m] = 0.3 * out[~m] + 0.7 * 20.0
    return out.clip(0, 255).astype(np.uint8)


def example_figure(ex: dict[str, Any]) -> str:
    """One row: image | ground truth | prediction | DenseCRF | P^ per level."""
    from matplotlib.figure import Figure

    image = ex["image"]
    h, w = image.shape[:2]
    gt = np.asarray(ex["gt"], dtype=bool)
    # (title, picture, mask drawn as a contour, attention map)
    panels: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]] = [
        ("image", image, None, None),
        ("ground truth", _spotlight(image, gt), gt, None),
        (f"prediction IoU {ex['iou']:.2f}", _spotlight(image, ex["pred"]), gt, None),
    ]
    if ex.get("pred_crf") is not None:
        panels.append((f"DenseCRF IoU {ex['iou_crf']:.2f}", _spotlight(image, ex["pred_crf"]),
                       gt, None))
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    for name, att in zip(ex.get("levels", []), ex.get("attention", []), strict=False):
        panels.append((f"LA P^ {name}", grey, None, np.asarray(att, dtype=np.float32)))
    n = len(panels)
    fig = Figure(figsize=(2.1 * n, 2.3), dpi=80)
    for i, (title, im, contour, att) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(im, extent=(0, w, h, 0))
        if contour is not None and contour.any() and not contour.all():
            ax.contour(np.arange(w) + 0.5, np.arange(h) + 0.5, contour.astype(np.float32),
                       levels=[0.5], colors=["#00ff66"], linewidths=1.0)
        if att is not None:
            a = att / max(float(att.max()), 1e-12)
            ax.imshow(a, extent=(0, w, h, 0), cmap="jet", alpha=0.55, vmin=0, vmax=1,
                      interpolation="bilinear")
        ax.set_title(title, fontsize=8)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(wspace=0.04, left=0.01, right=0.99, top=0.88, bottom=0.01)
    return _png(fig)


def _metric_table(m: dict[str, float], split: str) -> str:
    """The metrics of one split (or of the pooled gate, ``split`` = "gate")."""
    has_crf = f"{split}_overall_iou_crf" in m
    head = "<tr><th class=l>metric</th><th>no CRF</th>" + (
        "<th>DenseCRF</th><th>CRF gain</th>" if has_crf else "") + "<th class=l>name</th></tr>"
    rows = []
    for key, label in _LABELS:
        base = m.get(f"{split}_{key}")
        cells = f"<td class=l>{label}</td><td>{_fmt(base)}</td>"
        if has_crf:
            c = m.get(f"{split}_{key}_crf")
            gain = None if base is None or c is None else c - base
            cells += f"<td>{_fmt(c)}</td><td>{'-' if gain is None else f'{gain:+.4f}'}</td>"
        cells += f"<td class=l><code>{split}_{key}</code></td>"
        rows.append(f"<tr>{cells}</tr>")
    shuf = m.get(f"{split}_overall_iou_shuffled")
    if shuf is not None:
        cells = f"<td class=l>overall IoU, shuffled expressions</td><td>{_fmt(shuf)}</td>"
        if has_crf:
            cells += "<td>-</td><td>-</td>"
        cells += f"<td class=l><code>{split}_overall_iou_shuffled</code></td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _metric_sections(doc: dict[str, Any]) -> list[str]:
    """The results table (when the document has its row), then one metric table per split and
    one for the pooled gate."""
    from components.evaluation.results import merge_rows, table_html

    parts = []
    if doc.get("results"):
        parts += ["<h2>Results table</h2>", table_html(merge_rows([doc["results"]]))]
    splits = doc.get("splits") or [doc["split"]]
    for split in splits:
        title = f"Metrics: <code>{html.escape(split)}</code>"
        if split == doc.get("select_split"):
            title += " (the selection split: optimistic)"
        parts += [f"<h2>{title}</h2>", _metric_table(doc["metrics"], split)]
    if doc.get("gate_split"):
        parts += [f"<h2>Metrics: gate <code>{html.escape(doc['gate_split'])}</code>, pooled</h2>",
                  _metric_table(doc["metrics"], "gate")]
    return parts


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td class=l>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def render_report(doc: dict[str, Any], per_sample, examples: list[dict[str, Any]]) -> str:
    lang = doc.get("lang") or "en"
    split = "+".join(doc.get("splits") or [doc["split"]])
    sanity = doc.get("sanity", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>refseg evaluation: {html.escape(split)} / {html.escape(lang)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Referring segmentation evaluation: split(s) <code>{html.escape(split)}</code>, "
        f"language <code>{html.escape(lang)}</code></h1>",
        f"<p>{doc['n_samples']} expressions on {doc.get('n_images', '?')} images. Checkpoint "
        f"<code>{html.escape(str(doc.get('checkpoint')))}</code>, data "
        f"<code>{html.escape(str(doc.get('data_dir')))}</code>, device "
        f"<code>{html.escape(str(doc.get('device')))}</code>. "
        f"<span class=muted>Generated {_dt.datetime.now().isoformat(timespec='seconds')}."
        f"</span></p>",
    ]
    if sanity.get("message"):
        cls = "warn" if sanity.get("uses_language") is False else "ok"
        parts.append(f'<p class="{cls}" id="sanity">{html.escape(sanity["message"])}</p>')
    parts += [
        "<p class=muted>Overall IoU = sum of intersections / sum of unions over the split; mean IoU "
        "= mean of per-sample IoUs; P@X = share of samples with IoU &gt; X. Masks at the original "
        "image resolution, threshold 0.5. The gate pools its splits' samples.</p>",
        *_metric_sections(doc),
        "<h2>IoU distribution (every evaluated split)</h2>",
        _img_tag(histogram_figure(per_sample), "IoU histogram"),
    ]
    crf = doc.get("crf", {})
    if crf.get("enabled"):
        info = {k: crf.get(k) for k in ("mode", "workers", "seconds_per_image",
                                        "seconds_per_sample", "share_of_eval_time")}
        info.update({f"param {k}": v for k, v in crf.get("params", {}).items()})
        parts += ["<h2>DenseCRF</h2>", _kv_table(info)]
    for kind, title in (("best", "Best examples"), ("worst", "Worst examples")):
        exs = [e for e in examples if e.get("kind") == kind]
        if not exs:
            continue
        parts.append(f"<h2>{title}</h2>")
        parts.append("<p class=muted>image | ground truth | prediction | DenseCRF (each mask "
                     "bright, the rest dimmed, the ground-truth outline in green) | LA attention "
                     "P^ per level (Figure 8 of the paper; red = high).</p>")
        for e in exs:
            lang_attr = "zh" if lang == "zh" else "en"
            cap = (f'<span class="expr" lang="{lang_attr}">{html.escape(e.get("text", ""))}</span>'
                   f'<br><span class=muted>{html.escape(e["sample_id"])}'
                   + (f' ({html.escape(e["split"])})' if e.get("split") else "")
                   + f' &middot; IoU '
                   f'{e["iou"]:.4f}' + (f' &middot; with CRF {e["iou_crf"]:.4f}'
                                        if e.get("iou_crf") is not None else "")
                   + "</span>")
            parts.append(f'<figure class="example">{_img_tag(example_figure(e), e["sample_id"])}'
                         f"<figcaption>{cap}</figcaption></figure>")
    parts += ["<h2>Timings (seconds)</h2>", _kv_table(doc.get("timings", {}))]
    if sanity:
        parts += ["<h2>Sanity check details</h2>",
                  _kv_table({k: v for k, v in sanity.items() if k != "message"})]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str, doc: dict[str, Any], per_sample, examples: list[dict[str, Any]]
                 ) -> str:
    text = render_report(doc, per_sample, examples)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
