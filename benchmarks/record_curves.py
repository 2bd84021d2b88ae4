"""Record full-budget learning curves on a grid over a space's searched parameters, for
`sweeps/replay.py`: every configuration trained for the whole budget through the project's own
trainer, every epoch's metrics (the emotion and sample metrics included) kept.

    python benchmarks/record_curves.py --data ../shared/data/emodb --epochs 30 \
        --out benchmarks/data/curves_emodb.csv.gz

The grid: every value of a `choice`, and `--points` values spread over each range (log-spaced
for a log distribution, ends included). Resumable: each configuration's curve is written to
`--work` when it finishes and skipped by a rerun; the table is written when all are done. The
table's sidecar (`<out>.meta.json`) holds the command, the seed, the code version and the grid.

Per epoch the table holds the trainer's metrics, `epoch_seconds` (training and validation) and
`metrics_seconds` (the emotion and sample metrics), so a replay can charge an epoch the time the
space's `sweep.emotion_every` cadence would give it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emovae.dataset import prepare_data  # noqa: E402
from emovae.judge import ensure_judge  # noqa: E402
from emovae.runtime import atomic_write_text  # noqa: E402
from emovae.train import train  # noqa: E402
from sweeps.space import SweepSpec, load_space, searched_params, trial_train_config  # noqa: E402
from sweeps.trainable import (  # noqa: E402
    emotion_epoch_metrics,
    judge_beside_vae,
    judge_cache_dir,
)

# The small model of the recording: an epoch of EmoDB's training speakers in about a second
# on one core (the quick space's 128 channels take several).
SMALL_MODEL = ["train.hidden_channels=32", "train.prior_channels=16"]
DEFAULT_POINTS = {"beta": 4, "lr": 4, "grad_clip": 2}


def grid_values(spec: dict[str, Any], points: int) -> list[Any]:
    """A parameter's recorded values: a choice's values, or `points` spread over a range."""
    kind, argument = next(iter(spec.items()))
    if kind == "choice":
        return list(argument)
    low, high = float(argument[0]), float(argument[1])
    spread = np.geomspace if kind.startswith("log") else np.linspace
    values = spread(low, high, points)
    if kind in ("int", "logint"):
        return sorted({int(round(v)) for v in values})
    return [float(v) for v in values]


def build_grid(spec: SweepSpec, points: dict[str, int]) -> list[dict[str, Any]]:
    names = searched_params(spec.params)
    unknown = sorted(set(points) - set(names))
    if unknown:
        raise SystemExit(f"error: --points names {unknown}, which the space does not search")
    values = [grid_values(spec.params[n], points.get(n, 3)) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def record_one(spec: SweepSpec, params: dict[str, Any], config_id: int, curve_path: Path) -> Path:
    """Train one configuration for the full budget; its curve as a CSV at `curve_path`."""
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    base = spec.experiment.train
    config = dataclasses.replace(
        trial_train_config(base, params), num_threads=1, prior_finetune_steps=0
    )
    judge = judge_beside_vae(spec.judge, config.device, config.num_threads)
    emotion = emotion_epoch_metrics(data, 1, judge, spec.experiment.data.cache_dir)
    metrics_seconds: list[float] = []

    def timed_emotion(model, epoch, is_last):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        values = emotion(model, epoch, is_last)
        metrics_seconds.append(time.perf_counter() - started)
        return values

    rows: list[dict[str, Any]] = []

    def keep(metrics: dict[str, float], folder: Path) -> None:
        rows.append(
            {
                "config_id": config_id,
                **_epoch_values(metrics, params),
                **params,
                "metrics_seconds": metrics_seconds[-1],
            }
        )

    with tempfile.TemporaryDirectory(prefix="emovae-curve-") as work:
        train(config, data, work, on_epoch=keep, epoch_metrics=timed_emotion)
    return atomic_write_text(curve_path, pd.DataFrame(rows).to_csv(index=False))


def _epoch_values(metrics: dict[str, float], params: dict[str, Any]) -> dict[str, float]:
    """The trainer's metrics, those named like a parameter (`lr` after the plateau schedule,
    `beta` during KL warm-up) renamed `<name>_epoch` so they never hide the parameter."""
    return {f"{k}_epoch" if k in params else k: v for k, v in metrics.items()}


def read_curve(path: Path, params: dict[str, Any]) -> pd.DataFrame:
    """One configuration's recorded curve with its grid values as the parameter columns.
    (Curves recorded before `_epoch_values` existed hold the trainer's `lr` and `beta` in the
    parameters' columns.)"""
    curve = pd.read_csv(path)
    if "lr_epoch" not in curve.columns:
        curve = curve.rename(columns={k: f"{k}_epoch" for k in params if k in TRAINER_KEYS})
    return curve.assign(**params)


# The trainer's per-epoch values that share a name with a searchable parameter.
TRAINER_KEYS = ("lr", "beta")


def _code_version() -> str:
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    )
    return described.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "emodb"))
    parser.add_argument("--space", default="quick")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--points", nargs="*", default=[], help="NAME=K: K values over a range")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seed", type=int, default=0, help="the trainer's seed")
    parser.add_argument(
        "--workers", type=int, default=1, help="configurations at once (1 thread each)"
    )
    parser.add_argument("--work", default=str(REPO / "runs" / "record_curves"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "data" / "curves_emodb.csv.gz"))
    args = parser.parse_args()

    points = DEFAULT_POINTS | {k: int(v) for k, v in (p.split("=", 1) for p in args.points)}
    work = Path(args.work)
    overrides = [
        f"data.path={Path(args.data).resolve()}",
        f"data.cache_dir={work / 'cache'}",
        *SMALL_MODEL,
        f"train.max_epochs={args.epochs}",
        f"train.patience={args.epochs}",  # the full budget: no early stopping
        f"train.seed={args.seed}",
        *args.overrides,
    ]
    spec = load_space(args.space, overrides)
    grid = build_grid(spec, {k: v for k, v in points.items() if k in spec.params})
    curves = work / "curves"
    curves.mkdir(parents=True, exist_ok=True)

    # Features and the emotion judge once, before the workers share the cache.
    data = prepare_data(spec.experiment.data, spec.experiment.features, progress=True)
    ensure_judge(data, judge_cache_dir(spec.experiment.data.cache_dir), spec.judge)

    todo = [(i, p) for i, p in enumerate(grid) if not (curves / f"{i:04d}.csv").exists()]
    print(f"{len(grid)} configurations x {args.epochs} epochs; {len(grid) - len(todo)} recorded")
    # Spawned, not forked: a fork after torch started its thread pool can hang the child.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=spawn) as pool:
        futures = [pool.submit(record_one, spec, p, i, curves / f"{i:04d}.csv") for i, p in todo]
        for future in tqdm(as_completed(futures), total=len(futures), unit="config"):
            future.result()

    table = pd.concat([read_curve(curves / f"{i:04d}.csv", p) for i, p in enumerate(grid)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, compression="gzip")  # full precision: values round-trip
    meta = {
        "command": shlex.join([sys.executable.split("/")[-1], *sys.argv]),
        "space": args.space,
        "overrides": overrides[2:],  # without this machine's paths
        "corpus": Path(args.data).name,
        "seed": args.seed,
        "epochs": args.epochs,
        "grid": {n: sorted({row[n] for row in grid}) for n in grid[0]},
        "code_version": _code_version(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.workers} worker(s) x 1 thread",
        "recorded": time.strftime("%Y-%m-%d"),
    }
    Path(f"{out}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{len(table)} rows -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if not math.isfinite(table["val_recon"].sum()):
        print("warning: non-finite val_recon in the table")


if __name__ == "__main__":
    main()
