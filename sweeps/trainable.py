"""The Ray Tune function trainable: one trial = one emovae training run.

It maps the trial's config onto a TrainConfig, reads the features from the sweep's cache (the
driver extracted them once), and reports every epoch's metrics with a checkpoint, so ASHA can
stop the trial and a restored sweep resumes it from its last epoch.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from emovae.config import DataConfig, FeatureConfig, TrainConfig, from_dict
from emovae.dataset import prepare_data
from emovae.train import train
from sweeps.space import trial_train_config

CHECKPOINT_FILES = ("last.pt", "best.pt")


def threads_for(cpus_per_trial: float) -> int:
    """Torch threads = the CPUs Ray gave the trial, so concurrent trials do not oversubscribe."""
    return max(1, math.floor(cpus_per_trial))


def _restore_into(work_dir: Path) -> Path | None:
    """Copy the trial's latest Ray checkpoint (if any) into `work_dir`; the last.pt to resume."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        for name in CHECKPOINT_FILES:
            if (Path(folder) / name).exists():
                shutil.copy2(Path(folder) / name, work_dir / name)
    return work_dir / "last.pt"


def train_trial(config: dict[str, Any], experiment: dict[str, Any], cpus_per_trial: float) -> None:
    """Ray Tune entry point. `config` holds the searched params; `experiment` the constants."""
    data_config = from_dict(DataConfig, experiment["data"])
    features = from_dict(FeatureConfig, experiment["features"])
    base = from_dict(TrainConfig, experiment["train"])
    train_config = dataclasses.replace(
        trial_train_config(base, config), num_threads=threads_for(cpus_per_trial)
    )
    data = prepare_data(data_config, features)
    work_dir = Path(tempfile.mkdtemp(prefix="emovae-trial-"))
    try:
        resume_from = _restore_into(work_dir)

        # Where the trial ran: which node, and the GPU ids Ray assigned (fractions share one).
        placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        }

        def report(metrics: dict[str, float], folder: Path) -> None:
            tune.report(metrics | placement, checkpoint=tune.Checkpoint.from_directory(str(folder)))

        train(train_config, data, work_dir, on_epoch=report, resume_from=resume_from)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
