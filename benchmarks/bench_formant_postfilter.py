"""Does a formant-sharpening post-filter bring the VAE's rendering closer to speech?

The augmentation control and the vocoder's fine-tuning (benchmarks/RESULTS_quality.md) put the
eGeMAPS judge's loss and the samples' DNSMOS gap on the decoder's smooth log-mels: formant
bandwidths 0.5 to 1.4 training-clip standard deviations wider than real speech. A global-
variance post-filter (along time) was measured before and lowered every score. This is the
other classic of statistical parametric synthesis, along frequency: cepstral liftering of each
frame (Yoshimura et al.'s post-filter, as HTS applies it to mel-cepstra). The log-mel frame's
DCT coefficients from `--first` up to `--last` are multiplied by 1 + strength, which deepens
the valleys between formants and narrows their peaks; each frame's power is kept, so the
filter reshapes the envelope and leaves loudness alone.

For each `--strengths` value (0: the shipped rendering) the three sets of
`bench_vocoder_finetune.evaluate` are filtered, rendered by the shipped HiFi-GAN as the
finaliser exports them and scored by both judges and DNSMOS: reconstructions of the test
speakers (label withheld), prior samples (`--per-emotion` per emotion, sample seed `--seed`)
and copy synthesis of the real test clips (what the filter does to real log-mels); with the
eGeMAPS functionals the filter is aimed at (`WATCHED`) in training-clip standard deviations.
`--augment` adds the eGeMAPS judge's augmentation test with its control at every strength.

    python benchmarks/bench_formant_postfilter.py --checkpoint CK --out runs/exp/postfilter \\
        --strengths 0 0.2 0.4

Record: OUT/results.json. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.special
from bench_augment_sources import egemaps_names
from bench_sampling import SampleJudging, add_judging_arguments, write_record
from bench_vocoder_finetune import augmentation, evaluate, shown

from emovae.audio.vocoder import load_vocoder
from emovae.checkpoint import load_model

# The functionals the smooth rendering moved most (formant bandwidths, spectral motion).
WATCHED = (
    "F1bandwidth_sma3nz_amean",
    "F2bandwidth_sma3nz_amean",
    "F3bandwidth_sma3nz_amean",
    "spectralFlux_sma3_amean",
    "loudness_sma3_meanRisingSlope",
    "loudness_sma3_meanFallingSlope",
)


def formant_postfilter(
    log_mels: np.ndarray, strength: float, floor: float, first: int = 2, last: int | None = None
) -> np.ndarray:
    """(N, n_mels, frames) natural-log mels -> the same with each frame's cepstral
    coefficients `first`..`last` scaled by 1 + strength, each frame's power kept, and nothing
    below `floor` (the vocoder's clamp). Coefficients 0 and 1 (level and tilt) stay."""
    cepstra = scipy.fft.dct(log_mels, type=2, norm="ortho", axis=1)
    lifter = np.ones(log_mels.shape[1])
    lifter[first:last] += strength
    sharpened = scipy.fft.idct(cepstra * lifter[:, None], type=2, norm="ortho", axis=1)
    power_lost = scipy.special.logsumexp(2 * log_mels, axis=1) - scipy.special.logsumexp(
        2 * sharpened, axis=1
    )
    return np.maximum(sharpened + power_lost[:, None, :] / 2, floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--first", type=int, default=2, help="first liftered coefficient")
    parser.add_argument("--last", type=int, help="one past the last (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="the eGeMAPS augmentation test")
    add_judging_arguments(parser)
    args = parser.parse_args()
    judging = SampleJudging.load(args)
    loaded = load_model(args.checkpoint)
    vocoder = load_vocoder("hifigan", loaded.features)
    names = egemaps_names()
    floor = float(np.log(loaded.features.log_floor))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for strength in args.strengths:
        started = time.perf_counter()
        transform = functools.partial(
            formant_postfilter, strength=strength, floor=floor, first=args.first, last=args.last
        )
        metrics = evaluate(loaded, judging, vocoder, names, args, transform, watched=WATCHED)
        if args.augment:
            metrics |= augmentation(loaded, judging, vocoder, args, transform)
        print(f"strength {strength}: {shown(metrics)}", flush=True)
        rows.append({"strength": strength, "seconds": time.perf_counter() - started} | metrics)
        write_record(args.out, args, {"rows": rows})  # after each strength: a kill keeps them


if __name__ == "__main__":
    main()
