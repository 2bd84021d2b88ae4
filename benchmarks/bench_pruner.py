"""The checkpoint pruner's cost as a sweep grows: `sweeps.checkpoint_pruner` reads Tune's newest
experiment state every 10 s (each trial decoded as Tune's restore decodes it) and globs each
trial's folder. A real sweep (the quick space, shrunk) provides the state; its trial entries
are repeated to each size measured, so what is timed is Tune's own format at that size.

    python benchmarks/bench_pruner.py --trials 6 60 600 --json pruner.json

Numbers: benchmarks/RESULTS_sweeps.md ("The checkpoint pruner at scale").
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_sweeps import ray_session, spec_for

from sweeps import driver
from sweeps.checkpoint_pruner import prune_superseded_checkpoints, restore_points
from sweeps.sweep_folder import TUNE_DIR

# Two trials of two epochs, on bench_sweeps' small model and corpus.
TWO_TRIALS = ["sweep.num_samples=2", "train.max_epochs=2", "sweep.grace_period=1"]


def real_experiment(work: Path) -> Path:
    """A finished sweep's Tune folder: its experiment state and trial folders are Tune's."""
    spec = spec_for(work / "cache", TWO_TRIALS)
    with ray_session():
        driver.run_sweep(spec, work / "sweep", progress=io.StringIO())  # its table, discarded
    return work / "sweep" / TUNE_DIR


def grow_state(newest: Path, state: dict[str, Any], trials: int) -> None:
    """Write `state` (Tune's newest experiment state, as the sweep left it) to `newest` with
    its trial entries repeated to `trials`."""
    original = state["trial_data"]
    grown = [original[i % len(original)] for i in range(trials)]
    newest.write_text(json.dumps(state | {"trial_data": grown}))


def timed(call: Any, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[6, 60, 600])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every-s", type=float, default=10.0, help="the pruner's period")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pruner-") as work:
        experiment = real_experiment(Path(work))
        newest = sorted(experiment.glob("experiment_state-*.json"))[-1]
        state = json.loads(newest.read_text())
        for trials in args.trials:
            grow_state(newest, state, trials)
            read = timed(lambda: restore_points(experiment), args.repeats)
            prune = timed(lambda: prune_superseded_checkpoints(experiment), args.repeats)
            median = statistics.median(prune)
            rows.append(
                {
                    "trials": trials,
                    "read_s": statistics.median(read),
                    "prune_s": median,
                    "ms_per_trial": 1000 * median / trials,
                    "driver_core_pct": 100 * median / args.every_s,
                }
            )
            print(json.dumps(rows[-1]))
    if args.json:
        args.json.write_text(json.dumps({"every_s": args.every_s, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
