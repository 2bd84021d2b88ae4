"""The sweep driver: search space -> Ray Tune (Optuna TPE + ASHA) -> MLflow parent/child runs.

The sweep folder and its resume bookkeeping: sweeps.sweep_folder; the Tuner it runs:
sweeps.tuner; what the sweep ended with: sweeps.sweep_outcome.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import ray
from mlflow.entities import Dataset, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from emovae.config import DataConfig
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluation.sample_audio import real_egemaps
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
from sweeps.results import load_trial_records
from sweeps.space import SweepSpec, sample_audio_vocoder
from sweeps.study import StudyLocation, claim_study, search_distributions
from sweeps.sweep_folder import (
    BACKLOG_FILE,
    STATE_FILE,
    TUNE_DIR,
    SweepPlan,
    SweepState,
    open_sweep,
    read_state,
    resume_command,
    sweep_complete,
    write_state,
)
from sweeps.sweep_outcome import (
    NoFeasibleTrialError,
    SweepFailedError,
    SweepInterruptedError,
    SweepResult,
    close_parent,
    no_best_reason,
    record_outcome,
    stop_interrupted,
    sweep_result,
    write_trials_csv,
)
from sweeps.system_metrics import monitor_settings
from sweeps.tracking import (
    TAG_ROLE,
    check_tracking_uri,
    corpus_dataset,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    git_commit,
    log_dataset,
    log_params,
    tracking_client,
)
from sweeps.trainable import emotion_settings, judge_cache_dir, train_trial
from sweeps.trial_logger import MlflowTrialLogger
from sweeps.trials import TrialStatus
from sweeps.tuner import build_tuner, fit_without_restore_hint, sweep_console
from sweeps.warm_start import WarmStartRequest, seed_study

REPO_ROOT = Path(__file__).resolve().parents[1]

# What other modules import from here, though most of it now lives in the modules the driver
# was split into.
__all__ = [
    "BACKLOG_FILE",
    "REPO_ROOT",
    "STATE_FILE",
    "TUNE_DIR",
    "NoFeasibleTrialError",
    "SweepFailedError",
    "SweepInterruptedError",
    "SweepPlan",
    "SweepResult",
    "SweepState",
    "read_state",
    "resume_command",
    "run_sweep",
]
# tests/test_constraints.py imports these under the names they had before the split.
_no_best_reason = no_best_reason
_write_trials_csv = write_trials_csv


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
    data_cache = Path(spec.experiment.data.cache_dir).resolve()
    judge = ensure_judge(data, judge_cache_dir(data_cache), spec.judge)
    if sample_audio_vocoder(spec.sweep, spec.finalise) is not None:
        # Once here, not in each of the first concurrent trials.
        stage("eGeMAPS of the real training and validation clips, for the samples' audio metric")
        real_egemaps(data, data_cache)
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
        vocoder = sample_audio_vocoder(spec.sweep, spec.finalise)
        trial |= {"emotion": emotion_settings(spec.sweep.emotion_every, spec.judge, vocoder)}
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
    plan = open_sweep(spec, sweep_dir, tracking_uri, resume, warm_start)
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
        trials = sweep_complete(tune_path, spec.sweep.num_samples)
        if trials is not None:
            return sweep_result(spec, state, sweep_dir, trials, already_complete=True)
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
        console = sweep_console(spec, progress) if progress else None
        if state is None:
            uri = tracking_uri or default_tracking_uri(sweep_dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            state = _start_tracking(
                spec, sweep_dir, uri, f"emovae-{spec.name}", plan.study.sweep_id
            )
            write_state(sweep_dir, state)
            _start_study(plan, state, stage)
        try:
            _fit(spec, state, plan.study, sweep_dir, resume, resource_wait, console, stage)
        except ResourceWaitTimeout as exc:
            close_parent(state, RunStatus.FAILED, str(exc))
            raise ClusterError(str(exc)) from exc
        except KeyboardInterrupt:
            close_parent(state, RunStatus.KILLED, "interrupted before the sweep's trials ran")
            raise
        except Exception as exc:
            close_parent(state, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        if started_ray:
            ray.shutdown()

    trials = load_trial_records(tune_path)
    interrupted = [t for t in trials if t.status == TrialStatus.INTERRUPTED]
    if interrupted or len(trials) < spec.sweep.num_samples:
        stop_interrupted(spec, state, sweep_dir, trials, len(interrupted))
    result = sweep_result(spec, state, sweep_dir, trials)
    # This module's name, not sweep_outcome's: benchmarks/bench_sweeps.py patches it here.
    record_outcome(spec, state, sweep_dir, result)
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
        tuner = build_tuner(spec, sweep_dir, study, trainable, callbacks, console)
    fit_without_restore_hint(tuner)
