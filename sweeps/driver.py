"""The sweep driver: search space -> Ray Tune (Optuna TPE + ASHA) -> MLflow parent/child runs.

A sweep folder holds everything needed to resume or finalise it:
    sweep.json   the validated space, tracking URI, MLflow ids (written before any trial runs)
    optuna.journal  the Optuna study behind the search (or sweep.optuna_storage's database)
    tune/        Ray Tune's experiment state, trial results and checkpoints
    mlflow.db    the default MLflow store (sqlite), mlartifacts/ its artifacts
    trials.csv   one row per trial after the sweep
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import ray
from mlflow.entities import Dataset, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from emovae.config import ConfigError, DataConfig
from emovae.dataset import PreparedData, prepare_data
from emovae.judge import ensure_judge
from sweeps.cluster import (
    ClusterError,
    ResourceWait,
    ResourceWaitTimeout,
    check_resources,
    connect_ray,
)
from sweeps.console import LOG_FILE, RayLogFile, SweepConsole
from sweeps.databases import masked
from sweeps.pareto import feasible_front, leaders
from sweeps.results import load_trial_records
from sweeps.space import SweepSettings, SweepSpec, spec_from_dict, to_tune_space
from sweeps.study import (
    StudyLocation,
    SweepSearch,
    check_study,
    claim_study,
    search_distributions,
)
from sweeps.system_metrics import monitor_settings
from sweeps.tracking import (
    TAG_ROLE,
    MlflowTrialLogger,
    TrackingError,
    check_tracking_uri,
    child_runs,
    corpus_dataset,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    git_commit,
    log_dataset,
    log_learning_curves,
    log_params,
    mark_interrupted_trials,
    tag_feasibility,
    tag_forgotten_trials,
    tracking_client,
)
from sweeps.trainable import best_key, emotion_settings, judge_cache_dir, train_trial
from sweeps.trials import (
    Constraint,
    TrialRecord,
    TrialStatus,
    at_best_key,
    best_value,
    epochs_run,
    feasible,
    ranked,
    values_at_best,
)
from sweeps.warm_start import (
    WarmStart,
    WarmStartError,
    WarmStartRequest,
    seed_study,
    warm_start_points,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "sweep.json"
BACKLOG_FILE = "mlflow_backlog.jsonl"  # MLflow operations a server outage kept from logging
TUNE_DIR = "tune"


class SweepFailedError(RuntimeError):
    """Every trial of the sweep failed, or none met the sweep's constraints."""


class NoFeasibleTrialError(SweepFailedError):
    """Trials ran and reported the objective, but none met `sweep.constraints`: nothing to
    finalise, though no trial failed."""


class SweepInterruptedError(RuntimeError):
    """The driver was stopped (Ctrl-C, SIGTERM) before every trial had run."""


def resume_command(sweep_dir: Path) -> str:
    return f"python sweeps/run.py --out {sweep_dir} --resume"


@dataclass
class SweepResult:
    sweep_dir: Path
    metric: str
    mode: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_value: float | None
    tracking_uri: str
    parent_run_id: str
    # A `--resume` found every trial already run: nothing was trained or logged again.
    already_complete: bool = False
    experiment_id: str = ""
    # sweep.constraints: `best` is the best trial that meets them (None: none does).
    constraints: tuple[Constraint, ...] = ()


@dataclass
class SweepState:
    """What `--resume` and the finaliser read back from sweep.json."""

    space: dict[str, Any]  # the validated YAML mapping (overrides applied)
    name: str
    source: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str = ""  # owner mark of the sweep's Optuna study ("": a folder from before it)

    def spec(self) -> SweepSpec:
        return spec_from_dict(self.space, self.name, self.source)


@dataclass
class SweepPlan:
    """What the checks before Ray found; nothing is written yet."""

    spec: SweepSpec
    state: SweepState | None  # None: a new sweep
    study: StudyLocation
    warm: WarmStart | None = None


def read_state(sweep_dir: Path) -> SweepState:
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir}: not a sweep folder ({STATE_FILE} missing)")
    return SweepState(**json.loads(path.read_text()))


def _write_state(sweep_dir: Path, state: SweepState) -> None:
    path = sweep_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(state), indent=1))
    os.replace(tmp, path)


def _absolute_cache(spec: SweepSpec) -> dict[str, Any]:
    """The experiment constants as plain dicts, with the cache path absolute for Ray workers."""
    experiment = dataclasses.asdict(spec.experiment)
    experiment["data"]["cache_dir"] = str(Path(experiment["data"]["cache_dir"]).resolve())
    if experiment["data"]["path"] != "synthetic":
        experiment["data"]["path"] = str(Path(experiment["data"]["path"]).resolve())
    return experiment


def _start_tracking(
    spec: SweepSpec, sweep_dir: Path, tracking_uri: str, experiment_name: str, sweep_id: str
) -> SweepState:
    check_tracking_uri(tracking_uri)
    client = tracking_client(tracking_uri)
    # A local store keeps artifacts inside the sweep folder, not in the current directory.
    artifacts = None if tracking_uri.startswith("http") else (sweep_dir / "mlartifacts").as_uri()
    experiment_id = ensure_experiment(client, experiment_name, artifacts)
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep-{sweep_dir.name}",
        tags={TAG_ROLE: "sweep", "git_commit": git_commit(REPO_ROOT), "space": spec.name},
    )
    return SweepState(
        space=spec.raw,
        name=spec.name,
        source=spec.source,
        tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent.info.run_id,
        sweep_id=sweep_id,
    )


def _log_sweep_params(
    client: MlflowClient, state: SweepState, spec: SweepSpec, study: StudyLocation, data: Any
) -> None:
    params = flatten("sweep", dataclasses.asdict(spec.sweep))
    params |= flatten("", {k: v for k, v in spec.raw.items() if k != "sweep"})
    params |= {
        # TPE samples at random until tpe_startup_trials have finished (warm-start ones count).
        "searcher": (
            f"OptunaSearch(TPESampler(seed={spec.sweep.seed}, "
            f"n_startup_trials={spec.sweep.tpe_startup_trials}))"
            + (
                f" with constraints {', '.join(map(str, spec.sweep.parsed_constraints()))}"
                if spec.sweep.constraints
                else ""
            )
        ),
        "optuna_study": study.describe(),
        "scheduler": (
            f"ASHA(time_attr=epoch, max_t={spec.experiment.train.max_epochs}, "
            f"grace_period={spec.sweep.grace_period}, reduction_factor={spec.sweep.reduction_factor})"
            # ASHA ranks one number: a multi-objective sweep's trials by their first objective.
            + (f" on {spec.sweep.metric}" if spec.sweep.multi_objective else "")
        ),
        "data_fingerprint": data.fingerprint,
        "data_n_train": str(len(data.train)),
        "data_n_val": str(len(data.val)),
        "data_n_test": str(len(data.test)),
        "data_labels": ",".join(data.label_names),
    }
    log_params(client, state.parent_run_id, params)
    client.log_dict(state.parent_run_id, spec.raw, "space.yaml")
    if data.bad_files:
        client.log_dict(state.parent_run_id, {"bad_files": data.bad_files}, "bad_files.json")


def _dataset(spec: SweepSpec, data: PreparedData) -> Dataset:
    """The corpus for MLflow's Dataset column: `synthetic`, or its folder's last two parts
    (EmoDB's `emodb/wav`)."""
    synthetic = spec.experiment.data.path == "synthetic"
    name = "synthetic" if synthetic else "/".join(Path(data.corpus_path).parts[-2:])
    counts = {
        split: {
            emotion: int((part.labels == index).sum())
            for index, emotion in enumerate(data.label_names)
        }
        for split, part in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    return corpus_dataset(name, data.fingerprint, data.corpus_path, counts)


def _prepare_judge(
    client: MlflowClient,
    state: SweepState,
    spec: SweepSpec,
    data: PreparedData,
    stage: Callable[[str], None] = lambda message: None,
) -> None:
    """With emotion metrics on, train (or load) the sweep's emotion judge once, before any
    trial, so trials only load it; log its settings and its real-test ceiling to the parent run.
    """
    if spec.sweep.emotion_every < 1:
        return
    stage("Emotion judge: training it once for this data, or loading it from the cache")
    cache_dir = judge_cache_dir(Path(spec.experiment.data.cache_dir).resolve())
    judge = ensure_judge(data, cache_dir, spec.judge)
    log_params(client, state.parent_run_id, flatten("judge", dataclasses.asdict(spec.judge)))
    # The judge's accuracy on real test speakers: the ceiling for the VAE's outputs.
    for name, value in (
        ("judge_test_acc", judge.test_accuracy),
        ("judge_test_uar", judge.test_uar),
    ):
        if value == value:  # NaN (no test clips) is left out, as MLflow charts cannot show it
            client.log_metric(state.parent_run_id, name, value)


def _trial_experiment(
    spec: SweepSpec, experiment: dict[str, Any], state: SweepState
) -> dict[str, Any]:
    """What each trial receives: the experiment constants, the objective (whose running best
    it reports), the emotion settings when the sweep computes emotion metrics, and where to
    log system metrics when it does. A copy: the driver logs the constants as every child
    run's params, and the judge's settings belong to the parent run."""
    objective = {"metric": spec.sweep.metric, "mode": spec.sweep.mode}
    if spec.sweep.multi_objective:
        objective["also"] = [metric for metric, _ in spec.sweep.objectives[1:]]
    trial = experiment | {"objective": objective}
    if spec.sweep.constraints:
        trial |= {"constraints": dict(spec.sweep.constraints)}
    if spec.sweep.emotion_every >= 1:
        trial |= {"emotion": emotion_settings(spec.sweep.emotion_every, spec.judge)}
    if spec.sweep.system_metrics:
        trial |= {
            "system_metrics": monitor_settings(
                state.tracking_uri,
                state.experiment_id,
                state.parent_run_id,
                spec.sweep.system_metrics_interval_s,
            )
        }
    return trial


def _trainable(spec: SweepSpec, experiment: dict[str, Any], state: SweepState) -> Any:
    resources = {"cpu": spec.sweep.cpus_per_trial, "gpu": spec.sweep.gpus_per_trial}
    return tune.with_resources(
        tune.with_parameters(
            train_trial,
            experiment=_trial_experiment(spec, experiment, state),
            cpus_per_trial=spec.sweep.cpus_per_trial,
        ),
        resources,
    )


def _tuner(
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
            objectives=_searched_objectives(spec),
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
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.sweep.max_failures),
            # Tune deletes a trial's older checkpoints as soon as a new one registers, but
            # snapshots its experiment state (what --resume reads) a moment later: with only
            # one kept, a driver killed in between resumes a trial from a deleted checkpoint.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1,
            progress_reporter=console,
            # With the compact console, each trial's output goes to stdout and stderr files in
            # its folder instead of the driver's console.
            log_to_file=console is not None,
            sync_config=tune.SyncConfig(sync_artifacts=console is not None),
        ),
    )


def _searched_objectives(spec: SweepSpec) -> list[tuple[str, str]]:
    """A multi-objective sweep's result keys for Optuna: the first objective's best epoch so
    far, the others at that epoch (sweeps.trainable.objective_tracker); [] for one objective."""
    if not spec.sweep.multi_objective:
        return []
    (first, first_mode), *others = spec.sweep.objectives
    return [(best_key(first), first_mode)] + [(at_best_key(m), mode) for m, mode in others]


def _tpe(sweep: SweepSettings) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=sweep.tpe_startup_trials)


def _log_outcome(
    client: MlflowClient,
    state: SweepState,
    spec: SweepSpec,
    trials: list[TrialRecord],
    best: TrialRecord | None,
    best_score: float | None,
    csv_path: Path,
) -> None:
    client.log_artifact(state.parent_run_id, str(csv_path))
    for status in (TrialStatus.FINISHED, TrialStatus.KILLED_BY_ASHA, TrialStatus.FAILED):
        count = sum(t.status == status for t in trials)
        client.set_tag(state.parent_run_id, f"trials.{status.lower()}", str(count))
    if best is None:
        reason = _no_best_reason(spec, trials) or "every trial failed"
        client.set_tag(state.parent_run_id, "emovae.error", reason[:5000])
        client.set_terminated(state.parent_run_id, RunStatus.to_string(RunStatus.FAILED))
        return
    client.log_metric(state.parent_run_id, f"best_{spec.sweep.metric}", best_score)
    # Tags, not params: a resumed sweep may find a new best, and MLflow params are write-once.
    for key, value in flatten("best", best.params | {"trial_id": best.trial_id}).items():
        client.set_tag(state.parent_run_id, key, value)
    client.set_terminated(state.parent_run_id, RunStatus.to_string(RunStatus.FINISHED))


def _write_trials_csv(sweep_dir: Path, trials: list[TrialRecord], spec: SweepSpec) -> Path:
    """One row per trial: its best value of the (first) objective; with several objectives,
    the others at that epoch and whether it is on the Pareto front; with constraints,
    `feasible` and each constrained metric at that epoch (`at_best_<metric>`)."""
    import pandas as pd

    (metric, mode), *others = spec.sweep.objectives
    constraints = spec.sweep.parsed_constraints()
    also = [m for m, _ in others]
    at_best = also + [c.metric for c in constraints if c.metric not in also]
    on_front = set()
    if others:
        front = feasible_front(trials, spec.sweep.objectives, constraints)
        on_front = {record.trial_id for record, _ in front}
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            "epochs": epochs_run(t),
            f"best_{metric}": best_value(t, metric, mode),
        }
        values = values_at_best(t, metric, mode, at_best) if at_best else {}
        row |= {at_best_key(name): value for name, value in values.items()}
        if others:
            row["pareto"] = t.trial_id in on_front
        if constraints:
            row["feasible"] = feasible(t, metric, mode, constraints)
        row |= {f"param.{k}": v for k, v in t.params.items()}
        row["error"] = (t.error or "").splitlines()[-1] if t.error else ""
        rows.append(row)
    path = sweep_dir / "trials.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _sweep_complete(tune_path: Path, num_samples: int) -> list[TrialRecord] | None:
    """The trial records when every trial of the sweep has ended, else None."""
    if not tune.Tuner.can_restore(str(tune_path)):
        return None
    trials = load_trial_records(tune_path)
    if len(trials) < num_samples or any(t.status == TrialStatus.INTERRUPTED for t in trials):
        return None
    return trials


def _open_sweep(
    spec: SweepSpec | None,
    sweep_dir: Path,
    tracking_uri: str | None,
    resume: bool,
    warm_start: WarmStartRequest | None,
) -> SweepPlan:
    """The sweep's space, its stored state on resume, its study, the warm start's trials;
    checks only, writes nothing."""
    if resume:
        if warm_start is not None:
            raise WarmStartError(
                f"--warm-start {warm_start.source}: only a new sweep starts warm; a resumed "
                "sweep continues the study it has"
            )
        state = read_state(sweep_dir)
        check_tracking_uri(state.tracking_uri)
        spec = state.spec()
        study = StudyLocation(str(sweep_dir), state.sweep_id, spec.sweep.optuna_storage)
        if state.sweep_id:
            check_study(study, resuming=True)
        return SweepPlan(spec, state, study)
    if spec is None:
        raise ValueError("a new sweep needs a search space")
    # A folder whose sweep never started a trial (it failed before) may be started again.
    if (sweep_dir / STATE_FILE).exists() and tune.Tuner.can_restore(str(sweep_dir / TUNE_DIR)):
        raise ConfigError(
            f"{sweep_dir}: a sweep already exists here; pass --resume to continue it "
            "or --out to start a new one"
        )
    check_tracking_uri(tracking_uri or default_tracking_uri(sweep_dir))  # a typo: no folder
    study = StudyLocation(str(sweep_dir), uuid.uuid4().hex, spec.sweep.optuna_storage)
    check_study(study, resuming=False)
    warm = _read_warm_start(warm_start, spec) if warm_start is not None else None
    return SweepPlan(spec, None, study, warm)


def _read_warm_start(request: WarmStartRequest, spec: SweepSpec) -> WarmStart:
    source = Path(request.source).resolve()
    if not (source / STATE_FILE).is_file() or not tune.Tuner.can_restore(str(source / TUNE_DIR)):
        raise WarmStartError(
            f"--warm-start {request.source}: not a sweep folder (expected {STATE_FILE} and "
            f"{TUNE_DIR}/ with trials, as sweeps/run.py writes them)"
        )
    return warm_start_points(
        str(source),
        read_state(source).spec(),
        load_trial_records(source / TUNE_DIR),
        spec,
        search_distributions(spec.params),
        request.skip_incompatible,
    )


def _start_study(plan: SweepPlan, state: SweepState, stage: Callable[[str], None]) -> None:
    """A new sweep's study, seeded with the warm start's trials; recorded on the parent run."""
    study = claim_study(plan.study, [mode for _, mode in plan.spec.sweep.objectives])
    if plan.warm is None:
        return
    seed_study(study, plan.warm, search_distributions(plan.spec.params))
    stage(
        f"Warm start: {len(plan.warm.points)} trials of {plan.warm.source} seed the search"
        + (f"; left out: {'; '.join(plan.warm.skipped)}" if plan.warm.skipped else "")
    )
    client = tracking_client(state.tracking_uri)
    client.set_tag(state.parent_run_id, "warm_start_from", plan.warm.source)
    client.set_tag(state.parent_run_id, "warm_start_trials", str(len(plan.warm.points)))
    if plan.warm.skipped:
        client.log_dict(state.parent_run_id, {"skipped": plan.warm.skipped}, "warm_start.json")


def _close_parent(state: SweepState, status: RunStatus, reason: str) -> None:
    """Best effort: the error being raised matters more than MLflow's answer."""
    try:
        client = tracking_client(state.tracking_uri)
        client.set_tag(state.parent_run_id, "emovae.error", reason[:5000])
        client.set_terminated(state.parent_run_id, RunStatus.to_string(status))
    except Exception:  # noqa: S110 - MLflow down: the run stays as it was, the error still raises
        pass


def run_sweep(
    spec: SweepSpec | None,
    sweep_dir: str | Path,
    tracking_uri: str | None = None,
    address: str | None = None,
    resume: bool = False,
    on_stage: Callable[[str], None] | None = None,
    progress: TextIO | None = None,
    warm_start: WarmStartRequest | None = None,
) -> SweepResult:
    """Run (or with `resume`, continue) the sweep in `sweep_dir`. On resume the space stored in
    the folder is used, so a resumed sweep is the sweep that was started; a sweep whose
    trials have all ended is returned as it is (`already_complete`). `on_stage` hears what the
    driver is doing before the trials start.

    `progress`: a stream for the compact trial table (`sweeps.console`; Tune's classic output
    engine, `RAY_AIR_NEW_OUTPUT=0`); Ray's logs then go to `LOG_FILE` in the sweep folder and
    each trial's output to its own folder. None: Ray Tune's own console output.

    `warm_start`: a new sweep's search starts from an earlier sweep's finished trials
    (sweeps.warm_start)."""
    sweep_dir = Path(sweep_dir).resolve()
    plan = _open_sweep(spec, sweep_dir, tracking_uri, resume, warm_start)
    if progress is None:
        return _run_sweep(plan, sweep_dir, tracking_uri, address, resume, on_stage, None, None)
    with RayLogFile(sweep_dir / LOG_FILE) as logs:
        return _run_sweep(plan, sweep_dir, tracking_uri, address, resume, on_stage, progress, logs)


def _run_sweep(
    plan: SweepPlan,
    sweep_dir: Path,
    tracking_uri: str | None,
    address: str | None,
    resume: bool,
    on_stage: Callable[[str], None] | None,
    progress: TextIO | None,
    logs: RayLogFile | None,
) -> SweepResult:
    stage = on_stage or (lambda message: None)
    tune_path = sweep_dir / TUNE_DIR
    spec, state = plan.spec, plan.state
    if state is not None:
        trials = _sweep_complete(tune_path, spec.sweep.num_samples)
        if trials is not None:
            return _result(spec, state, sweep_dir, trials, already_complete=True)
    if spec.experiment.data.path == "synthetic":
        stage(
            "Training on the built-in synthetic corpus; real data: "
            "--set data.path=/path/to/emodb/wav (or a RAVDESS folder)"
        )

    started_ray = connect_ray(address, log_to_driver=progress is None)
    if logs is not None:
        logs.attach()  # ray.init emptied the "ray" logger's handlers
    try:
        resource_wait = check_resources(spec, address, stage)
        console = _console(spec, progress) if progress else None
        if state is None:
            uri = tracking_uri or default_tracking_uri(sweep_dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            state = _start_tracking(
                spec, sweep_dir, uri, f"emovae-{spec.name}", plan.study.sweep_id
            )
            _write_state(sweep_dir, state)
            _start_study(plan, state, stage)
        try:
            _fit(spec, state, plan.study, sweep_dir, resume, resource_wait, console, stage)
        except ResourceWaitTimeout as exc:
            _close_parent(state, RunStatus.FAILED, str(exc))
            raise ClusterError(str(exc)) from exc
        except KeyboardInterrupt:
            _close_parent(state, RunStatus.KILLED, "interrupted before the sweep's trials ran")
            raise
        except Exception as exc:
            _close_parent(state, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        if started_ray:
            ray.shutdown()

    trials = load_trial_records(tune_path)
    interrupted = [t for t in trials if t.status == TrialStatus.INTERRUPTED]
    if interrupted or len(trials) < spec.sweep.num_samples:
        _stop_interrupted(spec, state, sweep_dir, trials, len(interrupted))
    result = _result(spec, state, sweep_dir, trials)
    _record_outcome(spec, state, sweep_dir, result)
    return result


def _fit(
    spec: SweepSpec,
    state: SweepState,
    study: StudyLocation,
    sweep_dir: Path,
    resume: bool,
    resource_wait: ResourceWait | None,
    console: SweepConsole | None,
    stage: Callable[[str], None],
) -> None:
    """Data, judge and MLflow parent run, then Ray Tune: a new tuner, or the stored one."""
    experiment = _absolute_cache(spec)
    # Extract features (and generate the synthetic corpus) once, before trials read the cache.
    stage(f"Preparing features in {experiment['data']['cache_dir']} (cached after the first run)")
    data = prepare_data(DataConfig(**experiment["data"]), spec.experiment.features)
    dataset = _dataset(spec, data)
    client = tracking_client(state.tracking_uri)
    client.update_run(state.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    _log_sweep_params(client, state, spec, study, data)
    log_dataset(client, state.parent_run_id, dataset)
    _prepare_judge(client, state, spec, data, stage)
    stage(
        f"Starting the sweep: {spec.sweep.num_samples} trials; MLflow: {masked(state.tracking_uri)}"
    )

    trainable = _trainable(spec, experiment, state)
    tune_path = sweep_dir / TUNE_DIR
    if resume and tune.Tuner.can_restore(str(tune_path)):
        tuner = tune.Tuner.restore(
            str(tune_path), trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        base_params = flatten("", {k: v for k, v in experiment.items() if k != "train"})
        base_params |= {k: str(v) for k, v in experiment["train"].items() if k not in spec.params}
        logger = MlflowTrialLogger(
            state.tracking_uri,
            state.experiment_id,
            state.parent_run_id,
            base_params,
            backlog_path=str(sweep_dir / BACKLOG_FILE),
            flush_every_s=spec.sweep.mlflow_flush_s,
            dataset=dataset,
            # The trial finds its run to log system metrics into: create it at the start.
            eager_runs=spec.sweep.system_metrics,
        )
        callbacks = [logger] + ([resource_wait] if resource_wait else [])
        tuner = _tuner(spec, sweep_dir, study, trainable, callbacks, console)
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


def _console(spec: SweepSpec, stream: TextIO) -> SweepConsole:
    return SweepConsole(
        stream,
        metric=spec.sweep.metric,
        best_metric=best_key(spec.sweep.metric),
        mode=spec.sweep.mode,
        params=[k for k, v in spec.params.items() if isinstance(v, dict)],
        max_epochs=spec.experiment.train.max_epochs,
        num_samples=spec.sweep.num_samples,
        max_concurrent=spec.sweep.max_concurrent,
    )


def _stop_interrupted(
    spec: SweepSpec,
    state: SweepState,
    sweep_dir: Path,
    trials: list[TrialRecord],
    n_interrupted: int,
) -> None:
    """A driver stopped mid-sweep (Ctrl-C, SIGTERM): record what ran, finalise nothing."""
    csv_path = _write_trials_csv(sweep_dir, trials, spec)
    ended = len(trials) - n_interrupted
    not_started = spec.sweep.num_samples - len(trials)
    summary = (
        f"{ended} of {spec.sweep.num_samples} trials ended, {n_interrupted} interrupted "
        f"(running or queued), {not_started} not proposed yet"
    )
    try:
        client = tracking_client(state.tracking_uri)
        runs = child_runs(client, state.experiment_id, state.parent_run_id)
        cut_short = {t.trial_id for t in trials if t.status == TrialStatus.INTERRUPTED}
        mark_interrupted_trials(client, runs, cut_short)
    except Exception:  # noqa: S110 - MLflow down: the runs stay as they were; resume fixes them
        pass
    _close_parent(state, RunStatus.KILLED, f"interrupted: {summary}")
    raise SweepInterruptedError(
        f"the sweep was interrupted: {summary} (trials so far: {csv_path}); nothing was "
        f"finalised. Continue it with: {resume_command(sweep_dir)}"
    )


def _result(
    spec: SweepSpec,
    state: SweepState,
    sweep_dir: Path,
    trials: list[TrialRecord],
    already_complete: bool = False,
) -> SweepResult:
    constraints = spec.sweep.parsed_constraints()
    leading = leaders(trials, spec.sweep.objectives, constraints, spec.finalise.pick)
    best, best_score = (leading[0][0], leading[0][1]) if leading else (None, None)
    return SweepResult(
        sweep_dir,
        spec.sweep.metric,
        spec.sweep.mode,
        trials,
        best,
        best_score,
        state.tracking_uri,
        state.parent_run_id,
        already_complete,
        state.experiment_id,
        constraints,
    )


def _no_best_reason(spec: SweepSpec, trials: list[TrialRecord]) -> str | None:
    """When trials have a value but none meets the constraints: a sentence saying so, with how
    close the trials came to each bound; else None (no trial has a value: they failed)."""
    constraints = spec.sweep.parsed_constraints()
    metric, mode = spec.sweep.metric, spec.sweep.mode
    scored = [record for record, _, _ in ranked(trials, metric, mode)]
    if not constraints or not scored:
        return None
    reached = []
    for constraint in constraints:
        values = [values_at_best(t, metric, mode, [constraint.metric]) for t in scored]
        found = [v[constraint.metric] for v in values if v[constraint.metric] is not None]
        if constraint.operator in (">=", ">"):
            closest = f"the most any trial reached: {max(found):g}" if found else "no value"
        else:
            closest = f"the least any trial reached: {min(found):g}" if found else "no value"
        reached.append(f"{constraint} ({closest})")
    return (
        f"no trial met the constraints, judged at each trial's best epoch of {metric}: "
        f"{'; '.join(reached)}; {len(scored)} of {len(trials)} trials reported {metric}. "
        "Relax sweep.constraints or widen the search"
    )


def _record_outcome(
    spec: SweepSpec, state: SweepState, sweep_dir: Path, result: SweepResult
) -> None:
    """trials.csv, learning curves and the parent run's outcome; errors when MLflow missed
    part of the sweep or every trial failed."""
    trials = result.trials
    constraints = spec.sweep.parsed_constraints()
    csv_path = _write_trials_csv(sweep_dir, trials, spec)
    backlog = sweep_dir / BACKLOG_FILE
    unlogged = (
        f"; trial logging that never reached it is listed in {backlog}"
        if backlog.exists() and backlog.stat().st_size
        else ""
    )
    client = tracking_client(state.tracking_uri)
    try:
        histories = {t.trial_id: t.history for t in trials}
        runs = child_runs(client, state.experiment_id, state.parent_run_id)
        log_learning_curves(client, runs, histories)
        tag_forgotten_trials(client, runs, set(histories))
        if constraints:
            verdicts = {
                t.trial_id: feasible(t, spec.sweep.metric, spec.sweep.mode, constraints)
                for t in trials
            }
            tag_feasibility(client, runs, verdicts)
        _log_outcome(client, state, spec, trials, result.best, result.best_value, csv_path)
    except Exception as exc:  # the sweep's results are on disk whatever MLflow says now
        reason = f"{type(exc).__name__}: {exc}"[:300]
        raise TrackingError(
            f"the sweep finished (results: {csv_path}) but MLflow at {masked(state.tracking_uri)} "
            f"failed while recording it ({reason}){unlogged}"
        ) from exc
    if unlogged:
        raise TrackingError(
            f"the sweep finished (results: {csv_path}) but MLflow at {masked(state.tracking_uri)} "
            f"missed some of it{unlogged}"
        )
    if result.best is None:
        infeasible = _no_best_reason(spec, trials)
        if infeasible is not None:
            raise NoFeasibleTrialError(f"{infeasible} (trials: {csv_path}); nothing was finalised.")
        first_error = next((t.error for t in trials if t.error), "no trial reported a result")
        raise SweepFailedError(f"all {len(trials)} trials failed; first error:\n{first_error}")
