"""Warm start against a cold start on the quick space: same seeds, same budget.

One earlier sweep (the source, its own seed) is run once; then for each seed a cold sweep and a
sweep warm-started from the source, each of `--trials` trials, through the real CLI
(`sweeps/run.py --no-finalise`). Recorded per sweep: the best value of the objective, the epochs
all its trials ran, and the epochs spent until the sweep first matched the cold sweep's best.

    python benchmarks/bench_warm_start.py --seeds 0 1 2 --trials 8
    python benchmarks/bench_warm_start.py table

Results: benchmarks/results/warm_start.json; sweeps under --work (default runs/bench_warm_start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "warm_start.json"
SOURCE_SEED = 100


def sweep(out: Path, seed: int, trials: int, *extra: str) -> dict:
    if not (out / "trials.csv").is_file():
        command = [
            sys.executable,
            str(REPO / "sweeps" / "run.py"),
            "--space",
            "quick",
            "--out",
            str(out),
            "--no-finalise",
            "--set",
            f"sweep.seed={seed}",
            "--set",
            f"sweep.num_samples={trials}",
            *extra,
        ]
        started = time.monotonic()
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        (out / "bench_wall_s.txt").write_text(f"{time.monotonic() - started:.1f}")
    return summarise(out)


def summarise(out: Path) -> dict:
    """Best value, epochs run, and the running best against epochs spent in trial order."""
    table = pd.read_csv(out / "trials.csv")
    column = next(c for c in table.columns if c.startswith("best_"))
    table = table.sort_values("trial_id", key=lambda ids: ids.map(_start_order(out)))
    spent, best, curve = 0, float("inf"), []
    for epochs, value in zip(table["epochs"], table[column], strict=True):
        spent += int(epochs)
        best = min(best, float(value)) if value == value else best
        curve.append((spent, best))
    return {
        "metric": column.removeprefix("best_"),
        "best": best,
        "epochs": spent,
        "curve": curve,
        "wall_s": float((out / "bench_wall_s.txt").read_text()),
    }


def _start_order(out: Path) -> dict[str, int]:
    """Trials in the order Tune created them (the number in their folder names)."""
    order = {}
    for folder in (out / "tune").glob("train_trial_*"):
        parts = folder.name.split("_")
        order[parts[2]] = int(parts[3])
    return order


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in curve if best <= target), None)


def run(args: argparse.Namespace) -> None:
    work = Path(args.work)
    source = work / "source"
    sweep(source, SOURCE_SEED, args.trials)
    records = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for seed in args.seeds:
        cold = sweep(work / f"cold{seed}", seed, args.trials)
        warm = sweep(work / f"warm{seed}", seed, args.trials, "--warm-start", str(source))
        for arm in (cold, warm):
            arm["epochs_to_cold_best"] = epochs_to_reach(arm["curve"], cold["best"])
        records[str(seed)] = {"cold": cold, "warm": warm, "trials": args.trials}
        RESULTS.write_text(json.dumps(records, indent=1))
        print(f"seed {seed}: cold best {cold['best']:.3f}, warm best {warm['best']:.3f}")
    table(args)


def table(args: argparse.Namespace) -> None:
    records = json.loads(RESULTS.read_text())
    print("| seed | cold best | warm best | cold epochs | warm epochs | warm epochs to cold best |")
    print("|---|---|---|---|---|---|")
    for seed, record in sorted(records.items()):
        cold, warm = record["cold"], record["warm"]
        print(
            f"| {seed} | {cold['best']:.3f} | {warm['best']:.3f} | {cold['epochs']} | "
            f"{warm['epochs']} | {warm['epochs_to_cold_best'] or 'not reached'} |"
        )
    for arm in ("cold", "warm"):
        values = [r[arm]["best"] for r in records.values()]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{arm}: best {statistics.mean(values):.3f} ± {spread:.3f} over {len(values)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "table"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--work", default="runs/bench_warm_start")
    args = parser.parse_args()
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
