"""The finaliser's evaluation of the retrained model beyond its test metrics: the sweep's
emotion judge on its log-mels, on the test speakers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from emovae.checkpoint import load_model
from emovae.dataset import PreparedData
from emovae.emotion import (
    conversion_emotion_metrics,
    generation_emotion_metrics,
    plot_confusion,
    real_reference,
    reconstruction_emotion_metrics,
)
from emovae.judge import JudgeConfig, TrainedJudge, ensure_judge
from emovae.runtime import select_device
from sweeps.space import FinaliseSettings
from sweeps.trainable import judge_beside_vae, judge_cache_dir

CONFUSION_FILE = "emotion_confusion.png"
EMOTION_METRICS_FILE = "emotion_metrics.json"


def write_metrics_json(path: Path, metrics: dict[str, float]) -> None:
    """`metrics` as JSON, NaN and infinities as null (JSON has no such numbers)."""
    plain = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    path.write_text(json.dumps(plain, indent=1))


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
    write_metrics_json(out_dir / EMOTION_METRICS_FILE, metrics)
    return EmotionEvaluation(metrics, confusion)
