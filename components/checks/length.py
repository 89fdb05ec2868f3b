"""The length check: (Chinese jieba words + 1) / (English words + 1) lies in a band.

The band is configured (``--length-band LOW,HIGH``) or learned from the data as
median x/÷ exp(max(k MAD, log(min_factor))) of the log ratio, robust to the outliers it looks for.
Rows with an empty side are left to the completeness check.
"""

from __future__ import annotations

import math

import numpy as np

STATISTIC = "(zh jieba words + 1) / (en words + 1)"


def learn_band(logr: np.ndarray, mads: float, min_factor: float
               ) -> tuple[float, float, dict]:
    """The band around the median log ratio, half-width max(``mads`` x MAD, log(``min_factor``)):
    (low, high, how it was learned)."""
    med = float(np.median(logr))
    mad = 1.4826 * float(np.median(np.abs(logr - med)))
    half = max(mads * mad, math.log(min_factor))
    lo, hi = math.exp(med - half), math.exp(med + half)
    return lo, hi, {"source": "learned", "low": round(lo, 4), "high": round(hi, 4),
                    "median": round(math.exp(med), 4), "mad_log": round(mad, 4), "mads": mads,
                    "min_factor": min_factor}


def length_reasons(n_zh: np.ndarray, n_en: np.ndarray, band: tuple[float, float] | None,
                   mads: float, min_factor: float, out: list[list[str]]) -> dict:
    """Append the length reasons of every row to ``out``; return the statistics: ``length_band``
    (how the band was set, and its bounds) and ``words`` (mean counts) when any row has both."""
    both = (n_zh > 0) & (n_en > 0)
    ratio = (n_zh + 1) / (n_en + 1)
    if band is not None:
        lo, hi = (float(v) for v in band)
        info = {"source": "configured", "low": lo, "high": hi}
    else:
        logr = np.log(ratio[both]) if both.any() else np.zeros(1)
        lo, hi, info = learn_band(logr, mads, min_factor)
    info["statistic"] = STATISTIC
    stats: dict = {"length_band": info}
    if both.any():
        stats["words"] = {"zh_mean": round(float(n_zh[both].mean()), 3),
                          "en_mean": round(float(n_en[both].mean()), 3),
                          "zh_over_en_median": round(float(np.median(n_zh[both] / n_en[both])), 3)}
    for i in np.flatnonzero(both & ((ratio < lo) | (ratio > hi))):
        out[i].append(
            f"ratio out of band: ({int(n_zh[i])}+1)/({int(n_en[i])}+1) = {ratio[i]:.2f} not in "
            f"[{lo:.2f}, {hi:.2f}]")
    return stats
