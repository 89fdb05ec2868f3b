"""Several splits' predictions as one: the gate's pooled metrics (overall IoU = sum of the pooled
intersections / sum of the pooled unions; mean IoU and P@X over the pooled samples), the sanity
row and the DenseCRF summary over everything evaluated, and the per-sample table with its
``split`` column."""

from __future__ import annotations

from components.evaluation.evaluator import Predictions
from components.evaluation.metrics import summarize

GATE_PREFIX = "gate_"


def pool(preds: list[Predictions]) -> Predictions:
    """One :class:`Predictions` holding the rows of ``preds`` in order (shuffled rows re-indexed,
    sanity counts and CRF seconds summed; dataset positions are per split and not kept)."""
    out = Predictions()
    for p in preds:
        offset = len(out.rows)
        out.rows.extend(p.rows)
        out.shuffled.update({offset + r: c for r, c in p.shuffled.items()})
        for k, v in p.sanity_counts.items():
            out.sanity_counts[k] = out.sanity_counts.get(k, 0) + v
        out.crf_seconds.extend(p.crf_seconds)
    return out


def gate_metrics(preds: dict[str, Predictions], gate: list[str], crf: bool) -> dict[str, float]:
    """``gate_overall_iou`` ... (and with CRF ``gate_overall_iou_crf`` ...) over the pooled
    samples of the ``gate`` splits; {} when there is no gate."""
    if not gate:
        return {}
    pooled = pool([preds[s] for s in gate])
    out = summarize(*pooled.counts(), prefix=GATE_PREFIX)
    if crf:
        out.update(summarize(*pooled.counts(crf=True), prefix=GATE_PREFIX, suffix="_crf"))
    return out


def per_sample_table(preds: dict[str, Predictions], with_crf: bool):
    """The per-sample tables of every split, one after the other, with a ``split`` column after
    ``sample_id``."""
    import pandas as pd

    from components.evaluation.outputs import per_sample_frame

    frames = []
    for split, p in preds.items():
        df = per_sample_frame(p, with_crf=with_crf)
        df.insert(1, "split", [split] * len(df))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
