"""The Ray Tune machinery of a sweep: the Optuna TPE searcher, the ASHA scheduler, the Tuner
that runs them over the sweep folder, and the compact console it reports to."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TextIO

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from sweeps.checkpoint_pruner import CheckpointPruner
from sweeps.console import ConsoleLayout, SweepConsole
from sweeps.space import SweepSettings, SweepSpec, to_tune_space
from sweeps.study import StudyLocation, SweepSearch
from sweeps.sweep_folder import TUNE_DIR
from sweeps.trials import at_best_key, best_key

# Seconds between Tune's saves of its experiment state (what --resume restores from); the CLI
# sets TUNE_GLOBAL_CHECKPOINT_S to it unless the environment does. Tune's automatic period (at
# least 10 s) would make a killed driver rerun up to 10 s of every trial and forget every trial
# started in those 10 s; the checkpoints a save names stay (sweeps.checkpoint_pruner).
TUNE_SAVE_PERIOD_S = 2


def build_tuner(
    spec: SweepSpec,
    sweep_dir: Path,
    study: StudyLocation,
    trainable: Any,
    callbacks: list[tune.Callback],
    console: SweepConsole | None,
) -> tune.Tuner:
    searcher = ConcurrencyLimiter(
        SweepSearch(
            study,
            sampler=_tpe(spec.sweep),
            constraints=spec.sweep.parsed_constraints(),
            objectives=searched_objectives(spec),
        ),
        max_concurrent=spec.sweep.max_concurrent,
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=spec.experiment.train.max_epochs,
        grace_period=spec.sweep.grace_period,
        reduction_factor=spec.sweep.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(spec.params),
        tune_config=tune.TuneConfig(
            # The trial's best epoch so far, not its last: see sweeps.trainable.objective_tracker.
            metric=best_key(spec.sweep.metric),
            mode=spec.sweep.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=spec.sweep.num_samples,
            # Trials are short: a fresh actor per trial costs far more than a reused one
            # (benchmarks/RESULTS_sweeps.md, benchmark 1). train_trial keeps no state.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(sweep_dir),
            # Tune keeps every checkpoint (no num_to_keep); the pruner deletes the superseded
            # ones once the saved experiment state no longer restores from them.
            callbacks=[*callbacks, CheckpointPruner()],
            failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
            verbose=1,
            progress_reporter=console,
            # With the compact console, each trial's output goes to stdout and stderr files in
            # its folder instead of the driver's console.
            log_to_file=console is not None,
            sync_config=tune.SyncConfig(sync_artifacts=console is not None),
        ),
    )


def searched_objectives(spec: SweepSpec) -> list[tuple[str, str]]:
    """A multi-objective sweep's result keys for Optuna: the first objective's best epoch so
    far, the others at that epoch (sweeps.trainable.objective_tracker); [] for one objective."""
    if not spec.sweep.multi_objective:
        return []
    (first, first_mode), *others = spec.sweep.objectives
    return [(best_key(first), first_mode)] + [(at_best_key(m), mode) for m, mode in others]


def _tpe(sweep: SweepSettings) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=sweep.tpe_startup_trials)


def sweep_console(spec: SweepSpec, stream: TextIO) -> SweepConsole:
    layout = ConsoleLayout(
        metric=spec.sweep.metric,
        params=tuple(k for k, v in spec.params.items() if isinstance(v, dict)),
        max_epochs=spec.experiment.train.max_epochs,
        num_samples=spec.sweep.num_samples,
        max_concurrent=spec.sweep.max_concurrent,
    )
    return SweepConsole(stream, layout)


def fit_without_restore_hint(tuner: tune.Tuner) -> None:
    """Run the tuner with Tune's own restore hint kept out of the log (_HideTuneRestoreHint)."""
    tune_logger = logging.getLogger("ray.tune.tune")
    hint = _HideTuneRestoreHint()
    tune_logger.addFilter(hint)
    try:
        tuner.fit()
    finally:
        tune_logger.removeFilter(hint)


class _HideTuneRestoreHint(logging.Filter):
    """After Ctrl-C Tune suggests its own API (`Tuner.restore(...)`); the driver names this
    project's command instead (SweepInterruptedError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()
