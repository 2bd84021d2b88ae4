"""The finaliser's report: the sweep's report (sweeps.report) with the retrained model's
metrics, figures, emotion and audio scores."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from emovae.config import TrainConfig
from sweeps.final_evaluation import EmotionEvaluation
from sweeps.report import analyse_sweep, write_report
from sweeps.space import SweepSpec
from sweeps.trials import TrialRecord


def write_final_report(
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
    analysis = analyse_sweep(
        records,
        spec.sweep.metric,
        spec.sweep.mode,
        spec.params,
        {
            "grace_period": spec.sweep.grace_period,
            "reduction_factor": spec.sweep.reduction_factor,
            "max_t": spec.experiment.train.max_epochs,
        },
        constraints=spec.sweep.parsed_constraints(),
        objectives=spec.sweep.objectives,
        pick=spec.finalise.pick,
    )
    title = f"Sweep report: {spec.name} ({sweep_dir.name})"
    return write_report(analysis, out / "report", title=title, final=final)
