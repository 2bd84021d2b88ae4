"""What the sweep report (sweeps.report) shows, worked out before anything is rendered: the
ranking, ASHA's rungs and how many trials reached each, and an in-memory Optuna study rebuilt
from the records with its fANOVA importances.

Ray's OptunaSearch study is not kept after the sweep, so the Optuna plots need this one. Its
search space is the sweep's own (`sweeps.study.search_distributions`), with categorical choices
made comparable to the values the records hold.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from sweeps.study import search_distributions
from sweeps.trials import (
    Constraint,
    TrialRecord,
    TrialStatus,
    best_value,
    check_mode,
    epochs_run,
    finite_number,
    ranked,
)

_PRIMITIVES = (type(None), bool, int, float, str)

# A ranked trial: (record, its best value, the epoch of that value).
Ranked = tuple[TrialRecord, float, int]


def plain(value: Any) -> Any:
    """numpy scalars as Python scalars, so they compare equal to the YAML choices."""
    return value.item() if isinstance(value, np.generic) else value


def asha_rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """ASHA's milestones grace * rf**k <= max_t, plus max_t itself (where trials finish)."""
    rungs: list[int] = []
    if grace_period >= 1 and reduction_factor >= 2:
        rung = grace_period
        while rung <= max_t:
            rungs.append(rung)
            rung *= reduction_factor
    if max_t >= 1 and max_t not in rungs:
        rungs.append(max_t)
    return rungs


def rung_survival(records: list[TrialRecord], asha: dict[str, int]) -> list[tuple[int, int]]:
    """(rung epoch, trials whose history reached it) for each ASHA rung."""
    reached = [epochs_run(record) for record in records]
    rungs = asha_rungs(
        int(asha.get("grace_period") or 1),
        int(asha.get("reduction_factor") or 2),
        int(asha.get("max_t") or 0),
    )
    return [(rung, sum(1 for epochs in reached if epochs >= rung)) for rung in rungs]


# ---------------------------------------------------------------------------------------------
# The in-memory Optuna study


def _choice_key(value: Any, as_text: bool) -> Any:
    value = plain(value)
    return repr(value) if as_text else value


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution]
    # Choices Optuna cannot hold (lists, dicts) are shown as their repr.
    textual_choices: set[str]

    def optuna_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The record's params Optuna accepts: missing or out-of-range values are left out."""
        accepted = {}
        for name, dist in self.distributions.items():
            if name not in params:
                continue
            value = plain(params[name])
            if isinstance(dist, CategoricalDistribution):
                value = _choice_key(value, name in self.textual_choices)
                try:
                    if value in dist.choices:
                        accepted[name] = value
                except TypeError:
                    continue
                continue
            number = finite_number(value)
            if number is None or not dist.low <= number <= dist.high:
                continue
            if isinstance(dist, IntDistribution):
                if number != int(number):
                    continue
                accepted[name] = int(number)
            else:
                accepted[name] = number
        return accepted


def _comparable_choices(dist: CategoricalDistribution) -> tuple[CategoricalDistribution, bool]:
    """The choices as the records hold them (numpy scalars plain), each once; all as their repr
    when one is a value Optuna cannot store (a list). The flag says whether they are text."""
    values = [plain(v) for v in dist.choices]
    as_text = not all(isinstance(v, _PRIMITIVES) for v in values)
    choices: list[Any] = []
    for value in values:
        key = _choice_key(value, as_text)
        if key not in choices:
            choices.append(key)
    return CategoricalDistribution(choices), as_text


def search_space(params_spec: dict[str, Any]) -> SearchSpace:
    """The searched params of `params_spec` (the space's `params` section) as Optuna sees them."""
    distributions: dict[str, BaseDistribution] = {}
    textual: set[str] = set()
    for name, spec in params_spec.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            continue  # a constant: nothing was searched
        try:
            # One param at a time, so a malformed spec loses only its own plots.
            with warnings.catch_warnings():
                # Optuna warns of choices it cannot store (lists): they become text below.
                warnings.simplefilter("ignore", UserWarning)
                converted = search_distributions({name: spec})
        except Exception:  # Ray's and Optuna's converters raise many types; space.py validates
            continue
        dist = converted.get(name)
        if isinstance(dist, CategoricalDistribution):
            dist, as_text = _comparable_choices(dist)
            if as_text:
                textual.add(name)
        if dist is not None:
            distributions[name] = dist
    return SearchSpace(distributions, textual)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logs and ExperimentalWarnings (the matplotlib module) meanwhile."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def build_study(
    records: list[TrialRecord], metric: str, mode: str, params_spec: dict[str, Any]
) -> optuna.Study:
    """One Optuna trial per record, in record order (so trial numbers are record positions).

    Finished and ASHA-stopped trials with a value are COMPLETE with their best value; failed
    trials and trials that never reported the metric are FAIL.
    """
    check_mode(mode)
    return _study(records, metric, mode, search_space(params_spec))


def _study(records: list[TrialRecord], metric: str, mode: str, space: SearchSpace) -> optuna.Study:
    with quiet_optuna():
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
        for record in records:
            params = space.optuna_params(record.params or {})
            distributions = {name: space.distributions[name] for name in params}
            value = (
                None if record.status == TrialStatus.FAILED else best_value(record, metric, mode)
            )
            state = TrialState.COMPLETE if value is not None else TrialState.FAIL
            trial = optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=distributions,
                user_attrs={"trial_id": str(record.trial_id), "status": record.status},
            )
            study.add_trial(trial)
    return study


def varying(trials: list[FrozenTrial], names: list[str]) -> list[str]:
    """The params with more than one value among `trials` (an axis of one value says nothing)."""
    return [
        name
        for name in names
        if len({repr(t.params[name]) for t in trials if name in t.params}) > 1
    ]


# ---------------------------------------------------------------------------------------------
# Hyperparameter importance


@dataclass(frozen=True)
class Importances:
    """fANOVA's share of the objective's variance per param, or why there is none."""

    params: list[str]  # the params fANOVA was asked about (the plot shows them)
    values: dict[str, float] = field(default_factory=dict)
    reason: str | None = None  # why no importance was computed


def _importance_params(study: optuna.Study, names: list[str]) -> tuple[list[str], str | None]:
    """Params fit for fANOVA (present in every complete trial, more than one value), or why not."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        return [], f"needs at least 2 completed trials, the sweep has {len(completed)}"
    if not names:
        return [], "no parameter was searched (all are constants)"
    # fANOVA only uses trials holding every param asked for, so one missing value would drop
    # a whole trial; params some trial lacks are left out instead.
    present = [name for name in names if all(name in trial.params for trial in completed)]
    usable = varying(completed, present)
    if not usable:
        return [], "no searched parameter takes more than one value across the completed trials"
    if len({trial.value for trial in completed}) < 2:
        return [], "the objective has the same value in every completed trial"
    return usable, None


def param_importances(study: optuna.Study, names: list[str]) -> Importances:
    """fANOVA (seeded) over the searched params fit for it; a failure is a reason, not a crash."""
    usable, reason = _importance_params(study, names)
    if reason is not None:
        return Importances(usable, reason=reason)
    try:
        with quiet_optuna():
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            values = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=usable
            )
    except Exception as exc:  # importance is optional; the report must still be written
        return Importances(usable, reason=f"fANOVA failed ({type(exc).__name__}: {exc})")
    if not all(finite_number(v) is not None for v in values.values()):
        return Importances(usable, reason="fANOVA returned non-finite importances")
    return Importances(usable, values)


class KnownImportances(optuna.importance.BaseImportanceEvaluator):
    """Hands plot_param_importances the numbers in the table: fANOVA is the slow step."""

    def __init__(self, importances: dict[str, float]) -> None:
        self._importances = dict(importances)

    def evaluate(
        self, study: optuna.Study, params: list[str] | None = None, *, target: Any = None
    ) -> dict[str, float]:
        return dict(self._importances)


# ---------------------------------------------------------------------------------------------
# The whole analysis


@dataclass(frozen=True)
class SweepAnalysis:
    """Everything the sweep's sections of the report show, computed once from the records."""

    records: list[TrialRecord]
    metric: str
    mode: str
    constraints: Sequence[Constraint]
    objectives: Sequence[tuple[str, str]]  # a multi-objective sweep's (metric, mode) pairs
    pick: str  # which Pareto point the finaliser retrains (finalise.pick)
    # ASHA's settings as the caller gave them (the rung section quotes them).
    grace_period: int | None
    reduction_factor: int | None
    max_t: int
    searched: list[str]  # the params the space searched
    param_names: list[str]  # searched, then any other param a record holds
    scored: list[Ranked]  # the feasible trials with a value, best first
    candidates: list[Ranked]  # every trial with a value, feasible or not, best first
    failed: list[TrialRecord]
    survival: list[tuple[int, int]]  # (ASHA rung, trials that reached it)
    study: optuna.Study
    completed: list[FrozenTrial]  # the study's COMPLETE trials
    varying: list[str]  # searched params with more than one value among `completed`
    importances: Importances


def analyse_sweep(
    records: list[TrialRecord],
    metric: str,
    mode: str,
    params_spec: dict[str, Any],
    asha: dict[str, Any],
    constraints: Sequence[Constraint] = (),
    objectives: Sequence[tuple[str, str]] = (),
    pick: str = "knee",
) -> SweepAnalysis:
    """Everything the report shows, worked out from the trials' per-epoch histories.

    `asha` holds grace_period, reduction_factor and max_t (epochs). `constraints`
    (sweep.constraints): the best trial is the best that meets them; the ranking marks the
    others. `objectives`: a multi-objective sweep's (metric, mode) pairs, the first being
    `metric`: a Pareto section (front plot, table, the trial `pick` chose).
    """
    check_mode(mode)
    space = search_space(params_spec)
    searched = list(space.distributions)
    extra = sorted({k for r in records for k in (r.params or {}) if k not in space.distributions})
    study = _study(records, metric, mode, space)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return SweepAnalysis(
        records=records,
        metric=metric,
        mode=mode,
        constraints=constraints,
        objectives=objectives,
        pick=pick,
        grace_period=asha.get("grace_period"),
        reduction_factor=asha.get("reduction_factor"),
        max_t=int(asha.get("max_t") or 0),
        searched=searched,
        param_names=searched + extra,
        scored=ranked(records, metric, mode, constraints),
        candidates=ranked(records, metric, mode),
        failed=[r for r in records if r.status == TrialStatus.FAILED],
        survival=rung_survival(records, asha),
        study=study,
        completed=completed,
        varying=varying(completed, searched),
        importances=param_importances(study, searched),
    )
