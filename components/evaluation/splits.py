"""Which splits an evaluation covers, and which of them gate the promotion.

Selection and reporting apart: the trainer picks ``best.pt`` on its ``select_split`` (stored in the
checkpoint's extra), so a figure measured on that split is optimistic. The evaluate step therefore
covers every split of the data for the language (the paper reports every split, its Tables 2 and
3), and the registry's gate is measured on splits the selection did not see.

- Evaluated splits (default): every split with a shard for the language but ``train``, in the
  order val, testA, testB, test, then the others sorted (:func:`order_splits`).
- Gate split (default): every evaluated split but the selection split, pooled, written
  ``testA+testB`` (:func:`resolve_gate`). A gate that includes the selection split is refused
  unless explicitly allowed; a gate with nothing left is an error when every split was evaluated,
  and no gate (a warning) when the caller narrowed the splits to the selection split alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from components.data.names import check_split_name
from components.errors import ConfigError

ORDER = ("val", "testA", "testB", "test")
TRAIN = "train"
JOIN = "+"


def order_splits(splits: Iterable[str]) -> list[str]:
    """val, testA, testB, test first (those present), then the others sorted; no duplicates."""
    seen = list(dict.fromkeys(splits))
    return [s for s in ORDER if s in seen] + sorted(s for s in seen if s not in ORDER)


def parse_splits(value: str | Sequence[str] | None) -> list[str]:
    """``"val,testA"``, ``["val", "testA,testB"]`` or None -> a list of names (empty = all); a
    name that is not a valid split name (:mod:`components.data.names`) is a ConfigError."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    return [check_split_name(p) for p in dict.fromkeys(out)]


def evaluated_splits(requested: list[str], available: list[str]) -> list[str]:
    """The splits to evaluate: ``requested`` (checked against ``available``) or every available
    split but ``train``, in :func:`order_splits` order."""
    if requested:
        unknown = [s for s in requested if s not in available]
        if unknown:
            raise ConfigError(f"split {unknown[0]!r} has no expressions in the data (splits: "
                              f"{', '.join(available) if available else 'none'})")
        return order_splits(requested)
    chosen = order_splits(s for s in available if s != TRAIN)
    if not chosen:
        raise ConfigError("the data holds no split to evaluate besides train (splits: "
                          f"{', '.join(available) if available else 'none'}); pass --split")
    return chosen


def parse_gate(value: str | None) -> list[str]:
    """``"testA+testB"`` -> ["testA", "testB"]; None or "" -> [] (the default rule). A part that
    is not a valid split name is a ConfigError."""
    parts = dict.fromkeys(p.strip() for p in (value or "").split(JOIN) if p.strip())
    return [check_split_name(p, f"gate_split {value!r}: split") for p in parts]


def resolve_gate(gate_split: str | None, evaluated: list[str], select_split: str | None, *,
                 allow_select: bool, narrowed: bool, warn) -> list[str]:
    """The gate's splits (possibly empty: no gate). ``warn(message)`` reports what is allowed
    but suspect. See the module doc for the rules."""
    asked = parse_gate(gate_split)
    if asked:
        missing = [s for s in asked if s not in evaluated]
        if missing:
            raise ConfigError(f"gate_split {gate_split!r}: split {missing[0]!r} is not evaluated "
                              f"(evaluated: {', '.join(evaluated)})")
        if select_split in asked:
            if not allow_select:
                raise ConfigError(
                    f"gate_split {gate_split!r} includes the selection split {select_split!r} "
                    "(best.pt was chosen on it: an optimistic gate); pass another --gate-split, "
                    "or --allow-gate-on-select-split to accept it")
            warn(f"the gate includes the selection split {select_split!r}: its figures are "
                 "optimistic (best.pt was chosen on them)")
        return order_splits(asked)
    rest = [s for s in evaluated if s != select_split]
    if rest:
        return rest
    if narrowed:
        warn(f"no gate split: the only evaluated split is the selection split {select_split!r}; "
             "no gate_* metrics (evaluate another split, or pass --gate-split)")
        return []
    raise ConfigError(f"nothing is left for the gate: the data's only evaluated split is the "
                      f"selection split {select_split!r}; pass --gate-split (with "
                      "--allow-gate-on-select-split to gate on it anyway)")


def gate_name(splits: list[str]) -> str:
    """["testA", "testB"] -> "testA+testB" (the tag ``refseg.gate_split``)."""
    return JOIN.join(splits)
