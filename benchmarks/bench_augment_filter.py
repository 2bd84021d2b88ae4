"""Do samples the CNN judge hears clearly make better training data for the eGeMAPS judge?

Classifier-filtered synthetic data is a common way to augment speech emotion recognition:
draw more samples than needed and keep those a classifier trained on real speech assigns
most surely to the emotion asked for. Here the filter is the project's CNN judge (trained on
the real training speakers only) and the test is the eGeMAPS judge's augmentation test as
the finaliser runs it, so the judge that filters never grades its own choice. Per sample
seed: `--pool-per-emotion` samples per emotion are drawn (the prior's own sampling
settings), rendered by the shipped HiFi-GAN, and three sets added to the real training
clips in turn:

- random: the first `--per-emotion` drawn of each emotion (the unfiltered test at this size);
- filtered: the `--per-emotion` of each emotion with the CNN judge's highest probability
  for the emotion asked for;
- pool: every sample drawn (more samples, unfiltered).

Each against real only and against its control (as many vocoded copies of real training
clips per emotion, drawn with the same seed), UAR on the real test speakers. Each set's
eGeMAPS judge accuracy (does the filter pick samples the other judge hears too?) and DNSMOS
overall (does it pick cleaner speech?) are recorded beside it.

    python benchmarks/bench_augment_filter.py --checkpoint CK --out runs/exp/aug_filter \\
        --sample-seeds 0 1 2 3 4

Record: OUT/results.json. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from bench_augment_seeds import over_draws
from bench_sampling import (
    SampleJudging,
    Sampler,
    add_judging_arguments,
    draw,
    exported_clips,
)
from bench_vocoder_finetune import control_set

from emovae.audio.vocoder import Vocoder
from emovae.checkpoint import LoadedModel
from emovae.evaluation.exported_audio import (
    WavSet,
    augmentation_gain,
    clip_set,
)
from emovae.judge import JudgeOutputs

ARMS = ("random", "filtered", "pool")


def subset(clips: WavSet, rows: np.ndarray) -> WavSet:
    """The clips at `rows`, with both judges' view of them."""
    cnn = clips.cnn
    return WavSet(
        clips.name,
        [clips.clips[i] for i in rows],
        None if clips.labels is None else clips.labels[rows],
        clips.smile_features[rows],
        None if cnn is None else JudgeOutputs(*(part[rows] for part in cnn)),
        clips.log_mels[rows],
    )


def arm_rows(labels: np.ndarray, probs: np.ndarray, per_emotion: int) -> dict[str, np.ndarray]:
    """Rows of the pool each arm adds: per emotion the first `per_emotion` drawn, the
    `per_emotion` with the highest probability of that emotion, or all."""
    asked = probs[np.arange(len(labels)), labels]
    random, filtered = [], []
    for emotion in np.unique(labels):
        rows = np.flatnonzero(labels == emotion)
        random.append(rows[:per_emotion])
        filtered.append(rows[np.argsort(-asked[rows], kind="stable")[:per_emotion]])
    return {
        "random": np.sort(np.concatenate(random)),
        "filtered": np.sort(np.concatenate(filtered)),
        "pool": np.arange(len(labels)),
    }


def one_draw(
    loaded: LoadedModel,
    judging: SampleJudging,
    vocoder: Vocoder,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Every arm's eGeMAPS augmentation gain (over real only and over its control), the
    eGeMAPS and CNN judges' accuracy and the DNSMOS of the arm's samples, for one draw of the
    pool."""
    log_mels, labels, _ = draw(loaded, Sampler.of(loaded.model.prior), seed, args.pool_per_emotion)
    pool = clip_set(judging.judges, "gen", exported_clips(loaded, log_mels, vocoder), labels)
    rows = arm_rows(labels, pool.cnn.probs, args.per_emotion)
    # The random and filtered arms hold the same number per emotion: one control serves both.
    controls = {
        arm: control_set(loaded, judging, vocoder, labels[rows[arm]], seed)
        for arm in ("random", "pool")
    }
    smile_only = dataclasses.replace(judging.judges, cnn=None)
    smile_pred = judging.judges.smile.pipeline.predict(pool.smile_features)
    quality = judging.judges.dnsmos.score(pool.clips, judging.judges.features.sample_rate)["ovrl"]
    metrics = {}
    for arm in ARMS:
        added = subset(pool, rows[arm])
        control = controls["pool" if arm == "pool" else "random"]
        gains = augmentation_gain(smile_only, judging.data, added, judging.real, seed, control)
        metrics |= {f"{arm}_{key.removeprefix('wav_aug_')}": v for key, v in gains.items()}
        metrics[f"{arm}_smile_acc"] = float(np.mean(smile_pred[rows[arm]] == labels[rows[arm]]))
        metrics[f"{arm}_cnn_acc"] = float(np.mean(pool.cnn.pred[rows[arm]] == labels[rows[arm]]))
        metrics[f"{arm}_dnsmos"] = float(np.mean(quality[rows[arm]]))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pool-per-emotion", type=int, default=40)
    add_judging_arguments(parser)
    parser.set_defaults(per_emotion=20)
    args = parser.parse_args()
    if args.pool_per_emotion < args.per_emotion:
        parser.error("--pool-per-emotion: expected at least --per-emotion")

    def measure(
        loaded: LoadedModel, judging: SampleJudging, vocoder: Vocoder, seed: int
    ) -> dict[str, float]:
        return one_draw(loaded, judging, vocoder, seed, args)

    gains = [f"{arm}_smile_uar_gain{tail}" for arm in ARMS for tail in ("", "_over_control")]
    over_draws(args, measure, gains)


if __name__ == "__main__":
    main()
