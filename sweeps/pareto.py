"""Trade-offs between objectives: a trial's objective vector, the Pareto front of a sweep's
trials, and the knee of the front.

A trial is scored at one epoch for every objective: its best epoch by the first objective
(the epoch whose checkpoint the finaliser retrains), with the other objectives read at that
same epoch, so each point of the front is a model that exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sweeps.trials import Constraint, TrialRecord, TrialStatus, ranked, values_at_best


def objective_vector(
    record: TrialRecord, metrics: Sequence[str], modes: Sequence[str]
) -> tuple[float, ...] | None:
    """The trial's objectives at its best epoch by the first; None if any is missing there."""
    values = values_at_best(record, metrics[0], modes[0], metrics)
    if any(value is None for value in values.values()):
        return None
    return tuple(values[metric] for metric in metrics)  # type: ignore[misc]


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one."""
    signs = [1.0 if mode == "min" else -1.0 for mode in modes]
    as_good = all(s * x <= s * y for s, x, y in zip(signs, a, b, strict=True))
    better = any(s * x < s * y for s, x, y in zip(signs, a, b, strict=True))
    return as_good and better


def pareto_front(
    records: list[TrialRecord], metrics: Sequence[str], modes: Sequence[str]
) -> list[tuple[TrialRecord, tuple[float, ...]]]:
    """The non-dominated trials with their vectors, in trial order; failed trials excluded."""
    scored = [
        (record, vector)
        for record in records
        if record.status != TrialStatus.FAILED
        and (vector := objective_vector(record, metrics, modes)) is not None
    ]
    return [
        (record, vector)
        for record, vector in scored
        if not any(dominates(other, vector, modes) for _, other in scored)
    ]


def feasible_front(
    records: list[TrialRecord],
    objectives: Sequence[tuple[str, str]],
    constraints: Sequence[Constraint] = (),
) -> list[tuple[TrialRecord, tuple[float, ...]]]:
    """The Pareto front of the trials that meet the constraints (at their best epoch)."""
    (metric, mode), *_ = objectives
    candidates = [record for record, _, _ in ranked(records, metric, mode, constraints)]
    return pareto_front(candidates, [m for m, _ in objectives], [d for _, d in objectives])


def knee(
    front: list[tuple[TrialRecord, tuple[float, ...]]], modes: Sequence[str]
) -> TrialRecord | None:
    """The front's point closest to the ideal point (every objective at its best on the front),
    each objective scaled to [0, 1] over the front so that units do not matter."""
    if not front:
        return None
    vectors = [vector for _, vector in front]
    distances = []
    for vector in vectors:
        squared = 0.0
        for index, mode in enumerate(modes):
            column = [v[index] for v in vectors]
            low, high = min(column), max(column)
            if high == low:
                continue
            best = low if mode == "min" else high
            squared += ((vector[index] - best) / (high - low)) ** 2
        distances.append(math.sqrt(squared))
    return front[distances.index(min(distances))][0]


def leaders(
    records: list[TrialRecord],
    objectives: Sequence[tuple[str, str]],
    constraints: Sequence[Constraint] = (),
    pick: str = "knee",
) -> list[tuple[TrialRecord, float, int]]:
    """The feasible trials as (record, first objective's best value, its epoch), the one to
    finalise first. One objective: best first. Several: the Pareto front's `pick` first (its
    knee, or its best value of the named objective), then the rest by the first objective."""
    (metric, mode), *_ = objectives
    scored = ranked(records, metric, mode, constraints)
    if len(objectives) == 1 or not scored:
        return scored
    metrics, modes = [m for m, _ in objectives], [d for _, d in objectives]
    front = feasible_front(records, objectives, constraints)
    if not front:
        return scored
    if pick == "knee":
        chosen = knee(front, modes)
    else:
        index = metrics.index(pick)
        sign = 1.0 if modes[index] == "min" else -1.0
        chosen = min(front, key=lambda item: sign * item[1][index])[0]
    return sorted(scored, key=lambda item: item[0] is not chosen)
