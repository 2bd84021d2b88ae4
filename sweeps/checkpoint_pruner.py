"""Deletes a trial's superseded checkpoints once Tune's saved experiment state no longer
restores from them.

Tune's own retention (`CheckpointConfig(num_to_keep)`) deletes a trial's older checkpoint as
a new one registers, and snapshots its experiment state (what `--resume` restores from) later
in the same loop step or after: a driver killed in between resumes the trial from a deleted
checkpoint, and Tune fails it ("Could not recover from checkpoint as it does not exist on
storage anymore"; ray-project/ray#27790; caught by the SIGKILL test in tests/test_sweep_e2e.py).
So the sweep lets Tune keep every checkpoint, and this callback deletes, every `every_s` and
once the sweep ends, each trial's checkpoints older than the one the newest snapshot on
storage restores it from.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)")

# A prune decodes every trial of the saved state inside Tune's loop, so its time grows with
# the sweep (benchmarks/RESULTS_sweeps.md, "The checkpoint pruner at scale"): the period
# stretches so that pruning never takes more than this share of the driver's time.
MAX_DRIVER_SHARE = 0.05


class CheckpointPruner(tune.Callback):
    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._period_s = every_s
        self._last_prune = float("-inf")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        started = self._clock()
        if trials and started - self._last_prune >= self._period_s:
            _prune(trials)
            self._last_prune = self._clock()
            spent = self._last_prune - started
            self._period_s = max(self.every_s, spent / MAX_DRIVER_SHARE)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # After a sweep that ran to its end Tune has just saved its final state, so each trial
        # keeps only its last checkpoint; after an error, whatever the last save names.
        _prune(trials)


def _prune(trials: list) -> None:
    if trials:
        prune_superseded_checkpoints(Path(trials[0].storage.experiment_fs_path))


def prune_superseded_checkpoints(experiment_dir: Path) -> int:
    """Delete, in each trial folder of `experiment_dir` (a local Tune experiment), the
    checkpoints older than the one its newest saved state restores the trial from; the number
    deleted. Trials the state lacks, or holds without a checkpoint, keep all of theirs."""
    deleted = 0
    for restore_from in restore_points(experiment_dir).values():
        if restore_from is None:
            continue
        kept_index = _checkpoint_index(restore_from.name)
        for folder in (experiment_dir / restore_from.parent.name).glob("checkpoint_*"):
            index = _checkpoint_index(folder.name)
            if index is not None and kept_index is not None and index < kept_index:
                shutil.rmtree(folder, ignore_errors=True)
                deleted += 1
    return deleted


def restore_points(experiment_dir: Path) -> dict[str, Path | None]:
    """Trial id -> the checkpoint a resume restores it from (None: from scratch), for each
    trial of the newest `experiment_state-*.json` in `experiment_dir`, read as Tune's own
    restore reads it (`Trial.from_json_state` + `restore_run_metadata`); {} while there is
    none or it is being replaced (read again at the next call)."""
    snapshots = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not snapshots:
        return {}
    try:
        trial_data = json.loads(snapshots[-1].read_text())["trial_data"]
    except (OSError, ValueError, KeyError):
        return {}
    points = {}
    for trial_json, run_metadata in trial_data:
        trial = Trial.from_json_state(trial_json, stub=True)
        trial.restore_run_metadata(run_metadata)
        checkpoint = trial.checkpoint
        points[trial.trial_id] = Path(checkpoint.path) if checkpoint is not None else None
    return points


def _checkpoint_index(name: str) -> int | None:
    match = CHECKPOINT_DIR.fullmatch(name)
    return int(match.group(1)) if match else None
