"""Warm start: a new sweep's search begins from an earlier sweep's finished trials.

Each usable old trial enters the new study as a COMPLETE Optuna trial (its sampled params, its
best value of the new sweep's objective over its epochs) before any new trial is proposed, so
TPE's first proposals already model them. The spaces must be compatible: every parameter the
new space searches was searched by the old sweep, the old sweep searched nothing the new space
does not, and every value lies inside the new range. What is not is an error naming it, or
with `skip_incompatible` is left out and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from emovae.config import ConfigError
from sweeps.pareto import objective_vector
from sweeps.space import SweepSpec, searched_params
from sweeps.study import ATTR_WARM_START
from sweeps.trials import TrialRecord, TrialStatus, best_value

ATTR_SOURCE_TRIAL = "warm_start_trial"


class WarmStartError(ConfigError):
    """The earlier sweep cannot seed this one."""


@dataclass(frozen=True)
class WarmStartRequest:
    source: str  # the earlier sweep's folder (--warm-start)
    skip_incompatible: bool = False  # leave out (and list) what does not fit, instead of failing


@dataclass(frozen=True)
class WarmStartPoint:
    params: dict[str, Any]
    value: float | tuple[float, ...]  # one per objective for a multi-objective sweep
    source_trial: str


@dataclass
class WarmStart:
    source: str  # the earlier sweep's folder
    points: list[WarmStartPoint]
    skipped: list[str] = field(default_factory=list)  # what was left out, in words


def warm_start_points(
    source: str,
    old_spec: SweepSpec,
    records: list[TrialRecord],
    spec: SweepSpec,
    distributions: dict[str, BaseDistribution],
    skip_incompatible: bool = False,
) -> WarmStart:
    """The old sweep's finished trials as points of `spec`'s search (`distributions`: the
    searcher's own, so the study's trials and its proposals share one space)."""
    where = f"--warm-start {source}"
    old_searched, new_searched = set(searched_params(old_spec.params)), set(distributions)
    missing = sorted(new_searched - old_searched)
    if missing:
        raise WarmStartError(
            f"{where}: this space searches {missing}, which that sweep did not search, so its "
            "trials have no value for them (this cannot be skipped)"
        )
    skipped: list[str] = []
    extra = sorted(old_searched - new_searched)
    if extra and not skip_incompatible:
        raise WarmStartError(
            f"{where}: that sweep also searched {extra}, which this space does not search; "
            "--warm-start-skip-incompatible drops them from its trials"
        )
    if extra:
        skipped.append(f"parameters {extra} (not searched here) dropped from every trial")

    metrics = [metric for metric, _ in spec.sweep.objectives]
    modes = [mode for _, mode in spec.sweep.objectives]
    points = []
    for record in records:
        if record.status not in (TrialStatus.FINISHED, TrialStatus.KILLED_BY_ASHA):
            continue
        value = (
            objective_vector(record, metrics, modes)
            if spec.sweep.multi_objective
            else best_value(record, metrics[0], modes[0])
        )
        if value is None:
            skipped.append(f"trial {record.trial_id}: no value of {' and '.join(metrics)}")
            continue
        params = {name: record.params.get(name) for name in sorted(new_searched)}
        outside = [
            f"{name}={params[name]!r} outside {_describe(distributions[name])}"
            for name in sorted(new_searched)
            if not _contains(distributions[name], params[name])
        ]
        if outside and not skip_incompatible:
            raise WarmStartError(
                f"{where}: trial {record.trial_id} has {', '.join(outside)}; "
                "--warm-start-skip-incompatible leaves such trials out"
            )
        if outside:
            skipped.append(f"trial {record.trial_id}: {', '.join(outside)}")
            continue
        points.append(WarmStartPoint(params, value, record.trial_id))
    if not points:
        raise WarmStartError(
            f"{where}: no finished trial of that sweep can seed this one"
            + (f" (left out: {'; '.join(skipped)})" if skipped else "")
        )
    return WarmStart(source, points, skipped)


def seed_study(
    study: optuna.Study, warm: WarmStart, distributions: dict[str, BaseDistribution]
) -> None:
    """Add the points to a study that holds no trials yet (a resumed sweep's study has them)."""
    if study.get_trials(deepcopy=False):
        return
    study.add_trials(
        [
            optuna.trial.create_trial(
                params=point.params,
                distributions={name: distributions[name] for name in point.params},
                **(
                    {"values": list(point.value)}
                    if isinstance(point.value, tuple)
                    else {"value": point.value}
                ),
                user_attrs={ATTR_WARM_START: warm.source, ATTR_SOURCE_TRIAL: point.source_trial},
            )
            for point in warm.points
        ]
    )


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(distribution, IntDistribution) and value != int(value):
            return False
        return distribution.low <= value <= distribution.high
    return False


def _describe(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return f"the choices {list(distribution.choices)}"
    if isinstance(distribution, (FloatDistribution, IntDistribution)):
        return f"[{distribution.low:g}, {distribution.high:g}]"
    return repr(distribution)
