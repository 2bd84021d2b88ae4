"""Curve tables with known shapes for the replay tests (sweeps.curves, sweeps.simulator)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from sweeps.space import SweepSpec, load_space

GRID = {"latent_dim": [8, 16, 32], "beta": [1e-6, 1e-5, 1e-4], "lr": [5e-4, 3e-3]}
EPOCHS = 12


def floor_of(params: dict) -> float:
    """Each configuration's level: every curve decays towards it, so it ranks them at any epoch."""
    return (
        1.0
        + 0.1 * GRID["latent_dim"].index(params["latent_dim"])
        + 0.3 * GRID["beta"].index(params["beta"])
        + 0.05 * GRID["lr"].index(params["lr"])
    )


def curve_frame(grid: dict = GRID, epochs: int = EPOCHS) -> pd.DataFrame:
    rows = []
    for config_id, values in enumerate(itertools.product(*grid.values())):
        params = dict(zip(grid, values, strict=True))
        for epoch in range(1, epochs + 1):
            value = floor_of(params) + 2.0 / epoch
            rows.append(
                {
                    "config_id": config_id,
                    **params,
                    "epoch": epoch,
                    "val_recon": value,
                    "val_loss": value,
                    "val_gen_fd": 10 * value,
                    "epoch_seconds": 1.0 + 0.01 * params["latent_dim"],
                    "metrics_seconds": 0.5,
                }
            )
    return pd.DataFrame(rows)


def write_table(path: Path, frame: pd.DataFrame | None = None) -> Path:
    (curve_frame() if frame is None else frame).to_csv(path, index=False)
    return path


def replay_overrides(**extra: object) -> list[str]:
    """The quick space searching GRID's ranges for EPOCHS epochs, without its grad_clip."""
    settings = {
        "params.latent_dim": "{choice: [8, 16, 32]}",
        "params.beta": "{loguniform: [1.0e-6, 1.0e-4]}",
        "params.lr": "{loguniform: [5.0e-4, 3.0e-3]}",
        "params.grad_clip": "1.0",
        "train.max_epochs": EPOCHS,
        "train.patience": EPOCHS,
        "sweep.num_samples": 10,
        "sweep.metric": "val_recon",
        "sweep.emotion_every": 0,
        "sweep.grace_period": 1,
        "sweep.reduction_factor": 2,
    } | extra
    return [f"{key}={value}" for key, value in settings.items()]


def replay_spec(**extra: object) -> SweepSpec:
    return load_space("quick", replay_overrides(**extra))


def curve_values(frame: pd.DataFrame) -> np.ndarray:
    return frame["val_recon"].to_numpy()
