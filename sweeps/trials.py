"""A sweep's trials as the project reads them back: a status, the sampled params, the
per-epoch history; and the numbers taken from them (a trial is scored by its best epoch)."""

from __future__ import annotations

import math
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


def ranked(
    records: list[TrialRecord], metric: str, mode: str
) -> list[tuple[TrialRecord, float, int]]:
    """Trials with a value, best first; failed trials are left out (their config crashed)."""
    scored = []
    for record in records:
        if record.status == TrialStatus.FAILED:
            continue
        found = best_epoch(record, metric, mode)
        if found is not None:
            scored.append((record, found[0], found[1]))
    # A stable sort keeps trial order among ties, so the earliest trial wins them.
    scored.sort(key=lambda item: item[1] if mode == "min" else -item[1])
    return scored
