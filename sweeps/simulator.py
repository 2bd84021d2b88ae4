"""One sweep replayed on recorded curves: Ray Tune's own scheduler and the Optuna searcher the
driver uses, driven by a discrete-event clock instead of training.

`max_concurrent` trials run at once. Each epoch of a trial takes its recorded seconds (plus the
emotion metrics' seconds on the epochs the space computes them), so trials reach ASHA's rungs in
the order they would with real concurrency and promotions stay asynchronous. A trial reports
what `sweeps.trainable` reports: the epoch, the objective's value (held between the emotion
metrics' epochs, as the trainable repeats them) and its running best, which the scheduler and the
searcher compare. It ends when the scheduler stops it, at `train.max_epochs`, or when the
trainer's early stopping (`train.patience` on `train.monitor`) would have ended it.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeps.curves import EPOCH_SECONDS, METRICS_SECONDS, Curve, CurveLookup
from sweeps.space import EMOTION_METRICS, GENERATION_METRICS, SweepSpec, to_tune_space
from sweeps.trainable import emotion_metrics_due
from sweeps.trials import best_key

SCHEDULERS = ("asha", "hyperband", "fifo")
SEARCHERS = ("tpe", "random")


@dataclass(frozen=True)
class Arm:
    """What one replayed sweep searches with. `hyperband` is Ray's AsyncHyperBandScheduler
    with `brackets` brackets (asynchronous Hyperband, Li et al. 2020); `asha` the same with
    one bracket, as the driver builds it."""

    scheduler: str = "asha"
    searcher: str = "tpe"
    grace_period: int = 1
    reduction_factor: float = 2
    brackets: int = 3
    tpe_startup_trials: int = 10

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: expected one of {SCHEDULERS}, got '{self.scheduler}'")
        if self.searcher not in SEARCHERS:
            raise ValueError(f"searcher: expected one of {SEARCHERS}, got '{self.searcher}'")

    @property
    def name(self) -> str:
        searcher = f"tpe(s{self.tpe_startup_trials})" if self.searcher == "tpe" else "random"
        if self.scheduler == "fifo":
            return f"{searcher}+fifo"
        brackets = f",b{self.brackets}" if self.scheduler == "hyperband" else ""
        return f"{searcher}+{self.scheduler}(g{self.grace_period},r{self.reduction_factor:g}{brackets})"


@dataclass(frozen=True)
class TrialOutcome:
    number: int  # order of proposal
    params: dict[str, Any]  # the recorded configuration it was charged as
    epochs: int  # epochs it ran
    stopped_by_scheduler: bool
    best: float  # its running best at its last epoch


@dataclass
class Replay:
    """One seed's sweep: after each reported epoch, the epochs spent so far, the simulated
    clock and the best value any trial had reached."""

    arm: Arm
    seed: int
    spent: list[int] = field(default_factory=list)
    clock: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    trials: list[TrialOutcome] = field(default_factory=list)


@dataclass
class _Running:
    number: int
    trial_id: str
    curve: Curve
    epoch: int = 0
    best: float = math.nan
    best_monitor: float = math.inf
    bad_epochs: int = 0


class _StubTrial:
    """What Tune's schedulers read of a trial here: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _scheduler(arm: Arm, spec: SweepSpec) -> TrialScheduler:
    metric, mode = best_key(spec.sweep.metric), spec.sweep.mode
    if arm.scheduler == "fifo":
        return FIFOScheduler()
    return AsyncHyperBandScheduler(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=spec.experiment.train.max_epochs,
        grace_period=arm.grace_period,
        reduction_factor=arm.reduction_factor,
        brackets=arm.brackets if arm.scheduler == "hyperband" else 1,
    )


def _searcher(arm: Arm, spec: SweepSpec, seed: int) -> ConcurrencyLimiter:
    if arm.searcher == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=arm.tpe_startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    limiter = ConcurrencyLimiter(OptunaSearch(sampler=sampler), spec.sweep.max_concurrent)
    # As tune.Tuner hands the searcher its metric and space (sweeps.tuner.build_tuner).
    limiter.set_search_properties(
        best_key(spec.sweep.metric), spec.sweep.mode, to_tune_space(spec.params)
    )
    return limiter


def _computes_metrics(epoch: int, every: int, last: bool) -> bool:
    """Whether the trainable computes the emotion metrics at `epoch`: a replayed trial starts
    at epoch 1 and is never resumed."""
    return every >= 1 and (epoch == 1 or emotion_metrics_due(epoch, every, last))


class _Clock:
    """Each running trial's next epoch end, earliest first."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, _Running]] = []

    def schedule(self, trial: _Running, seconds: float) -> None:
        heapq.heappush(self._queue, (self.now + seconds, trial.number, trial))

    def next(self) -> _Running | None:
        if not self._queue:
            return None
        self.now, _, trial = heapq.heappop(self._queue)
        return trial


class _Sweep:
    def __init__(self, spec: SweepSpec, lookup: CurveLookup, arm: Arm, seed: int) -> None:
        self.spec, self.lookup, self.arm = spec, lookup, arm
        self.train = spec.experiment.train
        self.every = spec.sweep.emotion_every
        self.metric = spec.sweep.metric
        self.sign = 1.0 if spec.sweep.mode == "min" else -1.0
        self.scheduler = _scheduler(arm, spec)
        self.searcher = _searcher(arm, spec, seed)
        self.clock = _Clock()
        self.replay = Replay(arm, seed)
        self.proposed = 0
        self.spent = 0
        self.best = math.nan

    def run(self) -> Replay:
        self._fill()
        while (trial := self.clock.next()) is not None:
            self._end_epoch(trial)
            self._fill()
        return self.replay

    def _fill(self) -> None:
        while self.proposed < self.spec.sweep.num_samples:
            trial_id = f"trial_{self.proposed:05d}"
            proposal = self.searcher.suggest(trial_id)
            if proposal is None:  # the concurrency limit
                return
            trial = _Running(self.proposed, trial_id, self.lookup.curve(proposal))
            self.proposed += 1
            self.scheduler.on_trial_add(None, _StubTrial(trial_id))
            self.clock.schedule(trial, self._epoch_seconds(trial, 1))

    def _epoch_seconds(self, trial: _Running, epoch: int) -> float:
        metrics = trial.curve.metrics
        seconds = metrics[EPOCH_SECONDS][epoch - 1]
        last = epoch == self.train.max_epochs
        if METRICS_SECONDS in metrics and _computes_metrics(epoch, self.every, last):
            seconds += metrics[METRICS_SECONDS][epoch - 1]
        return float(seconds)

    def _seen_value(self, trial: _Running, epoch: int, last: bool) -> float:
        """The objective as the trial reports it at `epoch`: between the emotion metrics'
        epochs the trainable repeats the last computed value."""
        values = trial.curve.metrics[self.metric]
        if self.every < 1 or self.metric not in EMOTION_METRICS + GENERATION_METRICS:
            return float(values[epoch - 1])
        computed = epoch
        while not _computes_metrics(computed, self.every, last and computed == epoch):
            computed -= 1
        return float(values[computed - 1])

    def _end_epoch(self, trial: _Running) -> None:
        trial.epoch += 1
        epoch = trial.epoch
        monitor = float(trial.curve.metrics[self.train.monitor][epoch - 1])
        if monitor < trial.best_monitor:
            trial.best_monitor, trial.bad_epochs = monitor, 0
        else:
            trial.bad_epochs += 1
        ends_itself = epoch >= self.train.max_epochs or trial.bad_epochs >= self.train.patience
        value = self._seen_value(trial, epoch, ends_itself)
        if math.isfinite(value) and not (self.sign * value >= self.sign * trial.best):
            trial.best = value
        result = {"epoch": epoch, "training_iteration": epoch, best_key(self.metric): trial.best}
        self.spent += 1
        if math.isfinite(trial.best) and not (self.sign * trial.best >= self.sign * self.best):
            self.best = trial.best
        self.replay.spent.append(self.spent)
        self.replay.clock.append(self.clock.now)
        self.replay.best.append(self.best)

        self.searcher.on_trial_result(trial.trial_id, result)
        decision = self.scheduler.on_trial_result(None, _StubTrial(trial.trial_id), result)
        stopped = decision == TrialScheduler.STOP and not ends_itself
        if stopped or ends_itself:
            self.scheduler.on_trial_complete(None, _StubTrial(trial.trial_id), result)
            self.searcher.on_trial_complete(trial.trial_id, result)
            self.replay.trials.append(
                TrialOutcome(trial.number, dict(trial.curve.params), epoch, stopped, trial.best)
            )
        else:
            self.clock.schedule(trial, self._epoch_seconds(trial, epoch + 1))


def replay_sweep(spec: SweepSpec, lookup: CurveLookup, arm: Arm, seed: int) -> Replay:
    """Replay `spec`'s sweep (its num_samples, max_concurrent, objective, budget, early
    stopping) with `arm`'s scheduler and searcher, the searcher seeded with `seed`."""
    # AsyncHyperBand picks each trial's bracket with numpy's global generator.
    np.random.seed(seed)
    return _Sweep(spec, lookup, arm, seed).run()


def arm_from_spec(spec: SweepSpec, **changes: Any) -> Arm:
    """The arm a space ships: ASHA and TPE with its grace period, reduction factor and TPE
    start-up count, with `changes` applied."""
    fields: Mapping[str, Any] = {
        "grace_period": spec.sweep.grace_period,
        "reduction_factor": spec.sweep.reduction_factor,
        "tpe_startup_trials": spec.sweep.tpe_startup_trials,
    }
    return Arm(**{**fields, **changes})


REFERENCE_ARM = Arm(scheduler="fifo", searcher="random")


def _quiet_optuna() -> None:
    """In a worker process: no log line per study created (one per replay)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def replay_arms(
    spec: SweepSpec,
    lookup: CurveLookup,
    arms: list[Arm],
    seeds: int,
    on_replay: Callable[[], None] = lambda: None,
    workers: int = 1,
) -> dict[str, list[Replay]]:
    """Each arm replayed with seeds 0..seeds-1, full-budget random search (the reference of
    sweeps.efficiency) first; `on_replay` is called after each replay (progress). With
    `workers` > 1, replays run in that many processes."""
    unique = {arm.name: arm for arm in [REFERENCE_ARM, *arms]}
    jobs = [(arm, seed) for arm in unique.values() for seed in range(seeds)]
    replays: dict[str, list[Replay]] = {name: [] for name in unique}
    if workers <= 1:
        for arm, seed in jobs:
            replays[arm.name].append(replay_sweep(spec, lookup, arm, seed))
            on_replay()
        return replays
    # Spawned: a forked child of a process that has run torch or Ray threads can hang.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_optuna) as pool:
        futures = [pool.submit(replay_sweep, spec, lookup, arm, seed) for arm, seed in jobs]
        for (arm, _), future in zip(jobs, futures, strict=True):
            replays[arm.name].append(future.result())
            on_replay()
    return replays
