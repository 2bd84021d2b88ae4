"""Finalise a finished (or resumed) sweep on its own: retrain the best configuration, evaluate
it on the held-out test speakers, export samples, write the report, register the model.

    python sweeps/finalise.py --sweep runs/quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emovae.checkpoint import CheckpointError
from emovae.config import ConfigError
from emovae.data.corpus import CorpusError
from emovae.features import AudioError
from sweeps.finaliser import finalise
from sweeps.tracking import TrackingError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep", type=Path, required=True, help="the sweep folder (--out of run.py)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    try:
        final = finalise(args.sweep, device=args.device, progress=True)
    except (ConfigError, CorpusError, AudioError, CheckpointError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_final(final)
    return 0


# Console groups of the final metrics: (heading, key prefixes).
METRIC_GROUPS = (
    ("Reconstruction (log-mels, held-out speakers)", ("test_",)),
    (
        "Emotion judge (log-mels; judge_test_* is the real clips' ceiling)",
        ("judge_", "gen_", "real_"),
    ),
)


def print_final(final) -> None:  # noqa: ANN001 - sweeps.finaliser.FinalResult
    from sweeps.report import AUDIO_COLUMNS, AUDIO_SETS

    print("Final model retrained with:")
    for key in ("arch", "latent_dim", "beta", "lr", "grad_clip", "batch_size", "max_epochs"):
        print(f"  {key} = {final.config[key]}")
    shown = set()
    for heading, prefixes in METRIC_GROUPS:
        keys = sorted(k for k in final.metrics if k.startswith(prefixes) and k not in shown)
        if keys:
            print(f"{heading}:")
            for key in keys:
                print(f"  {key} = {final.metrics[key]:.4g}")
            shown |= set(keys)
    audio_sets = [
        (name, label) for name, label in AUDIO_SETS if f"wav_{name}_dnsmos" in final.metrics
    ]
    if audio_sets:
        print("Exported audio (WAVs read back; the real clips are the ceiling):")
        columns = [suffix for suffix, _ in AUDIO_COLUMNS]
        print(f"  {'set':8s}" + "".join(f"{c:>11s}" for c in columns))
        for name, _ in audio_sets:
            cells = [final.metrics.get(f"wav_{name}_{c}") for c in columns]
            print(
                f"  {name:8s}"
                + "".join(f"{'-':>11s}" if v is None else f"{v:>11.3f}" for v in cells)
            )
        gains = sorted(k for k in final.metrics if k.startswith("wav_aug_") and k.endswith("gain"))
        for key in gains:
            print(f"  {key} = {final.metrics[key]:+.3f}")
    print(f"Checkpoint: {final.checkpoint}\nSamples: {final.samples_manifest}")
    print(f"Report: {final.report}\nRegistered model: {final.model_uri or 'not registered'}")


if __name__ == "__main__":
    raise SystemExit(main())
