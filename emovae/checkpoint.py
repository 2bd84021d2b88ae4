"""Checkpoints that rebuild a model on their own: weights, configs, label map, normalisation.

Everything stored is a tensor or plain Python data, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovae.config import ConfigError, FeatureConfig, TrainConfig, from_dict
from emovae.features import Normalizer
from emovae.models import SpeechVAE, build_model
from emovae.runtime import atomic_write

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or does not fit the model asked for."""


@dataclass
class LoadedModel:
    model: SpeechVAE
    train: TrainConfig
    features: FeatureConfig
    label_names: list[str]
    normalizer: Normalizer
    epoch: int
    metrics: dict[str, float]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic write: a crash mid-save leaves the previous checkpoint intact."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def model_state(
    model: SpeechVAE,
    train: TrainConfig,
    features: FeatureConfig,
    label_names: list[str],
    normalizer: Normalizer,
    epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": dataclasses.asdict(train),
        "feature_config": dataclasses.asdict(features),
        "label_names": list(label_names),
        "norm_mean": torch.from_numpy(normalizer.mean),
        "norm_std": torch.from_numpy(normalizer.std),
        "epoch": epoch,
        "metrics": dict(metrics),
    }


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable emovae checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: not an emovae checkpoint of format {FORMAT_VERSION} "
            f"(found {state.get('format_version') if isinstance(state, dict) else type(state)})"
        )
    return state


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a checkpoint alone, in eval mode on `device`."""
    state = read_checkpoint(path, device)
    try:
        train = from_dict(TrainConfig, state["train_config"], f"{path}: train_config")
        features = from_dict(FeatureConfig, state["feature_config"], f"{path}: feature_config")
    except ConfigError as exc:
        raise CheckpointError(
            f"{path}: stored configuration does not fit this version ({exc})"
        ) from exc
    model = build_model(train, features, len(state["label_names"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the configured model ({exc})") from exc
    normalizer = Normalizer(
        np.asarray(state["norm_mean"].cpu(), dtype=np.float32),
        np.asarray(state["norm_std"].cpu(), dtype=np.float32),
    )
    return LoadedModel(
        model=model.to(device).eval(),
        train=train,
        features=features,
        label_names=list(state["label_names"]),
        normalizer=normalizer,
        epoch=int(state["epoch"]),
        metrics=dict(state["metrics"]),
    )
