"""The promotion rules, as pure functions over the tags of model versions (no MLflow).

Every version created by ``refseg register`` carries its gate value, margin and floor as tags,
written in the same transaction that creates the version:
- gate metric (default ``gate_overall_iou_crf``: the evaluation's pooled gate split, never the
  selection split) missing -> :class:`InputError` (run ``refseg evaluate`` first). ``*_crf``
  falls back to the plain metric when the run has no CRF metric (CRF was off). The version's
  tags ``refseg.gate_split`` and ``refseg.select_split`` say which split gated and which
  selected.
- gate metric NaN/inf -> refused: nothing is registered (the step's story).
- any other metric NaN -> registered, never champion: ``challenger`` with the reason.
- no champion yet: the version becomes champion when its gate value >= ``floor``.
- else: champion moves when gate > champion's value of the same metric + ``margin``; a champion
  without that metric (registered before, under another gate) is compared on its own gate.
- a version tagged ``refseg.excluded`` (set by an operator, e.g. to roll back) is skipped.

The champion is a pure function of the registry's versions: :func:`decide` folds over eligible
versions in version order (what sequential registrations would give);
:func:`components.registry.store.converge` moves the alias onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from components.errors import InputError

CHAMPION = "champion"
T_RUN = "refseg.run_id"
T_GATE_METRIC = "refseg.gate_metric"
T_GATE_VALUE = "refseg.gate_value"
T_MARGIN = "refseg.margin"
T_FLOOR = "refseg.floor"
T_GATE_SPLIT = "refseg.gate_split"  # the split(s) the gate metric was measured on
T_SELECT_SPLIT = "refseg.select_split"  # the split best.pt was selected on
GATE_PREFIX = "gate_"
_METRIC_STEMS = ("_overall_iou", "_mean_iou", "_prec_")
T_ELIGIBLE = "refseg.eligible"
T_INELIGIBLE = "refseg.ineligible_reason"
T_EXCLUDED = "refseg.excluded"
T_STATUS = "refseg.status"  # promoted | challenger (decision when the version arrived)
T_CHALLENGER = "challenger"
T_REASON = "reason"
METRIC_TAG = "metric."
# Tags on the training run
T_RUN_STATUS = "refseg.registry.status"  # promoted | challenger | refused
T_RUN_REASON = "refseg.registry.reason"
T_RUN_VERSION = "refseg.registry.version"  # <name>/<version>


@dataclass
class VersionInfo:
    version: int
    gate_metric: str
    gate_value: float
    margin: float
    floor: float
    eligible: bool
    ineligible_reason: str
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_tags(cls, version: int | str, tags: dict[str, str]) -> VersionInfo | None:
        """None for versions not created by this module (or excluded by an operator)."""
        if T_GATE_VALUE not in tags or T_GATE_METRIC not in tags:
            return None
        if tags.get(T_EXCLUDED, "").lower() in ("1", "true", "yes"):
            return None
        metrics = {k[len(METRIC_TAG):]: _float(v) for k, v in tags.items()
                   if k.startswith(METRIC_TAG)}
        return cls(version=int(version), gate_metric=tags[T_GATE_METRIC],
                   gate_value=_float(tags[T_GATE_VALUE]), margin=_float(tags.get(T_MARGIN, "0")),
                   floor=_float(tags.get(T_FLOOR, "0")),
                   eligible=tags.get(T_ELIGIBLE, "false") == "true",
                   ineligible_reason=tags.get(T_INELIGIBLE, ""), metrics=metrics)

    def value_of(self, metric: str) -> tuple[float, str]:
        """This version's value for ``metric`` (falling back to its own gate metric)."""
        if metric in self.metrics:
            return self.metrics[metric], metric
        return self.gate_value, self.gate_metric


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def decide(versions: list[VersionInfo]) -> tuple[int | None, dict[int, tuple[str, str]]]:
    """Fold over versions in version order. Returns (champion version or None,
    {version: (status, reason)}) with status ``promoted`` or ``challenger``. A version's decision
    depends only on itself and the versions before it, so it never changes afterwards."""
    champ: VersionInfo | None = None
    decisions: dict[int, tuple[str, str]] = {}
    for v in sorted(versions, key=lambda v: v.version):
        if not v.eligible:
            decisions[v.version] = ("challenger", v.ineligible_reason or "not eligible")
            continue
        if champ is None:
            if v.gate_value >= v.floor:
                decisions[v.version] = ("promoted", f"first model: {v.gate_metric} "
                                        f"{_fmt(v.gate_value)} >= floor {_fmt(v.floor)}")
                champ = v
            else:
                decisions[v.version] = ("challenger", f"no champion yet and {v.gate_metric} "
                                        f"{_fmt(v.gate_value)} < floor {_fmt(v.floor)}")
            continue
        ref, ref_metric = champ.value_of(v.gate_metric)
        if not math.isfinite(ref) or v.gate_value > ref + v.margin:
            decisions[v.version] = ("promoted", f"{v.gate_metric} {_fmt(v.gate_value)} beats "
                                    f"champion v{champ.version}'s {ref_metric} {_fmt(ref)} "
                                    f"by more than margin {_fmt(v.margin)}")
            champ = v
        else:
            decisions[v.version] = ("challenger", f"{v.gate_metric} {_fmt(v.gate_value)} does "
                                    f"not beat champion v{champ.version}'s {ref_metric} "
                                    f"{_fmt(ref)} by more than margin {_fmt(v.margin)}")
    return (champ.version if champ else None), decisions


def pick_gate(metrics: dict[str, float], gate_metric: str, run_id: str) -> str:
    """The metric that gates promotion: ``gate_metric``, or its non-CRF form when CRF was off."""
    if gate_metric in metrics:
        return gate_metric
    if gate_metric.endswith("_crf") and gate_metric[: -len("_crf")] in metrics:
        return gate_metric[: -len("_crf")]
    known = ", ".join(sorted(metrics)) or "none"
    raise InputError(f"run {run_id} has no metric {gate_metric!r} (nor its non-CRF form); run "
                     f"`refseg evaluate --run-id {run_id}` first. Metrics present: {known}")


def gate_split_of(metric: str, run_tags: dict[str, str]) -> str:
    """The split(s) a gate metric was measured on: the evaluation's ``refseg.gate_split`` tag for
    a ``gate_*`` metric, the metric's prefix otherwise (``val_overall_iou_crf`` -> ``val``);
    "" when unknown."""
    if metric.startswith(GATE_PREFIX):
        return run_tags.get(T_GATE_SPLIT, "")
    for stem in _METRIC_STEMS:
        if stem in metric:
            return metric[: metric.index(stem)]
    return ""


def version_tags(run_id: str, gate: str, gate_value: float, margin: float, floor: float,
                 metrics: dict[str, float], provenance: dict[str, str]) -> dict[str, str]:
    """The tags a new version is created with: the promotion inputs (gate, margin, floor,
    eligibility, every metric as ``metric.<name>``) after ``provenance`` (lang, dataset
    fingerprint, git commit, pipeline run, config)."""
    nan_metrics = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
    tags = {
        T_RUN: run_id,
        T_GATE_METRIC: gate,
        T_GATE_VALUE: repr(gate_value),
        T_MARGIN: repr(float(margin)),
        T_FLOOR: repr(float(floor)),
        T_ELIGIBLE: "false" if nan_metrics else "true",
        **provenance,
    }
    if nan_metrics:
        tags[T_INELIGIBLE] = f"metric(s) not finite: {', '.join(nan_metrics)}"
    tags.update({f"{METRIC_TAG}{k}": repr(float(v)) for k, v in sorted(metrics.items())})
    return tags


def decision_tags(status: str, reason: str) -> dict[str, str]:
    """The tags recording a version's decision (``challenger=true`` on challengers)."""
    tags = {T_STATUS: status, T_REASON: reason}
    if status == "challenger":
        tags[T_CHALLENGER] = "true"
    return tags
