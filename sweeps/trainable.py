"""The Ray Tune function trainable: one trial = one emovae training run.

It maps the trial's config onto a TrainConfig, reads the features from the sweep's cache (the
driver extracted them once), and reports every epoch's metrics with a checkpoint, so ASHA can
stop the trial and a restored sweep resumes it from its last epoch.

With `sweep.emotion_every` = k >= 1 the driver adds an "emotion" entry to the experiment
constants; the trial then loads the sweep's emotion judge from the cache (the driver trained
it) and reports the validation emotion metrics (emovae.emotion) every k epochs and on its last
epoch, repeating the last values in between so ASHA and Tune always see them.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from emovae.checkpoint import read_checkpoint
from emovae.config import DataConfig, FeatureConfig, TrainConfig, from_dict
from emovae.dataset import PreparedData, prepare_data
from emovae.emotion import (
    Reference,
    judge_samples,
    real_reference,
    reconstruction_emotion_metrics,
    sample_per_emotion,
)
from emovae.evaluation.sample_audio import (
    AUDIO_FD_KEY,
    SampleAudioScorer,
    prepare_sample_audio,
    sample_audio_metrics,
)
from emovae.judge import JudgeConfig, TrainedJudge, ensure_judge
from emovae.models import SpeechVAE
from emovae.train import EpochMetrics, train
from sweeps.space import GENERATION_METRICS, parse_constraint, trial_train_config
from sweeps.system_metrics import system_metrics
from sweeps.trials import Constraint, at_best_key, best_key, finite_number

CHECKPOINT_FILES = ("last.pt", "best.pt")


def threads_for(cpus_per_trial: float) -> int:
    """Torch threads = the CPUs Ray gave the trial, so concurrent trials do not oversubscribe."""
    return max(1, math.floor(cpus_per_trial))


def judge_cache_dir(data_cache_dir: str | Path) -> Path:
    """Where a sweep's emotion judges are cached: beside the features, keyed by data."""
    return Path(data_cache_dir) / "judges"


def judge_beside_vae(judge: JudgeConfig, device: str, num_threads: int) -> JudgeConfig:
    """`judge` set to run where the VAE runs (its device unless the space pins one, and the
    VAE's thread count); runtime fields only, so the cached judge is the same file."""
    return dataclasses.replace(
        judge,
        num_threads=num_threads,
        device=device if judge.device == "auto" else judge.device,
    )


def emotion_settings(every: int, judge: JudgeConfig, vocoder: str | None = None) -> dict[str, Any]:
    """The experiment entry that switches a trial's emotion metrics on (plain data for Ray);
    `vocoder` names the finaliser's vocoder when the sweep needs its samples' audio metric."""
    return {"every": every, "judge": dataclasses.asdict(judge), "audio_vocoder": vocoder}


# Generated clips per emotion for a trial's sample-quality metrics: enough for a stable
# accuracy, few enough that the prior's sampling stays a small share of an epoch.
GEN_PER_EMOTION = 10
GEN_SEED = 0


def validation_emotion_metrics(
    judge: TrainedJudge,
    model: SpeechVAE,
    data: PreparedData,
    reference: Reference,
    audio: SampleAudioScorer | None = None,
) -> dict[str, float]:
    """A trial's emotion metrics on the validation speakers: reconstructions (label withheld
    or swapped, see emovae.emotion) and, for a conditional model, samples from its prior
    (`val_gen_emotion_acc`, `val_gen_fd`, ...: what the sweep must see so that it does not
    pick a beta whose samples are poor); with `audio`, the same samples vocoded and measured
    as audio (`val_wav_gen_fd_smile`, emovae.evaluation.sample_audio)."""
    metrics = reconstruction_emotion_metrics(
        judge, model, data.val, prefix="val", reference=reference
    )
    if model.n_classes:
        samples, labels = sample_per_emotion(
            model, len(data.label_names), GEN_PER_EMOTION, GEN_SEED
        )
        generated = judge_samples(
            judge, samples, labels, data.label_names, data.val, reference=reference, prefix="val_"
        )
        metrics |= {k: v for k, v in generated.metrics.items() if k in GEN_TRIAL_KEYS}
        if audio is not None:
            metrics |= sample_audio_metrics(audio, samples, prefix="val_")
    return metrics


# The generation metrics a trial reports (which constraints may bound, see sweeps.space);
# per-emotion values stay in the finaliser's report.
GEN_TRIAL_KEYS = frozenset(GENERATION_METRICS)
AUDIO_KEY = f"val_{AUDIO_FD_KEY}"


def emotion_metrics_due(epoch: int, every: int, is_last_epoch: bool) -> bool:
    """Whether a trial computes its emotion metrics afresh at `epoch` (besides the first epoch
    it runs, which always does): every `every` epochs and on its last."""
    return epoch % every == 0 or is_last_epoch


def emotion_epoch_metrics(
    data: PreparedData,
    every: int,
    judge_config: JudgeConfig,
    cache_dir: str | Path,
    audio_vocoder: str | None = None,
) -> EpochMetrics:
    """The `epoch_metrics` callback of `emovae.train.train` that adds the validation emotion
    metrics (`validation_emotion_metrics`).

    They are computed on the first epoch the callback sees (epoch 1, or the first after a
    resume), on every epoch divisible by `every` and on the last epoch; other epochs repeat
    the last values. The judge comes from `judge_cache_dir(cache_dir)` (trained there first if
    missing); its view of the real validation clips is computed once here. With
    `audio_vocoder`, the samples' audio metric too, but not on a first epoch that is not due:
    it costs seconds per sample, so it reads NaN until the first due epoch.
    """
    if every < 1:
        raise ValueError(f"every: expected at least 1, got {every}")
    judge = ensure_judge(data, judge_cache_dir(cache_dir), judge_config)
    reference = real_reference(judge, data.val)
    audio = None
    if audio_vocoder is not None:
        audio = prepare_sample_audio(data, audio_vocoder, cache_dir, judge_config.device)
    last: dict[str, float] | None = None

    def metrics(model: SpeechVAE, epoch: int, is_last_epoch: bool) -> dict[str, float]:
        nonlocal last
        due = emotion_metrics_due(epoch, every, is_last_epoch)
        if last is None or due:
            last = validation_emotion_metrics(judge, model, data, reference, audio if due else None)
            if audio is not None and not due:
                last[AUDIO_KEY] = math.nan
        return dict(last)

    return metrics


# In each result of a sweep with constraints: 1.0 when the trial's best epoch so far meets them.
FEASIBLE_KEY = "feasible"


def objective_tracker(
    objective: dict[str, str] | None,
    resume_from: Path | None,
    constraints: Sequence[Constraint] = (),
) -> Callable[[dict[str, float]], dict[str, float]]:
    """metrics -> {best_<metric>: the best value of the sweep's objective over the trial's
    epochs so far} (empty without an objective); with `constraints`, also each constrained
    metric's value at that best epoch (`at_best_<metric>`, NaN until known) and `feasible`
    (1.0 when every constraint holds there, else 0.0).

    ASHA compares trials at a rung, and Optuna scores a finished trial, by this running best
    rather than by the epoch's value. A trial keeps its best epoch's checkpoint and the sweep
    ranks trials by their best epoch, and on small data a trial's curve can spike for an epoch
    or two and come back (benchmarks/RESULTS_sweeps.md): judged by the epoch's value, a trial
    that spikes at a rung is stopped whatever it reached before. The constraints are judged at
    the same epoch, the one the trial is scored by; the earliest of equal bests, as
    sweeps.trials.best_epoch picks it. A resumed trial starts from the epochs in its
    checkpoint's history.
    """
    if not objective:
        return lambda metrics: {}
    metric, mode = objective["metric"], objective["mode"]
    best = math.nan  # until the metric has a finite value
    # A multi-objective sweep's other objectives ("also") are read at the first's best epoch.
    at_best = {
        name: math.nan for name in [*objective.get("also", []), *(c.metric for c in constraints)]
    }

    def update(metrics: dict[str, float]) -> dict[str, float]:
        nonlocal best
        value = metrics.get(metric, math.nan)
        if math.isfinite(value) and (
            math.isnan(best) or (value < best if mode == "min" else value > best)
        ):
            best = value
            at_best.update({name: float(metrics.get(name, math.nan)) for name in at_best})
        reported = {best_key(metric): best}
        reported |= {at_best_key(name): at for name, at in at_best.items()}
        if constraints:
            holds = all(c.holds(finite_number(at_best[c.metric])) for c in constraints)
            reported[FEASIBLE_KEY] = float(holds)
        return reported

    if resume_from is not None:
        for row in read_checkpoint(resume_from, torch.device("cpu"))["history"]:
            update(row)
    return update


def _restore_into(work_dir: Path) -> Path | None:
    """Copy the trial's latest Ray checkpoint (if any) into `work_dir`; the last.pt to resume."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        for name in CHECKPOINT_FILES:
            if (Path(folder) / name).exists():
                shutil.copy2(Path(folder) / name, work_dir / name)
    return work_dir / "last.pt"


@dataclasses.dataclass
class TrialSetup:
    """What one trial trains with, built from its config and the experiment constants; Ray
    plays no part, so a benchmark can run the same trial without Tune."""

    train_config: TrainConfig
    data: PreparedData
    epoch_metrics: EpochMetrics | None  # the emotion metrics, when the sweep computes them
    constraints: list[Constraint]


def trial_setup(
    config: dict[str, Any], experiment: dict[str, Any], cpus_per_trial: float
) -> TrialSetup:
    """The TrainConfig for the searched `config`, the cached data and the emotion callback."""
    data_config = from_dict(DataConfig, experiment["data"])
    features = from_dict(FeatureConfig, experiment["features"])
    base = from_dict(TrainConfig, experiment["train"])
    # The prior's fine-tuning after the last epoch would change no reported metric: the
    # finaliser runs it on the configuration it retrains.
    train_config = dataclasses.replace(
        trial_train_config(base, config),
        num_threads=threads_for(cpus_per_trial),
        prior_finetune_steps=0,
    )
    data = prepare_data(data_config, features)
    epoch_metrics = None
    emotion = experiment.get("emotion")
    if emotion:
        judge = judge_beside_vae(
            from_dict(JudgeConfig, emotion["judge"]),
            train_config.device,
            train_config.num_threads,
        )
        epoch_metrics = emotion_epoch_metrics(
            data, emotion["every"], judge, data_config.cache_dir, emotion.get("audio_vocoder")
        )
    constraints = [
        parse_constraint(metric, expression, f"sweep.constraints.{metric}")
        for metric, expression in (experiment.get("constraints") or {}).items()
    ]
    return TrialSetup(train_config, data, epoch_metrics, constraints)


def train_trial(config: dict[str, Any], experiment: dict[str, Any], cpus_per_trial: float) -> None:
    """Ray Tune entry point. `config` holds the searched params; `experiment` the constants."""
    setup = trial_setup(config, experiment, cpus_per_trial)
    work_dir = Path(tempfile.mkdtemp(prefix="emovae-trial-"))
    try:
        resume_from = _restore_into(work_dir)

        # Where the trial ran: which node, and the GPU ids Ray assigned (fractions share one).
        placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        }

        best = objective_tracker(experiment.get("objective"), resume_from, setup.constraints)

        def report(metrics: dict[str, float], folder: Path) -> None:
            metrics = metrics | best(metrics) | placement
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))

        monitor = experiment.get("system_metrics")
        trial_id = tune.get_context().get_trial_id() if monitor else ""
        with system_metrics(monitor, trial_id):
            train(
                setup.train_config,
                setup.data,
                work_dir,
                on_epoch=report,
                resume_from=resume_from,
                epoch_metrics=setup.epoch_metrics,
            )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
