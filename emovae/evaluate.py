"""Test-set evaluation of a trained VAE: loss terms, spectral distances in dB, latent structure,
and the plots that go with them (PNG, drawn without pyplot so no global figure state leaks).

The spectral metrics compare de-normalised log-mels, i.e. `log(mel + log_floor)` as the
features store them, not waveforms: they measure the VAE alone, without the vocoder's error.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from emovae.checkpoint import load_model
from emovae.config import FeatureConfig
from emovae.dataset import PreparedData, Split
from emovae.features import Normalizer
from emovae.loss import TERMS, LossWeights, vae_loss
from emovae.models import SpeechVAE
from emovae.runtime import atomic_write_text, save_figure, select_device

# Redundant aliases re-export what moved to emovae.spectral under its old import path.
from emovae.spectral import DB_PER_LN as DB_PER_LN
from emovae.spectral import as_float64, log_mel_to_db, per_clip, spectral_metrics
from emovae.spectral import log_spectral_distance as log_spectral_distance
from emovae.spectral import spectral_convergence as spectral_convergence
from emovae.spectral import spectral_snr_db as spectral_snr_db

N_RECONSTRUCTIONS = 4
EVAL_BATCH = 64


LABEL_MODES = ("auto", "true", "withheld", "swapped")


def condition_labels(
    model: SpeechVAE, labels: torch.Tensor, mode: str = "auto"
) -> torch.Tensor | None:
    """The labels a reconstruction decodes with (None: no label).

    - true: each clip's own emotion; withheld: none, for a model that has a "withheld" label
      (the temporal architecture with label dropout); swapped: the next emotion in label order,
      for a conditional model that cannot withhold it, so what survives is what the latent kept;
    - auto: withheld where the model can, else true (what the trainer's validation loss uses).
    An unconditional model always gets None.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"mode: expected one of {', '.join(LABEL_MODES)}, got {mode!r}")
    if not model.n_classes:
        return None
    if mode == "withheld" and model.withheld_label is None:
        raise ValueError("this conditional model cannot withhold the label: use mode 'swapped'")
    if mode == "withheld" or (mode == "auto" and model.withheld_label is not None):
        return None
    if mode == "swapped":
        return (labels + 1) % model.n_classes
    return labels


def honest_label_mode(model: SpeechVAE) -> str:
    """How emotion preservation must decode so the label cannot do the work: withheld where
    the model can, swapped for a conditional model that cannot, true (no label) otherwise."""
    if not model.n_classes:
        return "true"
    return "withheld" if model.withheld_label is not None else "swapped"


def latent_summary(mu: np.ndarray | torch.Tensor) -> np.ndarray:
    """One vector per clip: the latent mean itself, or for a time-resolved latent (N, C, T)
    its mean and standard deviation over time (N, 2C), which do not depend on where in the
    clip things happen."""
    points = as_float64(mu)
    if points.ndim == 3:
        return np.concatenate([points.mean(axis=2), points.std(axis=2)], axis=1)
    return points


def _posterior(
    model: SpeechVAE, split: Split, batch_size: int, label_mode: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruction of the posterior mean, mu and logvar for a whole split, on the CPU,
    decoded with `condition_labels(model, labels, label_mode)`."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    device = next(model.parameters()).device
    model.eval()
    recons, mus, logvars = [], [], []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            x = split.features[start : start + batch_size].to(device)
            labels = condition_labels(
                model, split.labels[start : start + batch_size].to(device), label_mode
            )
            recon, mu, logvar = model(x, labels, sample=False)
            recons.append(recon.cpu())
            mus.append(mu.cpu())
            logvars.append(logvar.cpu())
    if not recons:
        raise ValueError("cannot evaluate an empty split")
    return torch.cat(recons), torch.cat(mus), torch.cat(logvars)


def reconstruct(
    model: SpeechVAE, split: Split, batch_size: int = EVAL_BATCH, label_mode: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode each clip's posterior mean: (recon (N, 1, n_mels, frames), mu (N, latent...)),
    with the labels `condition_labels(model, labels, label_mode)` gives.

    Runs in eval mode without gradients on the model's device; results come back on the CPU.
    """
    recon, mu, _ = _posterior(model, split, batch_size, label_mode)
    return recon, mu


def _denormalize(z: torch.Tensor, normalizer: Normalizer) -> np.ndarray:
    """(N, 1, n_mels, frames) z-scores -> (N, n_mels, frames) natural-log mel power."""
    return normalizer.denormalize(z[:, 0].numpy())


def reconstruction_metrics(
    model: SpeechVAE,
    split: Split,
    weights: LossWeights,
    normalizer: Normalizer,
    features: FeatureConfig,
    prefix: str = "test",
    batch_size: int = EVAL_BATCH,
) -> dict[str, float]:
    """Loss terms and spectral metrics of `model` on `split`, decoding posterior means.

    `<prefix>_loss/_recon/_spectral/_kl` are `vae_loss` over the whole split, the same numbers
    the trainer logs as val_*; `recon` is the MSE on z-scored log-mels. `<prefix>_lsd_db`,
    `_spectral_convergence` and `_snr_db` come from `spectral_metrics` on the log-mels that
    `normalizer` (the one `split` was z-scored with) de-normalises, read as `features` made them.
    """
    recon, mu, logvar = _posterior(model, split, batch_size)
    return _metrics_of(recon, mu, logvar, split, weights, normalizer, features, prefix)


def _metrics_of(
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    split: Split,
    weights: LossWeights,
    normalizer: Normalizer,
    features: FeatureConfig,
    prefix: str,
) -> dict[str, float]:
    # Whole-split means equal the trainer's batch-size-weighted ones: every term is a mean over
    # clips (or over clips x cells, equal in number per clip).
    terms = vae_loss(recon, split.features, mu, logvar, weights)
    metrics = {f"{prefix}_{name}": float(terms[name]) for name in TERMS}
    spectral = spectral_metrics(
        _denormalize(split.features, normalizer), _denormalize(recon, normalizer), features
    )
    metrics |= {f"{prefix}_{name}": value for name, value in spectral.items()}
    return metrics


def latent_silhouette(mu: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Silhouette score (Euclidean) of the latent means grouped by emotion, in [-1, 1]; a
    time-resolved latent is summarised first (`latent_summary`).

    NaN where it is undefined: fewer than 2 emotions, or as many emotions as clips.
    """
    points = latent_summary(mu)
    groups = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    n_groups = len(np.unique(groups))
    if not 2 <= n_groups <= len(points) - 1:
        return math.nan
    return float(silhouette_score(points, groups))


def plot_reconstructions(
    originals: np.ndarray | torch.Tensor,
    recons: np.ndarray | torch.Tensor,
    labels_text: Sequence[str],
    path: str | Path,
    n: int = N_RECONSTRUCTIONS,
    unit: str = "dB",
) -> Path:
    """The first `n` clips, one row each: original | reconstruction, on one colour scale.

    Spectrograms are (N, [1,] n_mels, frames) in any one unit (dB from `log_mel_to_db` reads
    best; `unit` labels the colour bar); `labels_text` titles each row, typically with the
    emotion.
    """
    ref, rec = per_clip(as_float64(originals)), per_clip(as_float64(recons))
    n = min(n, len(ref))
    if n < 1:
        raise ValueError("plot_reconstructions: no clips to plot")
    shown = np.concatenate([ref[:n], rec[:n]])
    # One scale for all panels, so a level error in a reconstruction shows up as a colour shift.
    vmin, vmax = float(shown.min()), float(shown.max())
    height = 2.4 * n + 0.6
    figure = Figure(figsize=(9, height))
    # Fixed margins in inches: a layout engine would cost seconds per figure on a busy CPU.
    axes = figure.subplots(
        n,
        2,
        squeeze=False,
        sharex=True,
        sharey=True,
        gridspec_kw={
            "left": 0.08,
            "right": 0.88,
            "bottom": 0.55 / height,
            "top": 1 - 0.35 / height,
            "hspace": 0.45,
            "wspace": 0.08,
        },
    )
    image = None
    for row in range(n):
        text = labels_text[row] if row < len(labels_text) else f"clip {row}"
        for col, (spec, kind) in enumerate(((ref, "original"), (rec, "reconstruction"))):
            ax = axes[row, col]
            image = ax.imshow(
                spec[row],
                origin="lower",
                aspect="auto",
                interpolation="nearest",
                cmap="magma",
                vmin=vmin,
                vmax=vmax,
            )
            ax.set_title(f"{text}: {kind}", fontsize=9)
            if col == 0:
                ax.set_ylabel("mel bin")
            if row == n - 1:
                ax.set_xlabel("frame")
    colorbar_axes = figure.add_axes((0.9, 0.55 / height, 0.02, 1 - 0.9 / height))
    figure.colorbar(image, cax=colorbar_axes, label=unit)
    return save_figure(figure, path)


def plot_latent_pca(
    mu: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    label_names: Sequence[str],
    path: str | Path,
) -> Path:
    """2-D PCA of the latent means coloured by emotion; explained variance on the axes and the
    silhouette score (`latent_silhouette`, on the full latent means) in the title. A
    time-resolved latent is summarised per clip first (`latent_summary`)."""
    points = latent_summary(mu)
    groups = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if points.ndim != 2 or len(points) != len(groups):
        raise ValueError(
            f"plot_latent_pca: expected mu (N, latent_dim) and N labels, got {points.shape} "
            f"and {len(groups)}"
        )
    n_components = min(2, points.shape[1], len(points))
    pca = PCA(n_components=n_components)
    projected = pca.fit_transform(points)
    explained = list(pca.explained_variance_ratio_)
    if n_components < 2:
        # A 1-D latent (or a single clip) still plots: the missing axis is zero.
        projected = np.pad(projected, ((0, 0), (0, 2 - n_components)))
        explained += [0.0] * (2 - n_components)
    silhouette = latent_silhouette(points, groups)

    figure = Figure(figsize=(6.5, 5.5))
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.93)
    ax = figure.subplots()
    colours = [f"C{i % 10}" for i in range(max(len(label_names), 1))]
    for index in np.unique(groups):
        mask = groups == index
        name = label_names[index] if 0 <= index < len(label_names) else str(index)
        ax.scatter(
            projected[mask, 0],
            projected[mask, 1],
            s=18,
            alpha=0.8,
            color=colours[int(index) % len(colours)],
            label=f"{name} ({int(mask.sum())})",
        )
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% of variance)")
    ax.set_title(f"Latent means by emotion (silhouette {silhouette:.3f})")
    ax.legend(fontsize=8, markerscale=1.5, loc="best")
    return save_figure(figure, path)


def plot_learning_curves(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Train vs val per loss term (2 x 2) and the learning rate (log scale) below, per epoch."""
    if not history:
        raise ValueError("plot_learning_curves: empty history")
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    figure = Figure(figsize=(10, 9))
    grid = figure.add_gridspec(
        3,
        2,
        height_ratios=[1, 1, 0.6],
        left=0.08,
        right=0.97,
        bottom=0.07,
        top=0.96,
        hspace=0.45,
        wspace=0.2,
    )
    for position, term in enumerate(TERMS):
        ax = figure.add_subplot(grid[position // 2, position % 2])
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}_{term}"
            if all(key in row for row in history):
                ax.plot(epochs, [row[key] for row in history], style, marker=".", label=split)
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax = figure.add_subplot(grid[2, :])
    if all("lr" in row for row in history):
        ax.plot(epochs, [row["lr"] for row in history], color="C2", marker=".")
        ax.set_yscale("log")
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return save_figure(figure, path)


def _check_features(
    loaded_features: FeatureConfig, data_features: FeatureConfig, checkpoint: Path
) -> None:
    ours, theirs = dataclasses.asdict(loaded_features), dataclasses.asdict(data_features)
    differ = [f"{k} ({ours[k]} vs {theirs.get(k)})" for k in ours if ours[k] != theirs.get(k)]
    if differ:
        raise ValueError(
            f"{checkpoint}: trained on other features than the data given: {', '.join(differ)} "
            "(checkpoint vs data)"
        )


def _renormalize(split: Split, source: Normalizer, target: Normalizer) -> Split:
    """`split` z-scored with `target` instead of `source` (no copy when they agree)."""
    if np.array_equal(source.mean, target.mean) and np.array_equal(source.std, target.std):
        return split
    log_mels = _denormalize(split.features, source)
    features = torch.from_numpy(target.normalize(log_mels)).unsqueeze(1)
    return dataclasses.replace(split, features=features)


def _pick_examples(labels: torch.Tensor, n: int) -> list[int]:
    """Up to `n` clip indices, one per emotion first, so the plot shows several emotions."""
    chosen: list[int] = []
    seen: set[int] = set()
    for index, label in enumerate(labels.tolist()):
        if label not in seen:
            seen.add(label)
            chosen.append(index)
    first = set(chosen)
    chosen += [i for i in range(len(labels)) if i not in first]
    return chosen[:n]


def _example_title(split: Split, label_names: Sequence[str], index: int) -> str:
    emotion = label_names[int(split.labels[index])]
    return f"{emotion} ({Path(split.paths[index]).name})" if index < len(split.paths) else emotion


def _json_value(value: float) -> float | None:
    # Strict JSON has no NaN/Infinity; null marks an undefined or infinite metric.
    return value if math.isfinite(value) else None


def evaluate_checkpoint(
    checkpoint_path: str | Path,
    data: PreparedData,
    out_dir: str | Path,
    history: Sequence[dict[str, float]] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Evaluate a checkpoint on `data.test`; write plots and metrics.json into `out_dir`.

    Files: reconstructions.png, latent_pca.png, learning_curves.png (only with `history`) and
    metrics.json (the returned metrics; NaN or infinite values written as null). The test split
    is re-z-scored with the checkpoint's normalizer if `data` was normalised differently, since
    the model only knows its own training statistics.
    """
    checkpoint_path = Path(checkpoint_path)
    out_dir = Path(out_dir)
    loaded = load_model(checkpoint_path, select_device(str(device)))
    _check_features(loaded.features, data.features, checkpoint_path)
    if loaded.model.n_classes and list(loaded.label_names) != list(data.label_names):
        raise ValueError(
            f"{checkpoint_path}: trained on emotions {loaded.label_names}, "
            f"but the data has {data.label_names}"
        )
    test = _renormalize(data.test, data.normalizer, loaded.normalizer)
    if len(test) == 0:
        raise ValueError("evaluate_checkpoint: the test split is empty")

    recon, mu, logvar = _posterior(loaded.model, test, EVAL_BATCH)
    metrics = _metrics_of(
        recon,
        mu,
        logvar,
        test,
        LossWeights.of(loaded.train),
        loaded.normalizer,
        loaded.features,
        "test",
    )
    metrics["test_latent_silhouette"] = latent_silhouette(mu, test.labels)

    out_dir.mkdir(parents=True, exist_ok=True)
    picks = _pick_examples(test.labels, N_RECONSTRUCTIONS)
    names = data.label_names
    plot_reconstructions(
        log_mel_to_db(_denormalize(test.features[picks], loaded.normalizer)),
        log_mel_to_db(_denormalize(recon[picks], loaded.normalizer)),
        [_example_title(test, names, i) for i in picks],
        out_dir / "reconstructions.png",
    )
    plot_latent_pca(mu, test.labels, names, out_dir / "latent_pca.png")
    if history:
        plot_learning_curves(history, out_dir / "learning_curves.png")

    payload = {key: _json_value(value) for key, value in metrics.items()}
    atomic_write_text(
        out_dir / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n"
    )
    return metrics
