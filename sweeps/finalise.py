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


def print_final(final) -> None:  # noqa: ANN001 - sweeps.finaliser.FinalResult
    print("Final model retrained with:")
    for key in ("latent_dim", "beta", "lr", "grad_clip", "batch_size", "max_epochs"):
        print(f"  {key} = {final.config[key]}")
    print("Test metrics (held-out speakers):")
    for key, value in sorted(final.metrics.items()):
        print(f"  {key} = {value:.5g}" if isinstance(value, float) else f"  {key} = {value}")
    print(f"Checkpoint: {final.checkpoint}\nSamples: {final.samples_manifest}")
    print(f"Report: {final.report}\nRegistered model: {final.model_uri or 'not registered'}")


if __name__ == "__main__":
    raise SystemExit(main())
