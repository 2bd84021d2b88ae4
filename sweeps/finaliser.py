"""The finaliser: best trial -> retrain its configuration -> test metrics, samples, report.

Everything lands in `<sweep>/final/` and in a `final` child run of the sweep's MLflow parent
run, and the retrained model is registered in the MLflow model registry. A sweep with emotion
metrics (`sweep.emotion_every` >= 1) also scores the retrained model with the sweep's emotion
judge on the test speakers (`emotion_evaluation`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from emovae.checkpoint import load_model
from emovae.config import ConfigError
from emovae.dataset import PreparedData, prepare_data
from emovae.emotion import (
    augmentation_value,
    generation_emotion_metrics,
    plot_confusion,
    real_reference,
    reconstruction_emotion_metrics,
)
from emovae.evaluate import evaluate_checkpoint
from emovae.generate import generate
from emovae.judge import JudgeConfig, ensure_judge
from emovae.models import MeanReconstruction
from emovae.train import select_device, train
from sweeps.driver import TUNE_DIR, SweepState, read_state
from sweeps.report import TrialRecord, ranked, write_report
from sweeps.results import load_trial_records
from sweeps.space import SweepSpec, trial_train_config
from sweeps.tracking import TAG_ROLE, create_child_run, flatten, log_params
from sweeps.trainable import judge_beside_vae, judge_cache_dir

FINAL_DIR = "final"
CONFUSION_FILE = "emotion_confusion.png"
EMOTION_METRICS_FILE = "emotion_metrics.json"


@dataclass
class FinalResult:
    run_id: str
    config: dict[str, Any]
    metrics: dict[str, float]  # test metrics, and the emotion metrics where the sweep has them
    checkpoint: Path
    samples_manifest: Path
    report: Path
    model_uri: str | None


def _epoch_logger(client: MlflowClient, run_id: str):  # noqa: ANN202 - a closure
    def log(metrics: dict[str, float], folder: Path) -> None:
        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    return log


def _register_model(
    tracking_uri: str, run_id: str, checkpoint: Path, data: PreparedData, model_name: str
) -> str | None:
    """Log the model with MLflow's PyTorch flavour and a signature, and register it.

    The pyfunc interface takes one tensor, so an unconditional VAE is registered as its mean
    reconstruction (log-mel in, log-mel out); a conditional VAE also needs emotion labels and
    is not registered (load it with emovae.checkpoint.load_model)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    loaded = load_model(checkpoint)
    if loaded.model.n_classes:
        return None
    module = MeanReconstruction(loaded.model).eval()
    example = data.test.features[:2]
    with torch.no_grad():
        output = module(example)
    signature = infer_signature(example.numpy(), output.numpy())
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            signature=signature,
            input_example=example.numpy(),  # MLflow's pt2 format traces forward() with it
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


def emotion_evaluation(
    checkpoint: Path,
    data: PreparedData,
    judge_config: JudgeConfig,
    cache_dir: str | Path,
    out_dir: Path,
    n_per_emotion: int,
    seed: int,
    device: str = "auto",
) -> EmotionEvaluation:
    """The sweep's emotion judge on the retrained model, on the test speakers.

    Always: `test_emotion_acc_real/_recon/_drop`, `test_latent_silhouette`, `test_fd_recon`
    and the judge's own `judge_test_acc` / `judge_test_uar` (the ceiling). A conditional VAE
    also gets the generation metrics (`gen_*`, `real_diversity*`) of `n_per_emotion` samples
    per emotion with their confusion matrix (`out_dir/emotion_confusion.png`), and the
    augmentation test (`aug_*`: one more judge training, against the cached judge). The judge
    comes from `judge_cache_dir(cache_dir)`, where the sweep's driver left it. Also written to
    `out_dir/emotion_metrics.json` (NaN as null).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    judge = ensure_judge(
        data,
        judge_cache_dir(cache_dir),
        judge_beside_vae(judge_config, device, judge_config.num_threads),
    )
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
        metrics |= augmentation_value(data, vae, judge.config, n_per_emotion, seed, baseline=judge)
    plain = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    (out_dir / EMOTION_METRICS_FILE).write_text(json.dumps(plain, indent=1))
    return EmotionEvaluation(metrics, confusion)


def finalise(sweep_dir: str | Path, device: str = "auto", progress: bool = False) -> FinalResult:
    """Retrain the sweep's best configuration, evaluate it on the test speakers, export samples,
    write the report and register the model."""
    sweep_dir = Path(sweep_dir).resolve()
    state = read_state(sweep_dir)
    spec = state.spec()
    records = load_trial_records(sweep_dir / TUNE_DIR)
    leaders = ranked(records, spec.sweep.metric, spec.sweep.mode)
    if not leaders:
        raise ConfigError(f"{sweep_dir}: no trial has a {spec.sweep.metric} value to pick from")
    best, best_score, _ = leaders[0]
    return _retrain_and_report(sweep_dir, state, spec, records, best, best_score, device, progress)


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
    config = dataclasses.replace(
        trial_train_config(spec.experiment.train, best.params),
        max_epochs=settings.max_epochs or spec.experiment.train.max_epochs,
        num_threads=0,
        device=device,
    )
    data_config = dataclasses.replace(
        spec.experiment.data, cache_dir=str(Path(spec.experiment.data.cache_dir).resolve())
    )
    data = prepare_data(data_config, spec.experiment.features)
    out = sweep_dir / FINAL_DIR
    client = MlflowClient(state.tracking_uri)
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
        result = train(
            config,
            data,
            out / "checkpoints",
            on_epoch=_epoch_logger(client, run_id),
            progress=progress,
        )
        metrics = evaluate_checkpoint(
            result.best_checkpoint, data, out / "evaluation", result.history, config.device
        )
        emotion = None
        if spec.sweep.emotion_every >= 1:
            emotion = emotion_evaluation(
                result.best_checkpoint,
                data,
                spec.judge,
                data_config.cache_dir,
                out / "evaluation",
                settings.emotion_samples,
                config.seed,
                config.device,
            )
        # Both compute test_latent_silhouette (the same number); MLflow takes a key once.
        logged = metrics | (emotion.metrics if emotion else {})
        client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), int(time.time() * 1000), 0)
                for k, v in logged.items()
                if v is not None and v == v
            ],
        )
        client.log_artifacts(run_id, str(out / "evaluation"), "evaluation")
        client.log_artifact(run_id, str(result.best_checkpoint), "checkpoint")
        manifest = generate(
            result.best_checkpoint,
            settings.n_samples,
            out / "samples",
            n_iter=settings.griffin_lim_iters,
            device=config.device,
        )
        client.log_artifacts(run_id, str(manifest.parent), "samples")
        report = write_report(
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
            final={
                "config": dataclasses.asdict(config),
                "metrics": metrics,
                "learning_curves": out / "evaluation" / "learning_curves.png",
                "reconstructions": out / "evaluation" / "reconstructions.png",
                "latent_pca": out / "evaluation" / "latent_pca.png",
            }
            | (
                {"emotion": {"metrics": emotion.metrics, "confusion": emotion.confusion}}
                if emotion
                else {}
            ),
        )
        client.log_artifacts(run_id, str(report.parent), "report")
        client.log_artifacts(state.parent_run_id, str(report.parent), "report")
        model_uri = None
        if settings.register_model:
            model_uri = _register_model(
                state.tracking_uri, run_id, result.best_checkpoint, data, settings.model_name
            )
            if model_uri is None:
                client.set_tag(run_id, "emovae.model_registry", "skipped: conditional VAE")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except BaseException as exc:
        client.set_tag(run_id, "emovae.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    return FinalResult(
        run_id,
        dataclasses.asdict(config),
        logged,
        result.best_checkpoint,
        manifest,
        report,
        model_uri,
    )
