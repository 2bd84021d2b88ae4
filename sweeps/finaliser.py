"""The finaliser: best trial -> retrain -> evaluate -> export -> judge the audio -> report ->
register.

Everything lands in `<sweep>/final/` and in a `final` child run of the sweep's MLflow parent
run, and the retrained model is registered in the MLflow model registry. A sweep with emotion
metrics (`sweep.emotion_every` >= 1) also scores the retrained model with the sweep's emotion
judge on the test speakers (`emotion_evaluation`), and, with `finalise.audio_metrics`, scores
the WAVs it exports (`audio_evaluation`): what a user gets, heard by two judges and DNSMOS.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from emovae.audio.export import read_manifest
from emovae.audio.vocoder import load_vocoder
from emovae.checkpoint import LoadedModel, load_model
from emovae.config import ConfigError, TrainConfig
from emovae.dataset import PreparedData, prepare_data
from emovae.emotion import (
    conversion_emotion_metrics,
    generation_emotion_metrics,
    plot_confusion,
    real_reference,
    reconstruction_emotion_metrics,
)
from emovae.evaluate import evaluate_checkpoint
from emovae.evaluation.exported_audio import (
    augmentation_gain,
    prepare_audio_judges,
    score_set,
    wav_set,
)
from emovae.generate import export_conversions, export_reconstructions, generate
from emovae.judge import JudgeConfig, TrainedJudge, ensure_judge
from emovae.models import MeanReconstruction
from emovae.train import TrainResult, select_device, train
from sweeps.driver import TUNE_DIR, SweepState, read_state
from sweeps.pareto import feasible_front, leaders
from sweeps.report import write_report
from sweeps.results import load_trial_records
from sweeps.space import FinaliseSettings, SweepSpec, trial_train_config
from sweeps.tracking import (
    TAG_ROLE,
    child_runs,
    create_child_run,
    flatten,
    log_params,
    resolved_uri,
    tracking_client,
)
from sweeps.trainable import judge_beside_vae, judge_cache_dir
from sweeps.trials import TrialRecord, ranked

FINAL_DIR = "final"
CONFUSION_FILE = "emotion_confusion.png"
EMOTION_METRICS_FILE = "emotion_metrics.json"
AUDIO_METRICS_FILE = "audio_metrics.json"
PARETO_DIR = "pareto"  # in final/: the other Pareto points, one folder each (finalise.pareto)
FINISHED_FILE = "finished.json"  # in final/: written last, so a finalisation cut short has none


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


def _epoch_logger(client: MlflowClient, run_id: str):  # noqa: ANN202 - a closure
    def log(metrics: dict[str, float], folder: Path) -> None:
        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    return log


def _write_json(path: Path, metrics: dict[str, float]) -> None:
    plain = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    path.write_text(json.dumps(plain, indent=1))


class _Registrable(torch.nn.Module):
    """(log-mel (B, 1, n_mels, frames), emotion (B,) int64) -> the reconstruction: the
    interface MLflow's pyfunc serves for a conditional VAE. The emotion is what a conditional
    decoder is told (a model that can withhold it reads -1 as "withheld")."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.vae = loaded.model

    def forward(self, x: torch.Tensor, emotion: torch.Tensor) -> torch.Tensor:
        labels = emotion
        if self.vae.withheld_label is not None:
            labels = torch.where(emotion < 0, self.vae.withheld_label, emotion)
        return self.vae(x, labels, sample=False)[0]


def _register_model(
    tracking_uri: str, run_id: str, checkpoint: Path, data: PreparedData, model_name: str
) -> str:
    """Log the model with MLflow's PyTorch flavour and a signature, and register it.

    An unconditional VAE is registered as its mean reconstruction (log-mel in, log-mel out); a
    conditional one takes a second input, `emotion` (the label index, per clip: see the run's
    `emovae.label_names` tag), named in the signature."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    loaded = load_model(checkpoint)
    example = data.test.features[:2]
    shape = (-1, *example.shape[1:])
    if loaded.model.n_classes:
        module = _Registrable(loaded).eval()
        emotion = data.test.labels[:2]
        inputs = Schema(
            [
                TensorSpec(np.dtype(np.float32), shape, "log_mel"),
                TensorSpec(np.dtype(np.int64), (-1,), "emotion"),
            ]
        )
        # pt2 traces forward() with positional inputs: a tuple, in the schema's order.
        example_inputs: Any = (example.numpy(), emotion.numpy())
        with torch.no_grad():
            output = module(example, emotion)
    else:
        module = MeanReconstruction(loaded.model).eval()
        inputs = Schema([TensorSpec(np.dtype(np.float32), shape, "log_mel")])
        example_inputs = example.numpy()
        with torch.no_grad():
            output = module(example)
    signature = ModelSignature(
        inputs=inputs,
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )
    mlflow.set_tracking_uri(resolved_uri(tracking_uri))
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag("emovae.label_names", ",".join(loaded.label_names))
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            signature=signature,
            input_example=example_inputs,
            # Stated, not inferred: inference imports the world and records torch's "+cpu" tag.
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}",
            ],
            registered_model_name=model_name,
        )
    return info.model_uri


@dataclass
class EmotionEvaluation:
    metrics: dict[str, float]
    confusion: Path | None  # the judge's confusion on generated samples (conditional VAE only)


def final_judge(
    data: PreparedData, judge_config: JudgeConfig, cache_dir: str | Path, device: str
) -> TrainedJudge:
    """The sweep's emotion judge, from `judge_cache_dir(cache_dir)` where the driver left it."""
    return ensure_judge(
        data,
        judge_cache_dir(cache_dir),
        judge_beside_vae(judge_config, device, judge_config.num_threads),
    )


def emotion_evaluation(
    checkpoint: Path,
    data: PreparedData,
    judge: TrainedJudge,
    out_dir: Path,
    n_per_emotion: int,
    seed: int,
    settings: FinaliseSettings | None = None,
    device: str = "auto",
) -> EmotionEvaluation:
    """The sweep's emotion judge on the retrained model's log-mels, on the test speakers.

    Always: `test_emotion_acc_real/_recon/_drop` (reconstructions decoded with the label
    withheld, or swapped where the model cannot withhold it), `test_latent_silhouette`,
    `test_fd_recon` and the judge's own `judge_test_acc` / `judge_test_uar` (the ceiling). A
    conditional VAE also gets the generation metrics (`gen_*`, `real_diversity*`) of
    `n_per_emotion` samples per emotion with their confusion matrix
    (`out_dir/emotion_confusion.png`), and label-swap conversion (`test_conversion_acc*`:
    `settings.conversion_source` clips re-made as each other emotion). Also written to
    `out_dir/emotion_metrics.json` (NaN as null).
    """
    settings = settings or FinaliseSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae = load_model(checkpoint, select_device(device)).model
    reference = real_reference(judge, data.test)
    metrics = reconstruction_emotion_metrics(
        judge, vae, data.test, prefix="test", reference=reference
    )
    metrics |= {"judge_test_acc": judge.test_accuracy, "judge_test_uar": judge.test_uar}
    confusion = None
    if vae.n_classes:
        generated = generation_emotion_metrics(
            judge, vae, data.label_names, n_per_emotion, seed, data.test, reference=reference
        )
        metrics |= generated.metrics
        confusion = plot_confusion(
            generated.confusion,
            data.label_names,
            out_dir / CONFUSION_FILE,
            title="Judge on generated samples (row: emotion asked for)",
        )
        if settings.conversion_source in data.label_names:
            metrics |= conversion_emotion_metrics(
                judge,
                vae,
                data.test,
                data.label_names,
                seed,
                source=settings.conversion_source,
                strength=settings.conversion_strength,
            )
    _write_json(out_dir / EMOTION_METRICS_FILE, metrics)
    return EmotionEvaluation(metrics, confusion)


@dataclass
class ExportedAudio:
    """The WAV sets the finaliser writes: manifests (None where a set does not apply)."""

    samples: Path
    reconstructions: Path
    conversions: Path | None


def export_audio(
    checkpoint: Path,
    data: PreparedData,
    settings: FinaliseSettings,
    out_dir: Path,
    seed: int,
    device: str,
) -> ExportedAudio:
    """`settings.n_samples` samples, the test split's reconstructions and (conditional model)
    conversions, each a WAV set with its manifest under `out_dir`, through `settings.vocoder`."""
    samples = generate(
        checkpoint,
        settings.n_samples,
        out_dir / "samples",
        seed=seed,
        n_iter=settings.griffin_lim_iters,
        device=device,
        vocoder=settings.vocoder,
    )
    loaded = load_model(checkpoint, select_device(device))
    vocoder = load_vocoder(
        settings.vocoder, loaded.features, device, n_iter=settings.griffin_lim_iters, seed=seed
    )
    common = (data.test, loaded.label_names, loaded.normalizer, loaded.features, vocoder)
    reconstructions = export_reconstructions(loaded.model, *common, out_dir / "reconstructions")
    conversions = export_conversions(
        loaded.model,
        *common,
        out_dir / "conversions",
        seed=seed,
        source=settings.conversion_source,
        strength=settings.conversion_strength,
    )
    return ExportedAudio(samples, reconstructions, conversions)


def _labels_of(manifest: Path, label_names: list[str]) -> tuple[list[Path], list[int] | None]:
    rows = read_manifest(manifest)
    paths = [manifest.parent / row["file"] for row in rows]
    if not all(row["emotion"] for row in rows):
        return paths, None
    return paths, [label_names.index(row["emotion"]) for row in rows]


def audio_evaluation(
    exported: ExportedAudio,
    data: PreparedData,
    judge: TrainedJudge | None,
    cache_dir: str | Path,
    out_dir: Path,
    seed: int,
    dnsmos_clips: int = 0,
) -> dict[str, float]:
    """The exported WAVs read back and scored (emovae.evaluation.exported_audio): `wav_real_*`
    (the test speakers' real clips: the ceiling), `wav_recon_*`, `wav_gen_*`, `wav_conv_*`,
    and for a conditional model the augmentation test through both judges (`wav_aug_*`).
    Written to `out_dir/audio_metrics.json` too."""
    # After the sweep the machine is the finaliser's: DNSMOS, its slowest judge, uses every core.
    judges = prepare_audio_judges(
        data,
        judge,
        cache_dir,
        seed,
        workers=torch.get_num_threads(),
        dnsmos_clips=dnsmos_clips,
    )
    names = data.label_names
    real = wav_set(judges, "real", data.test.paths, data.test.labels.numpy(), cache_dir)
    metrics = score_set(judges, real)
    recon_paths, _ = _labels_of(exported.reconstructions, names)
    recon = wav_set(judges, "recon", recon_paths, data.test.labels.numpy())
    metrics |= score_set(judges, recon, real, references=real.clips)
    gen_paths, gen_labels = _labels_of(exported.samples, names)
    generated = wav_set(judges, "gen", gen_paths, gen_labels)
    metrics |= score_set(judges, generated, real)
    if exported.conversions is not None:
        conv_paths, conv_labels = _labels_of(exported.conversions, names)
        metrics |= score_set(judges, wav_set(judges, "conv", conv_paths, conv_labels), real)
    if generated.labels is not None:
        seed = judge.config.seed if judge is not None else seed
        metrics |= augmentation_gain(judges, data, generated, real, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / AUDIO_METRICS_FILE, metrics)
    return metrics


def is_finalised(sweep_dir: str | Path) -> bool:
    """Whether a finalisation of this sweep ran to its end."""
    return (Path(sweep_dir) / FINAL_DIR / FINISHED_FILE).is_file()


def _close_unfinished_final_runs(client: MlflowClient, state: SweepState) -> None:
    """A finalisation killed mid-way left its `final` run RUNNING: closed as KILLED, so a sweep
    holds one finished `final` run per finalisation that ended."""
    for run in child_runs(client, state.experiment_id, state.parent_run_id):
        if run.data.tags.get(TAG_ROLE) == "final" and run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "emovae.error", "finalisation interrupted")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


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
        if constraints and ranked(records, spec.sweep.metric, spec.sweep.mode):
            raise ConfigError(
                f"{sweep_dir}: no trial met the constraints "
                f"({', '.join(map(str, constraints))}) at its best epoch of "
                f"{spec.sweep.metric}: nothing to finalise (see trials.csv, column feasible)"
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


def _close_failed_run(client: MlflowClient, run_id: str, exc: BaseException) -> None:
    """A final run cut short: the error as a tag; KILLED for Ctrl-C, else FAILED."""
    client.set_tag(run_id, "emovae.error", f"{type(exc).__name__}: {exc}"[:5000])
    status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
    client.set_terminated(run_id, RunStatus.to_string(status))


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
    cache_dir = str(Path(spec.experiment.data.cache_dir).resolve())
    data = prepare_data(
        dataclasses.replace(spec.experiment.data, cache_dir=cache_dir), spec.experiment.features
    )
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
            metrics_, emotion, audio = _evaluate(result, data, spec, cache_dir, out, config)
            _log_metrics(client, run_id, metrics_ | (emotion.metrics if emotion else {}) | audio)
            client.log_artifact(run_id, str(result.best_checkpoint), "checkpoint")
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        except BaseException as exc:
            _close_failed_run(client, run_id, exc)
            raise
        folders.append(out)
    return folders


def _final_config(spec: SweepSpec, best: TrialRecord, device: str) -> TrainConfig:
    return dataclasses.replace(
        trial_train_config(spec.experiment.train, best.params),
        max_epochs=spec.finalise.max_epochs or spec.experiment.train.max_epochs,
        num_threads=0,
        device=device,
    )


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and v == v
        ],
    )


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
    settings = spec.finalise
    config = _final_config(spec, best, device)
    data_config = dataclasses.replace(
        spec.experiment.data, cache_dir=str(Path(spec.experiment.data.cache_dir).resolve())
    )
    data = prepare_data(data_config, spec.experiment.features)
    out = sweep_dir / FINAL_DIR
    client = tracking_client(state.tracking_uri)
    _close_unfinished_final_runs(client, state)
    (out / FINISHED_FILE).unlink(missing_ok=True)
    run_id = create_child_run(
        client, state.experiment_id, state.parent_run_id, "final", {TAG_ROLE: "final"}
    )
    try:
        log_params(
            client,
            run_id,
            flatten("", dataclasses.asdict(config))
            | {"best_trial_id": best.trial_id, f"sweep_best_{spec.sweep.metric}": str(best_score)},
        )
        result = _retrain(config, data, out, client, run_id, progress)
        metrics, emotion, audio = _evaluate(result, data, spec, data_config.cache_dir, out, config)
        logged = metrics | (emotion.metrics if emotion else {}) | audio
        _log_metrics(client, run_id, logged)
        client.log_artifacts(run_id, str(out / "evaluation"), "evaluation")
        client.log_artifact(run_id, str(result.best_checkpoint), "checkpoint")
        client.log_artifacts(run_id, str(out / "samples"), "samples")
        report = _report(records, spec, sweep_dir, out, config, metrics, emotion, audio)
        client.log_artifacts(run_id, str(report.parent), "report")
        client.log_artifacts(state.parent_run_id, str(report.parent), "report")
        model_uri = None
        if settings.register_model:
            model_uri = _register_model(
                state.tracking_uri, run_id, result.best_checkpoint, data, settings.model_name
            )
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


def _evaluate(
    result: TrainResult,
    data: PreparedData,
    spec: SweepSpec,
    cache_dir: str,
    out: Path,
    config: TrainConfig,
) -> tuple[dict[str, float], EmotionEvaluation | None, dict[str, float]]:
    """Test metrics (log-mels), the judge's emotion metrics, the exported WAVs and their
    scores: (test metrics, emotion evaluation or None, wav_* metrics or {})."""
    settings = spec.finalise
    checkpoint = result.best_checkpoint
    metrics = evaluate_checkpoint(
        checkpoint, data, out / "evaluation", result.history, config.device
    )
    emotion, audio = None, {}
    judge = None
    if spec.sweep.emotion_every >= 1:
        judge = final_judge(data, spec.judge, cache_dir, config.device)
        emotion = emotion_evaluation(
            checkpoint,
            data,
            judge,
            out / "evaluation",
            settings.emotion_samples,
            config.seed,
            settings,
            config.device,
        )
    exported = export_audio(checkpoint, data, settings, out, config.seed, config.device)
    if settings.audio_metrics:
        audio = audio_evaluation(
            exported,
            data,
            judge,
            cache_dir,
            out / "evaluation",
            config.seed,
            settings.dnsmos_clips,
        )
    return metrics, emotion, audio


def _report(
    records: list[TrialRecord],
    spec: SweepSpec,
    sweep_dir: Path,
    out: Path,
    config: TrainConfig,
    metrics: dict[str, float],
    emotion: EmotionEvaluation | None,
    audio: dict[str, float],
) -> Path:
    final: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "metrics": metrics,
        "learning_curves": out / "evaluation" / "learning_curves.png",
        "reconstructions": out / "evaluation" / "reconstructions.png",
        "latent_pca": out / "evaluation" / "latent_pca.png",
    }
    if emotion:
        final["emotion"] = {"metrics": emotion.metrics, "confusion": emotion.confusion}
    if audio:
        final["audio"] = {"metrics": audio, "vocoder": spec.finalise.vocoder}
    return write_report(
        records,
        spec.sweep.metric,
        spec.sweep.mode,
        spec.params,
        {
            "grace_period": spec.sweep.grace_period,
            "reduction_factor": spec.sweep.reduction_factor,
            "max_t": spec.experiment.train.max_epochs,
        },
        out / "report",
        title=f"Sweep report: {spec.name} ({sweep_dir.name})",
        final=final,
        constraints=spec.sweep.parsed_constraints(),
        objectives=spec.sweep.objectives,
        pick=spec.finalise.pick,
    )
