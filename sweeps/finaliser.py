"""The finaliser: best trial -> retrain -> evaluate -> export -> judge the audio -> report ->
register.

Everything lands in `<sweep>/final/` and in a `final` child run of the sweep's MLflow parent
run, and the retrained model is registered in the MLflow model registry. A sweep with emotion
metrics (`sweep.emotion_every` >= 1) also scores the retrained model with the sweep's emotion
judge on the test speakers (`emotion_evaluation`), and, with `finalise.audio_metrics`, scores
the WAVs it exports (`audio_evaluation`): what a user gets, heard by two judges and DNSMOS.

The steps live in sweeps.final_evaluation, sweeps.final_audio, sweeps.final_report and
sweeps.final_registration; this module runs them in order and keeps the MLflow runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from emovae.config import ConfigError, TrainConfig
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluate import evaluate_checkpoint
from emovae.judge import TrainedJudge
from emovae.train import TrainResult, train
from sweeps.final_audio import (
    AUDIO_METRICS_FILE,
    ExportedAudio,
    audio_evaluation,
    export_audio,
)
from sweeps.final_evaluation import (
    CONFUSION_FILE,
    EMOTION_METRICS_FILE,
    EmotionEvaluation,
    emotion_evaluation,
    final_judge,
)
from sweeps.final_registration import register_model
from sweeps.final_report import write_final_report
from sweeps.pareto import feasible_front, leaders
from sweeps.results import load_trial_records
from sweeps.space import FinaliseSettings, SweepSpec, trial_train_config
from sweeps.sweep_folder import TUNE_DIR, SweepState, read_state
from sweeps.sweep_outcome import no_best_reason
from sweeps.tracking import (
    TAG_ROLE,
    child_runs,
    create_child_run,
    flatten,
    log_params,
    tracking_client,
)
from sweeps.trials import TrialRecord

FINAL_DIR = "final"
PARETO_DIR = "pareto"  # in final/: the other Pareto points, one folder each (finalise.pareto)
FINISHED_FILE = "finished.json"  # in final/: written last, so a finalisation cut short has none

# What other modules import from here, though the steps now live in their own modules.
__all__ = [
    "AUDIO_METRICS_FILE",
    "CONFUSION_FILE",
    "EMOTION_METRICS_FILE",
    "FINAL_DIR",
    "FINISHED_FILE",
    "PARETO_DIR",
    "EmotionEvaluation",
    "ExportedAudio",
    "FinalResult",
    "audio_evaluation",
    "emotion_evaluation",
    "export_audio",
    "final_judge",
    "finalise",
    "is_finalised",
]


@dataclass
class FinalResult:
    run_id: str
    config: dict[str, Any]
    metrics: dict[str, float]  # test metrics, emotion and exported-audio metrics where computed
    checkpoint: Path
    samples_manifest: Path
    report: Path
    model_uri: str | None
    pareto: list[Path] = field(default_factory=list)  # other front points (finalise.pareto)


def is_finalised(sweep_dir: str | Path) -> bool:
    """Whether a finalisation of this sweep ran to its end."""
    return (Path(sweep_dir) / FINAL_DIR / FINISHED_FILE).is_file()


def finalise(sweep_dir: str | Path, device: str = "auto", progress: bool = False) -> FinalResult:
    """Retrain the sweep's best configuration, evaluate it on the test speakers, export and
    judge audio, write the report and register the model."""
    sweep_dir = Path(sweep_dir).resolve()
    state = read_state(sweep_dir)
    spec = state.spec()
    records = load_trial_records(sweep_dir / TUNE_DIR)
    constraints = spec.sweep.parsed_constraints()
    leading = leaders(records, spec.sweep.objectives, constraints, spec.finalise.pick)
    if not leading:
        infeasible = no_best_reason(spec, records)
        if infeasible is not None:
            raise ConfigError(
                f"{sweep_dir}: {infeasible} (see trials.csv, column feasible); nothing to finalise"
            )
        raise ConfigError(f"{sweep_dir}: no trial has a {spec.sweep.metric} value to pick from")
    best, best_score, _ = leading[0]
    # The other front points first: the chosen one's finalisation writes the finished mark.
    (sweep_dir / FINAL_DIR / FINISHED_FILE).unlink(missing_ok=True)
    pareto = _retrain_pareto_points(sweep_dir, state, spec, records, best, device, progress)
    result = _retrain_and_report(
        sweep_dir, state, spec, records, best, best_score, device, progress
    )
    return dataclasses.replace(result, pareto=pareto)


def _retrain_pareto_points(
    sweep_dir: Path,
    state: SweepState,
    spec: SweepSpec,
    records: list[TrialRecord],
    chosen: TrialRecord,
    device: str,
    progress: bool,
) -> list[Path]:
    """finalise.pareto: every other feasible point of the front, retrained and evaluated as
    the chosen one is (no report, not registered), each in its folder and MLflow run."""
    if not (spec.finalise.pareto and spec.sweep.multi_objective):
        return []
    front = feasible_front(records, spec.sweep.objectives, spec.sweep.parsed_constraints())
    points = [record for record, _ in front if record is not chosen]
    data, cache_dir = _final_data(spec)
    client = tracking_client(state.tracking_uri)
    folders = []
    for record in points:
        out = sweep_dir / FINAL_DIR / PARETO_DIR / record.trial_id
        config = _final_config(spec, record, device)
        run_id = create_child_run(
            client,
            state.experiment_id,
            state.parent_run_id,
            f"final-pareto-{record.trial_id}",
            {TAG_ROLE: "final-pareto", "pareto_trial_id": record.trial_id},
        )
        try:
            log_params(client, run_id, flatten("", dataclasses.asdict(config)))
            result = _retrain(config, data, out, client, run_id, progress)
            metrics_, emotion, judge = _evaluate(result, data, spec, cache_dir, out, config)
            audio = _export(result, data, spec.finalise, judge, cache_dir, out, config)
            _log_metrics(client, run_id, metrics_ | (emotion.metrics if emotion else {}) | audio)
            client.log_artifact(run_id, str(result.best_checkpoint), "checkpoint")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except BaseException as exc:
            _close_failed_run(client, run_id, exc)
            raise
        folders.append(out)
    return folders


def _retrain_and_report(
    sweep_dir: Path,
    state: SweepState,
    spec: SweepSpec,
    records: list[TrialRecord],
    best: TrialRecord,
    best_score: float,
    device: str,
    progress: bool,
) -> FinalResult:
    """The chosen configuration through every step, in the sweep's `final` run; the finished
    mark is written only once that run has ended well."""
    config = _final_config(spec, best, device)
    data, cache_dir = _final_data(spec)
    out = sweep_dir / FINAL_DIR
    client = tracking_client(state.tracking_uri)
    run_id = _open_final_run(client, state, out)
    try:
        _log_final_params(client, run_id, spec, config, best, best_score)
        result = _retrain(config, data, out, client, run_id, progress)
        metrics, emotion, judge = _evaluate(result, data, spec, cache_dir, out, config)
        audio = _export(result, data, spec.finalise, judge, cache_dir, out, config)
        logged = metrics | (emotion.metrics if emotion else {}) | audio
        _log_final_outputs(client, run_id, out, result, logged)
        report = write_final_report(records, spec, sweep_dir, out, config, metrics, emotion, audio)
        _log_report(client, state, run_id, report)
        model_uri = _register(spec.finalise, state, run_id, result, data)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except BaseException as exc:
        _close_failed_run(client, run_id, exc)
        raise
    (out / FINISHED_FILE).write_text(json.dumps({"run_id": run_id, "model_uri": model_uri}))
    return FinalResult(
        run_id,
        dataclasses.asdict(config),
        logged,
        result.best_checkpoint,
        out / "samples" / "manifest.csv",
        report,
        model_uri,
    )


def _final_config(spec: SweepSpec, best: TrialRecord, device: str) -> TrainConfig:
    return dataclasses.replace(
        trial_train_config(spec.experiment.train, best.params),
        max_epochs=spec.finalise.max_epochs or spec.experiment.train.max_epochs,
        num_threads=0,
        device=device,
    )


def _final_data(spec: SweepSpec) -> tuple[PreparedData, str]:
    """The sweep's data and its cache folder, absolute: the finaliser may run from elsewhere."""
    cache_dir = str(Path(spec.experiment.data.cache_dir).resolve())
    data = prepare_data(
        dataclasses.replace(spec.experiment.data, cache_dir=cache_dir), spec.experiment.features
    )
    return data, cache_dir


def _open_final_run(client: MlflowClient, state: SweepState, out: Path) -> str:
    """A new `final` run, after closing those that earlier finalisations left unfinished."""
    _close_unfinished_final_runs(client, state)
    (out / FINISHED_FILE).unlink(missing_ok=True)
    return create_child_run(
        client, state.experiment_id, state.parent_run_id, "final", {TAG_ROLE: "final"}
    )


def _close_unfinished_final_runs(client: MlflowClient, state: SweepState) -> None:
    """A finalisation killed mid-way left its `final` run RUNNING: closed as KILLED, so a sweep
    holds one finished `final` run per finalisation that ended."""
    for run in child_runs(client, state.experiment_id, state.parent_run_id):
        if run.data.tags.get(TAG_ROLE) == "final" and run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "emovae.error", "finalisation interrupted")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


def _close_failed_run(client: MlflowClient, run_id: str, exc: BaseException) -> None:
    """A final run cut short: the error as a tag; KILLED for Ctrl-C, else FAILED."""
    client.set_tag(run_id, "emovae.error", f"{type(exc).__name__}: {exc}"[:5000])
    status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    client.set_terminated(run_id, RunStatus.to_string(status))


def _log_final_params(
    client: MlflowClient,
    run_id: str,
    spec: SweepSpec,
    config: TrainConfig,
    best: TrialRecord,
    best_score: float,
) -> None:
    log_params(
        client,
        run_id,
        flatten("", dataclasses.asdict(config))
        | {"best_trial_id": best.trial_id, f"sweep_best_{spec.sweep.metric}": str(best_score)},
    )


def _retrain(
    config: TrainConfig,
    data: PreparedData,
    out: Path,
    client: MlflowClient,
    run_id: str,
    progress: bool,
) -> TrainResult:
    return train(
        config,
        data,
        out / "checkpoints",
        on_epoch=_epoch_logger(client, run_id),
        progress=progress,
    )


def _epoch_logger(client: MlflowClient, run_id: str):  # noqa: ANN202 - a closure
    def log(metrics: dict[str, float], folder: Path) -> None:
        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    return log


def _evaluate(
    result: TrainResult,
    data: PreparedData,
    spec: SweepSpec,
    cache_dir: str,
    out: Path,
    config: TrainConfig,
) -> tuple[dict[str, float], EmotionEvaluation | None, TrainedJudge | None]:
    """Test metrics (log-mels) and the judge's emotion metrics: (test metrics, emotion
    evaluation or None, the sweep's judge for the exported audio or None)."""
    checkpoint = result.best_checkpoint
    metrics = evaluate_checkpoint(
        checkpoint, data, out / "evaluation", result.history, config.device
    )
    emotion = None
    judge = None
    if spec.sweep.emotion_every >= 1:
        judge = final_judge(data, spec.judge, cache_dir, config.device)
        emotion = emotion_evaluation(
            checkpoint,
            data,
            judge,
            out / "evaluation",
            spec.finalise.emotion_samples,
            config.seed,
            spec.finalise,
            config.device,
        )
    return metrics, emotion, judge


def _export(
    result: TrainResult,
    data: PreparedData,
    settings: FinaliseSettings,
    judge: TrainedJudge | None,
    cache_dir: str,
    out: Path,
    config: TrainConfig,
) -> dict[str, float]:
    """The exported WAVs, and with finalise.audio_metrics their scores: wav_* metrics or {}."""
    checkpoint = result.best_checkpoint
    exported = export_audio(checkpoint, data, settings, out, config.seed, config.device)
    if not settings.audio_metrics:
        return {}
    return audio_evaluation(
        exported,
        data,
        judge,
        cache_dir,
        out / "evaluation",
        config.seed,
        settings.dnsmos_clips,
    )


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and v == v
        ],
    )


def _log_final_outputs(
    client: MlflowClient, run_id: str, out: Path, result: TrainResult, logged: dict[str, float]
) -> None:
    _log_metrics(client, run_id, logged)
    client.log_artifacts(run_id, str(out / "evaluation"), "evaluation")
    client.log_artifact(run_id, str(result.best_checkpoint), "checkpoint")
    client.log_artifacts(run_id, str(out / "samples"), "samples")


def _log_report(client: MlflowClient, state: SweepState, run_id: str, report: Path) -> None:
    """On the final run, and on the parent run where the sweep is browsed from."""
    client.log_artifacts(run_id, str(report.parent), "report")
    client.log_artifacts(state.parent_run_id, str(report.parent), "report")


def _register(
    settings: FinaliseSettings,
    state: SweepState,
    run_id: str,
    result: TrainResult,
    data: PreparedData,
) -> str | None:
    """The registered model's URI; None when finalise.register_model is off."""
    if not settings.register_model:
        return None
    return register_model(
        state.tracking_uri, run_id, result.best_checkpoint, data, settings.model_name
    )
