"""Objectives made of constraints on targets: ``1.5<=dir_gap<=3``, ``heat_ref<1.0``.

A constraint bounds one target from below, above or both; an objective holds if every
constraint does. Strict and non-strict comparisons are the same for continuous values.
Target names may hold dots and dashes (``gpaw-fast.band_gap``).
"""

import math
import re
from dataclasses import dataclass

import numpy as np

from workbench.errors import WorkbenchError

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NAME = r"[A-Za-z_][\w.\-]*"
TARGET_NAME = re.compile(_NAME)
_LESS = r"<=?"
_GREATER = r">=?"
_PATTERNS = (
    # 1.5 <= gap <= 3   and   3 >= gap >= 1.5
    re.compile(rf"^\s*(?P<low>{_NUMBER})\s*{_LESS}\s*(?P<name>{_NAME})\s*{_LESS}\s*(?P<high>{_NUMBER})\s*$"),
    re.compile(rf"^\s*(?P<high>{_NUMBER})\s*{_GREATER}\s*(?P<name>{_NAME})\s*{_GREATER}\s*(?P<low>{_NUMBER})\s*$"),
    re.compile(rf"^\s*(?P<name>{_NAME})\s*{_LESS}\s*(?P<high>{_NUMBER})\s*$"),
    re.compile(rf"^\s*(?P<name>{_NAME})\s*{_GREATER}\s*(?P<low>{_NUMBER})\s*$"),
    re.compile(rf"^\s*(?P<low>{_NUMBER})\s*{_LESS}\s*(?P<name>{_NAME})\s*$"),
    re.compile(rf"^\s*(?P<high>{_NUMBER})\s*{_GREATER}\s*(?P<name>{_NAME})\s*$"),
)


class ObjectiveError(WorkbenchError, ValueError):
    """A constraint that cannot be read, quoted in the message."""


@dataclass(frozen=True)
class Constraint:
    target: str
    low: float = -math.inf
    high: float = math.inf

    def holds(self, values: np.ndarray) -> np.ndarray:
        return (values >= self.low) & (values <= self.high)

    @property
    def is_window(self) -> bool:
        """Bounded on both sides: there is no single direction to push the target in."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def maximizes(self) -> bool:
        """Only a lower bound: larger values are better (only an upper bound: smaller)."""
        return math.isfinite(self.low) and not math.isfinite(self.high)

    def distance(self, values: np.ndarray) -> np.ndarray:
        """How far ``values`` lie outside the bounds (0 inside)."""
        values = np.asarray(values, dtype=float)
        return np.maximum(self.low - values, 0.0) + np.maximum(values - self.high, 0.0)

    def __str__(self) -> str:
        if math.isinf(self.low):
            return f"{self.target}<={self.high:g}"
        if math.isinf(self.high):
            return f"{self.target}>={self.low:g}"
        return f"{self.low:g}<={self.target}<={self.high:g}"


@dataclass(frozen=True)
class Objective:
    constraints: tuple[Constraint, ...]

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(constraint.target for constraint in self.constraints))

    def holds(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Which rows meet every constraint; ``values`` maps target -> ``(n,)`` values."""
        met = None
        for constraint in self.constraints:
            ok = constraint.holds(np.asarray(values[constraint.target], dtype=float))
            met = ok if met is None else met & ok
        return met

    def __str__(self) -> str:
        return " and ".join(str(constraint) for constraint in self.constraints)


def parse_constraint(text: str) -> Constraint:
    for pattern in _PATTERNS:
        match = pattern.match(text)
        if match:
            parts = match.groupdict()
            low = float(parts["low"]) if parts.get("low") is not None else -math.inf
            high = float(parts["high"]) if parts.get("high") is not None else math.inf
            if low > high:
                raise ObjectiveError(f"constraint {text!r} can never hold: {low:g} > {high:g}")
            return Constraint(parts["name"], low, high)
    raise ObjectiveError(
        f"cannot read constraint {text!r}: write e.g. '1.5<=dir_gap<=3', 'heat_ref<1.0' or 'band_gap>0.5'"
    )


def parse_objective(texts: list[str]) -> Objective:
    """One objective from several constraints (each may also join several with ``and``)."""
    constraints = [
        parse_constraint(part)
        for text in texts
        for part in re.split(r"\s+and\s+|,", text)
        if part.strip()
    ]
    if not constraints:
        raise ObjectiveError("an objective needs at least one constraint")
    return Objective(tuple(constraints))
