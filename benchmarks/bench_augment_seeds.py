"""How much does the eGeMAPS judge's augmentation gain move with the samples drawn?

The augmentation target asks for a gain over at least 5 seeds. The finaliser's test (and
`bench_quality.py augment`) varies the CNN judge's training seed over one set of exported
samples, but the eGeMAPS judge (standardised functionals + a linear SVM) is deterministic, so
its figure rests on one draw of 120 samples. This draws them again at each `--sample-seeds`
value (20 per emotion, the prior's sampling seeded; at the training seed, the draw the
finaliser exports) and runs the eGeMAPS judge's test as the finaliser does, with its control
(as many vocoded copies of real training clips per emotion, drawn with the same seed): real +
samples against real only and against real + copies, UAR on the real test speakers, mean and
spread over the seeds. With `--cnn` the CNN judge's test runs too, on the same draws: a judge
with the sweep judge's settings trained at the draw's seed on the real training clips alone,
with the samples added and with the control added (three trainings per draw).

    python benchmarks/bench_augment_seeds.py --checkpoint CK --out runs/exp/aug_seeds \\
        --sample-seeds 0 1 2 3 4 [--cnn]

Record: OUT/results.json. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from bench_sampling import SampleJudging, add_judging_arguments, write_record
from bench_vocoder_finetune import augmentation

from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.checkpoint import LoadedModel, load_model

GAINS = ("wav_aug_smile_uar_gain", "wav_aug_smile_uar_gain_over_control")
CNN_GAINS = ("wav_aug_cnn_uar_gain", "wav_aug_cnn_uar_gain_over_control")


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "sd": sd}


Measure = Callable[[LoadedModel, SampleJudging, Vocoder, int], dict[str, float]]


def over_draws(args: argparse.Namespace, measure: Measure, gains: Sequence[str]) -> None:
    """`measure` at each of `args.sample_seeds` on the model at `args.checkpoint`, rendered by
    the shipped HiFi-GAN; the record (every draw, mean and spread of `gains`) is rewritten
    after each draw, so a stopped run keeps what it measured."""
    judging = SampleJudging.load(args)
    loaded = load_model(args.checkpoint)
    vocoder = load_vocoder("hifigan", loaded.features)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.sample_seeds:
        started = time.perf_counter()
        metrics = measure(loaded, judging, vocoder, seed)
        rows.append({"seed": seed, "seconds": time.perf_counter() - started} | metrics)
        print(f"seed {seed}: " + "  ".join(f"{k} {metrics[k]:+.3f}" for k in gains), flush=True)
        summary = {key: spread([row[key] for row in rows]) for key in gains}
        write_record(args.out, args, {"rows": rows, "summary": summary})
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cnn", action="store_true", help="the CNN judge's test too")
    add_judging_arguments(parser)
    args = parser.parse_args()

    def measure(
        loaded: LoadedModel, judging: SampleJudging, vocoder: Vocoder, seed: int
    ) -> dict[str, float]:
        args.seed = seed  # `augmentation` draws the samples and the control with args.seed
        return augmentation(loaded, judging, vocoder, args, cnn=args.cnn)

    over_draws(args, measure, GAINS + (CNN_GAINS if args.cnn else ()))


if __name__ == "__main__":
    main()
