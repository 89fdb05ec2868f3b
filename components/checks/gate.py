"""The gate of the check-translations step: stop the pipeline when too many rows fail.

When the share of failing rows exceeds ``max_fail_rate`` the step raises
:class:`TranslationGateError` (an ``InputError``, so a ``ValueError`` too) after writing every
output, so that the quarantine and the report can be read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from components.errors import InputError

DEFAULT_MAX_FAIL_RATE = 0.05


class TranslationGateError(InputError):
    """The share of failing rows is over the threshold (the outputs are written all the same)."""


@dataclass(frozen=True)
class Gate:
    """``failing`` of ``rows`` rows fail a check; the gate passes up to ``max_fail_rate``."""

    failing: int
    rows: int
    max_fail_rate: float

    @property
    def fail_rate(self) -> float:
        return self.failing / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.fail_rate <= self.max_fail_rate

    def enforce(self, kinds: Counter, where: str) -> None:
        """Raise :class:`TranslationGateError` naming the top reasons (``kinds``, counted by
        ``check/kind``) and the output folder ``where`` when the gate does not pass."""
        if self.passed:
            return
        top = ", ".join(f"{k} ({v})" for k, v in kinds.most_common(3))
        raise TranslationGateError(
            f"check-translations gate: {self.failing} of {self.rows} rows fail "
            f"({self.fail_rate:.2%}), over the threshold max_fail_rate={self.max_fail_rate:.2%}; "
            f"top reasons: {top}; quarantine and report in {where}")
