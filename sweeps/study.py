"""The Optuna study behind a sweep's search: where it lives, which sweep owns it, and the
searcher that keeps it across a restart of the driver.

The study lives in the sweep folder as `optuna.journal` (Optuna's JournalStorage on a file),
or in a relational database named by `sweep.optuna_storage` (an RDB URL; `${VAR}` references
are read from the environment only when connecting, so no password reaches the sweep folder or
Tune's pickled searcher). It is named after the sweep folder and carries the sweep's id, so
a study of another sweep (a copied journal, a team database where the name is taken) is
refused, never mixed: a study is joined only when it is this sweep's own or holds no trials.

Each Optuna trial carries its Ray trial id and how many finished trials the sampler saw when
it proposed it, so a resumed sweep shows that TPE used every trial from before the restart.

With `sweep.constraints`, each finished trial also carries every constrained metric's value at
its best epoch (user attribute `at_best_<metric>`) and, per constraint, Optuna's constraint
value (`Trial.set_constraint`: <= 0 when it holds), which TPE reads to rank infeasible trials
below feasible ones. Optuna 5 deprecates the sampler's `constraints_func` for this call; the
sampler needs no argument for it.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from sweeps.databases import DatabaseError, check_database, masked, resolved_uri
from sweeps.space import to_tune_space
from sweeps.trials import Constraint, at_best_key, finite_number

JOURNAL_FILE = "optuna.journal"
ATTR_SWEEP_ID = "sweep_id"
ATTR_SWEEP_DIR = "sweep_dir"
ATTR_RAY_TRIAL = "ray_trial_id"
ATTR_SEEN = "finished_trials_seen"  # COMPLETE or PRUNED trials in the study at proposal time
ATTR_FORGOTTEN = "forgotten"  # asked by a driver killed before Tune's snapshot held the trial
ATTR_WARM_START = "warm_start_from"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyError(RuntimeError):
    """The sweep's Optuna study cannot be opened, or belongs to another sweep."""


@dataclass(frozen=True)
class StudyLocation:
    """Where a sweep's study lives and whose it is: plain strings, safe to pickle."""

    sweep_dir: str
    sweep_id: str
    storage: str = ""  # "" = the journal file in the sweep folder; else an RDB URL

    @property
    def name(self) -> str:
        return Path(self.sweep_dir).name

    def describe(self) -> str:
        """The journal's path or the database URL with its password masked."""
        if not self.storage:
            return str(Path(self.sweep_dir) / JOURNAL_FILE)
        return masked(resolved_uri(self.storage))


def open_storage(location: StudyLocation) -> BaseStorage:
    if not location.storage:
        return JournalStorage(JournalFileBackend(str(Path(location.sweep_dir) / JOURNAL_FILE)))
    url = resolved_uri(location.storage)
    try:
        check_database(url, "the Optuna study storage (sweep.optuna_storage)")
        return RDBStorage(url)
    except DatabaseError as exc:
        raise StudyError(str(exc)) from exc
    except Exception as exc:  # SQLAlchemy's and the driver's many error types
        raise StudyError(
            f"sweep.optuna_storage {masked(url)}: cannot open an Optuna study there "
            f"({type(exc).__name__}: {masked(str(exc))})"
        ) from exc


def search_distributions(params: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The searched params as Optuna distributions, converted exactly as OptunaSearch converts
    the Tune space, so trials added to the study (a warm start) share the searcher's space."""
    return OptunaSearch.convert_search_space(to_tune_space(params))


def check_study(location: StudyLocation, resuming: bool) -> None:
    """Before Ray starts: the storage opens, and the study there (if any) is this sweep's, or
    (for a new sweep) holds no trials. A journal holding only other studies was copied from
    another sweep."""
    if not location.storage and not (Path(location.sweep_dir) / JOURNAL_FILE).is_file():
        return  # a new sweep, or a folder from before the study was persisted
    storage = open_storage(location)
    study = _load(location, storage)
    if study is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if not location.storage and names:
            raise StudyError(
                f"{location.describe()}: holds the Optuna studies {names}, not this sweep's "
                f"{location.name!r}: a journal copied from another sweep folder?"
            )
        return
    owner = study.user_attrs.get(ATTR_SWEEP_ID)
    if owner == location.sweep_id or (not resuming and not study.get_trials(deepcopy=False)):
        return
    held = f" and holds {len(study.get_trials(deepcopy=False))} trials" if not resuming else ""
    raise StudyError(
        f"{location.describe()}: the Optuna study {location.name!r} belongs to another sweep "
        f"({study.user_attrs.get(ATTR_SWEEP_DIR, 'unknown folder')}, id {owner}){held}; "
        + (
            f"this sweep's id is {location.sweep_id}"
            if resuming
            else "resume that sweep from its own folder, or give this one another --out "
            "(the study is named after the sweep folder)"
        )
    )


def claim_study(location: StudyLocation, mode: str | Sequence[str]) -> optuna.Study:
    """A new sweep's study: created, or taken over when it holds no trials (a start that
    failed before its first trial); `check_study` has refused any other. `mode`: one per
    objective."""
    storage = open_storage(location)
    study = _load(location, storage)
    if study is not None and study.user_attrs.get(ATTR_SWEEP_ID) == location.sweep_id:
        return study
    if study is not None:
        optuna.delete_study(study_name=location.name, storage=storage)
    modes = [mode] if isinstance(mode, str) else list(mode)
    study = optuna.create_study(
        storage=storage,
        study_name=location.name,
        directions=[_optuna_direction(m) for m in modes],
    )
    study.set_user_attr(ATTR_SWEEP_ID, location.sweep_id)
    study.set_user_attr(ATTR_SWEEP_DIR, location.sweep_dir)
    return study


def _load(location: StudyLocation, storage: BaseStorage) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=location.name, storage=storage)
    except KeyError:
        return None


def _optuna_direction(mode: str) -> str:
    return "minimize" if mode == "min" else "maximize"


class SweepSearch(OptunaSearch):
    """Ray's OptunaSearch on the sweep's persistent study.

    Tune pickles its searcher (with the tuner, and at each experiment snapshot); this one
    pickles where its study lives instead of the storage and its connection, and after a
    restart reconnects and rebuilds its Ray-trial -> Optuna-trial map from trial numbers. The
    study then holds every trial told before the kill, also those after Tune's last snapshot.
    """

    # A searcher pickled before constraints existed restores without the attribute.
    _constraints: tuple[Constraint, ...] = ()

    def __init__(
        self,
        location: StudyLocation,
        sampler: optuna.samplers.BaseSampler,
        constraints: Sequence[Constraint] = (),
        objectives: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`objectives`: a multi-objective sweep's (result key, mode) pairs; the searcher then
        keeps them instead of the single metric Tune (and ASHA) use."""
        metric = [key for key, _ in objectives] or None
        mode = [direction for _, direction in objectives] or None
        super().__init__(sampler=sampler, study_name=location.name, metric=metric, mode=mode)
        self._location = location
        self._constraints = tuple(constraints)
        self._multi_objective = bool(objectives)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        if getattr(self, "_multi_objective", False):
            metric, mode = self._metric, self._mode
        return super().set_search_properties(metric, mode, config, **spec)

    def _setup_study(self, mode: str | list[str]) -> None:
        self._storage = open_storage(self._location)
        super()._setup_study(mode)

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        seen = len(self._ot_study.get_trials(deepcopy=False, states=FINISHED)) if new else 0
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            trial = self._ot_trials[trial_id]
            trial.set_user_attr(ATTR_RAY_TRIAL, trial_id)
            trial.set_user_attr(ATTR_SEEN, seen)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id not in self._completed_trials:
            if self._constraints and trial_id in self._ot_trials:
                self._record_constraints(self._ot_trials[trial_id], result or {})
            super().on_trial_complete(trial_id, result, error)

    def _record_constraints(self, trial: optuna.trial.Trial, result: dict) -> None:
        """Before `tell`: TPE reads a finished trial's constraints when it next proposes. Set
        whatever the trial's state, so no told trial reads as feasible for want of a value (a
        missing value is infeasible: Constraint.violation)."""
        for constraint in self._constraints:
            key = at_best_key(constraint.metric)
            value = finite_number(result.get(key))
            trial.set_user_attr(key, value)
            trial.set_constraint(str(constraint), constraint.violation(value))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_storage", None)
        state.pop("_ot_study", None)
        state["_ot_trials"] = {key: trial.number for key, trial in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._storage = None  # reconnected by _setup_study (Tune calls it before restore)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        numbers: dict[str, int] = state.pop("_ot_trials")
        for key in ("_storage", "_ot_study"):
            state.pop(key, None)
        self.__dict__.update(state)
        if getattr(self, "_ot_study", None) is None:
            self._setup_study(self._mode)
        self._ot_trials = {
            key: optuna.trial.Trial(self._ot_study, self._trial_id(number))
            for key, number in numbers.items()
        }
        # Told after Tune's last snapshot: Tune runs them on from their checkpoints, but the
        # study keeps the value it was told (a finished Optuna trial cannot change).
        self._completed_trials |= {
            key for key, trial in self._ot_trials.items() if self._finished(trial.number)
        }
        self._close_forgotten(set(numbers.values()))

    def _finished(self, number: int) -> bool:
        return self._storage.get_trial(self._trial_id(number)).state.is_finished()

    def _trial_id(self, number: int) -> int:
        study_id = self._storage.get_study_id_from_name(self._study_name)
        return self._storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _close_forgotten(self, known: set[int]) -> None:
        """Trials asked after Tune's last snapshot: Tune reruns their slots as new trials, so
        those still running would stay RUNNING in the study for ever: marked forgotten and
        failed. Those already told keep their value for TPE, unmarked (Optuna keeps a
        finished trial as it is); their MLflow runs are tagged forgotten."""
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self._storage.set_trial_user_attr(
                    self._trial_id(trial.number), ATTR_FORGOTTEN, True
                )
                self._ot_study.tell(trial.number, state=TrialState.FAIL)
