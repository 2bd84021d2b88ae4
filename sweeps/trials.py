"""A sweep's trials as the project reads them back: a status, the sampled params, the
per-epoch history; and the numbers taken from them (a trial is scored by its best epoch).

Constraints (`sweep.constraints`) are judged at the same epoch: a trial is feasible when each
constrained metric's value at its best epoch of the objective satisfies its bound, since that
epoch is what the trial is scored by and what the finaliser retrains towards.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TrialStatus(StrEnum):
    """How a trial ended, in trials.csv, the report, the console and MLflow tags."""

    FINISHED = "FINISHED"  # ran to its budget or its own early stopping
    KILLED_BY_ASHA = "KILLED_BY_ASHA"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"  # pending or running when the driver stopped


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]  # the searched params' sampled values for this trial
    status: TrialStatus
    history: list[dict[str, float]]  # per-epoch metrics as reported; empty if it never reported
    error: str | None = None


# The comparisons a constraint may use; "==" is left out: metrics are floats.
CONSTRAINT_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
# Optuna's violation for a constrained metric with no value (never reported, or NaN at the best
# epoch): positive, so the trial counts as infeasible.
MISSING_VIOLATION = 1.0


@dataclass(frozen=True)
class Constraint:
    """`metric operator bound`, e.g. val_active_units >= 4 (sweeps.space parses the YAML)."""

    metric: str
    operator: str  # one of CONSTRAINT_OPERATORS
    bound: float

    def __post_init__(self) -> None:
        if self.operator not in CONSTRAINT_OPERATORS:
            raise ValueError(
                f"constraint operator: expected one of {', '.join(CONSTRAINT_OPERATORS)}, "
                f"got {self.operator!r}"
            )

    def __str__(self) -> str:
        return f"{self.metric} {self.operator} {self.bound:g}"

    def holds(self, value: float | None) -> bool:
        """Whether `value` satisfies the bound; a missing value never does."""
        return value is not None and CONSTRAINT_OPERATORS[self.operator](value, self.bound)

    def violation(self, value: float | None) -> float:
        """Optuna's constraint value: <= 0 when satisfied, > 0 by how far it misses (in the
        metric's units), MISSING_VIOLATION without a value."""
        if value is None:
            return MISSING_VIOLATION
        excess = self.bound - value if self.operator in (">=", ">") else value - self.bound
        if self.holds(value):
            return min(excess, 0.0)
        # A strict bound met with equality misses by nothing, yet must read as violated (> 0).
        return max(excess, math.ulp(0.0))


def best_key(metric: str) -> str:
    """The running best of `metric` that trials report and ASHA and Optuna compare."""
    return f"best_{metric}"


def at_best_key(metric: str) -> str:
    """A constrained metric's value at the epoch where the trial's objective is best so far,
    as trials report it (sweeps.trainable) and the Optuna study stores it."""
    return f"at_best_{metric}"


# ---------------------------------------------------------------------------------------------
# Numbers from the records


def finite_number(value: Any) -> float | None:
    """`value` as a float, or None where it is missing, NaN, infinite or not a number."""
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def epoch_rows(record: TrialRecord) -> list[tuple[int, dict[str, Any]]]:
    """(epoch, metrics) in report order; a row without an epoch gets its 1-based position."""
    rows = []
    for index, row in enumerate(record.history):
        epoch = finite_number(row.get("epoch")) if isinstance(row, dict) else None
        rows.append(
            (int(epoch) if epoch is not None else index + 1, row if isinstance(row, dict) else {})
        )
    return rows


def best_epoch(record: TrialRecord, metric: str, mode: str) -> tuple[float, int] | None:
    """(best finite value of `metric`, its epoch) over the trial's epochs; None if none."""
    check_mode(mode)
    best: tuple[float, int] | None = None
    for epoch, row in epoch_rows(record):
        value = finite_number(row.get(metric))
        if value is not None and (best is None or _better(value, best[0], mode)):
            best = (value, epoch)
    return best


def best_value(record: TrialRecord, metric: str, mode: str) -> float | None:
    """The best finite value of `metric` over the trial's epochs; None if there is none."""
    found = best_epoch(record, metric, mode)
    return found[0] if found is not None else None


def epochs_run(record: TrialRecord) -> int:
    """The last epoch the trial reached (a trial restored from a checkpoint repeats none)."""
    return max((epoch for epoch, _ in epoch_rows(record)), default=0)


def values_at_best(
    record: TrialRecord, metric: str, mode: str, names: Sequence[str]
) -> dict[str, float | None]:
    """Each of `names` at the trial's best epoch of `metric` (None where the trial has no best
    epoch or no finite value of the name there)."""
    found = best_epoch(record, metric, mode)
    row = next((r for epoch, r in epoch_rows(record) if found and epoch == found[1]), {})
    return {name: finite_number(row.get(name)) for name in names}


def feasible(
    record: TrialRecord, metric: str, mode: str, constraints: Sequence[Constraint]
) -> bool:
    """Whether every constraint holds at the trial's best epoch of `metric` (True when there
    are none; False for a trial without a best epoch, whose constrained values are unknown)."""
    if not constraints:
        return True
    values = values_at_best(record, metric, mode, [c.metric for c in constraints])
    return all(c.holds(values[c.metric]) for c in constraints)


def ranked(
    records: list[TrialRecord],
    metric: str,
    mode: str,
    constraints: Sequence[Constraint] = (),
) -> list[tuple[TrialRecord, float, int]]:
    """Trials with a value, best first; failed trials are left out (their config crashed), and
    so are trials that break a constraint at their best epoch (the finaliser must not pick
    them)."""
    scored = []
    for record in records:
        if record.status == TrialStatus.FAILED:
            continue
        found = best_epoch(record, metric, mode)
        if found is not None and feasible(record, metric, mode, constraints):
            scored.append((record, found[0], found[1]))
    # A stable sort keeps trial order among ties, so the earliest trial wins them.
    scored.sort(key=lambda item: item[1] if mode == "min" else -item[1])
    return scored
