"""Arm B of `bench_sweeps.py overhead`: a sweep's trials through a plain process pool.

Given the trials that a shipped sweep ran (arm A: their sampled params and the epochs each ran,
ASHA having stopped some early), this runs the same trials in a
`concurrent.futures.ProcessPoolExecutor` with as many spawned workers as the sweep ran trials
at once. Each trial does the per-epoch work of `sweeps.trainable.train_trial` without Ray: the
same TrainConfig and torch threads, the same cached features, the same emotion metrics at the
same cadence, the same running-best tracker, the trainer's own checkpoints, stopped after the
epochs it ran in arm A. What it leaves out is exactly what Tune adds: `tune.report`, Tune's
checkpoint persisting, the actors, the searcher, the scheduler and the MLflow callback.

It runs as its own process, started by bench_sweeps.py: a spawned worker re-imports its
parent's main module, and the benchmark's would bring Optuna, the driver and their imports
into every worker, which a Ray trial worker does not load.

    python benchmarks/pool_arm.py REQUEST.pkl RESULT.json
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


class StopTrial(Exception):
    """Raised after the epochs a trial ran in arm A: where ASHA (or the budget) stopped it."""


def running_best(experiment: dict[str, Any], constraints: list) -> Any:
    """The objective tracker train_trial adds to every report (cheap, but part of an epoch)."""
    from sweeps.trainable import objective_tracker

    return objective_tracker(experiment.get("objective"), None, constraints)


def pool_trial(
    config: dict[str, Any], experiment: dict[str, Any], cpus_per_trial: float, epochs: int
) -> dict[str, Any]:
    """One trial in a pool worker: train_trial's work for `epochs` epochs, minus Ray."""
    entered = time.perf_counter()
    from emovae.train import TrainingDivergedError, train
    from sweeps.trainable import trial_setup

    setup = trial_setup(config, experiment, cpus_per_trial)
    best = running_best(experiment, setup.constraints)
    rows: list[dict[str, float]] = []

    def on_epoch(metrics: dict[str, float], folder: Path) -> None:
        rows.append(metrics | best(metrics))
        if len(rows) >= epochs:
            raise StopTrial

    error = None
    with tempfile.TemporaryDirectory(prefix="emovae-pool-") as work:
        try:
            train(
                setup.train_config,
                setup.data,
                work,
                on_epoch=on_epoch,
                epoch_metrics=setup.epoch_metrics,
            )
        except StopTrial:
            pass
        except TrainingDivergedError as exc:  # a trial that failed in arm A fails here too
            error = str(exc)
    return {
        "pid": os.getpid(),
        "epochs": len(rows),
        "epoch_s": sum(row.get("epoch_seconds", 0.0) for row in rows),
        "trial_s": time.perf_counter() - entered,
        "error": error,
    }


def run_pool(request: dict[str, Any]) -> dict[str, Any]:
    """Every trial of the request through the pool, in arm A's order; the pool's wall time
    from its creation to its last worker's exit."""
    # Ray sets a trial worker's OpenMP threads to its CPUs; a spawned worker inherits this.
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(request["cpus_per_trial"])))
    # Spawned, not forked: a fork after torch started its thread pool can hang the child.
    spawn = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=request["workers"], mp_context=spawn) as pool:
        futures = [
            pool.submit(
                pool_trial, params, request["experiment"], request["cpus_per_trial"], epochs
            )
            for params, epochs in request["trials"]
        ]
        trials = [future.result() for future in futures]
    return {"wall_s": time.perf_counter() - started, "trials": trials}


def main(argv: list[str]) -> int:
    request_path, result_path = argv
    request = pickle.loads(Path(request_path).read_bytes())  # written by bench_sweeps.py
    Path(result_path).write_text(json.dumps(run_pool(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
