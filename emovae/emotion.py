"""Emotion preservation metrics: does what the VAE outputs keep its emotion?

All of them go through the emotion judge (`emovae.judge`), trained on real training speakers:

- reconstruction: the judge's accuracy on reconstructions of a split vs on the real clips (the
  drop is what the VAE loses), the Frechet distance between the two in the judge's embedding
  space, and the silhouette of the latent means by emotion;
- generation (conditional VAE): the judge's accuracy on samples drawn per emotion, its confusion
  matrix, Frechet distances to real clips overall and per emotion (FAD-like, on the judge's
  embeddings rather than VGGish), and diversity, so mode collapse shows as generated diversity
  far below the real one;
- conversion (conditional VAE): real clips of one emotion re-made as each other emotion, and
  how often the judge hears the emotion asked for.

The augmentation test (the paper's headline) runs on exported WAVs, through both judges:
emovae.evaluation.exported_audio.augmentation_gain.

Costs on a CPU are in benchmarks/RESULTS_emotion.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch
from matplotlib.figure import Figure
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

from emovae.dataset import Split
from emovae.evaluate import honest_label_mode, latent_silhouette, reconstruct
from emovae.judge import (
    PREDICT_BATCH,
    JudgeOutputs,
    TrainedJudge,
    judge_outputs,
    predict,
)
from emovae.models import SpeechVAE
from emovae.runtime import eval_mode, save_figure

FD_EPS = 1e-6
DECODE_BATCH = 64


def _labels_np(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels, dtype=np.int64)


def accuracy(
    judge: TrainedJudge,
    features: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    batch_size: int = PREDICT_BATCH,
) -> float:
    """Share of clips the judge assigns their label; NaN for no clips."""
    truth = _labels_np(labels)
    if len(truth) == 0:
        return math.nan
    pred, _ = predict(judge, features, batch_size)
    return float(accuracy_score(truth, pred))


def _confusion_of(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    if len(truth) == 0:  # sklearn refuses empty input; no clips is an all-zero matrix
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return confusion_matrix(truth, pred, labels=np.arange(n_classes))


def confusion(
    judge: TrainedJudge,
    features: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    n_classes: int,
    batch_size: int = PREDICT_BATCH,
) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true emotion, column = the judge's prediction."""
    pred, _ = predict(judge, features, batch_size)
    return _confusion_of(pred, _labels_np(labels), n_classes)


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = FD_EPS) -> float:
    """Frechet distance between Gaussians fitted to two sets of embeddings (N, D) and (M, D):

        ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

    as in FID/FAD. `eps * I` is added to both covariances so the matrix square root exists when
    there are fewer samples than dimensions (then the covariances are singular). The estimate is
    biased upwards with few samples (it is positive even for two draws from one distribution and
    shrinks as N grows), so only compare values computed from equal sample sizes. NaN when either
    set has fewer than 2 samples.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance: expected (N, D) and (M, D), got {a.shape} and {b.shape}"
        )
    if len(a) < 2 or len(b) < 2:
        return math.nan
    ridge = eps * np.eye(a.shape[1])
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + ridge
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + ridge
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    # sqrtm of a product of PSD matrices is real in theory; round-off leaves tiny imaginary parts.
    root = np.real(root)
    diff = a.mean(axis=0) - b.mean(axis=0)
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    # Round-off can push an exact match a hair below zero.
    return max(value, 0.0)


def diversity(emb: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between embeddings (N, D); NaN for fewer than 2.

    It is an unbiased estimate of the expected distance between two draws, so sets of
    different sizes compare fairly. Mode collapse: generated diversity well below the real one.
    """
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"diversity: expected embeddings (N, D), got {emb.shape}")
    if len(emb) < 2:
        return math.nan
    return float(pdist(emb).mean())


def _within_diversity(emb: np.ndarray, labels: np.ndarray) -> float:
    """Mean over emotions of the diversity within each (emotions with < 2 clips skipped)."""
    values = [diversity(emb[labels == c]) for c in np.unique(labels) if (labels == c).sum() >= 2]
    return float(np.mean(values)) if values else math.nan


def decode_samples(
    vae: SpeechVAE,
    n: int,
    labels: torch.Tensor | None,
    seed: int,
    batch_size: int = DECODE_BATCH,
) -> torch.Tensor:
    """`n` samples from the model's prior (`sample_latents`: N(0, I) or the learned prior)
    decoded in eval mode, on the CPU. The latents are drawn at once, as `vae.sample` draws
    them (same seed, same samples on any device and any `batch_size`); decoding goes in chunks
    so hundreds of samples do not hold all decoder activations at once."""
    device = next(vae.parameters()).device
    chunks = []
    with torch.no_grad(), eval_mode(vae):
        y_all = labels.to(device) if labels is not None else None
        z = vae.sample_latents(n, y_all, torch.Generator().manual_seed(seed))
        for start in range(0, n, batch_size):
            y = y_all[start : start + batch_size] if y_all is not None else None
            chunks.append(vae.decode(z[start : start + batch_size], y).cpu())
    return torch.cat(chunks)


class Reference(NamedTuple):
    """The judge's view of a real split, which does not change while a VAE trains: compute it
    once per trial (`real_reference`) and pass it to the metric functions each epoch."""

    outputs: JudgeOutputs
    labels: np.ndarray  # (N,) int64 true emotions


def real_reference(judge: TrainedJudge, split: Split, batch_size: int = PREDICT_BATCH) -> Reference:
    return Reference(judge_outputs(judge, split.features, batch_size), _labels_np(split.labels))


def _reference_for(
    judge: TrainedJudge, split: Split, reference: Reference | None, batch_size: int
) -> Reference:
    if reference is None:
        return real_reference(judge, split, batch_size)
    if len(reference.labels) != len(split) or not np.array_equal(
        reference.labels, _labels_np(split.labels)
    ):
        raise ValueError("reference: computed from another split than the one given")
    return reference


def reconstruction_emotion_metrics(
    judge: TrainedJudge,
    vae: SpeechVAE,
    split: Split,
    prefix: str = "test",
    batch_size: int = PREDICT_BATCH,
    reference: Reference | None = None,
) -> dict[str, float]:
    """The judge on `split` and on the VAE's reconstructions of it (posterior means decoded).

    A conditional VAE decodes with its label withheld, or, if it cannot withhold it, swapped
    for the next emotion (`honest_label_mode`): handed the true label, a decoder would score
    the label, not what its latent preserved.

    `<prefix>_emotion_acc_real` / `_recon` / `_drop` (real - recon; positive = emotion lost),
    `<prefix>_latent_silhouette` of the latent means by emotion, and `<prefix>_fd_recon`, the
    Frechet distance between real and reconstructed clips in the judge's embedding space.
    `reference` (from `real_reference(judge, split)`) saves re-judging the real clips.
    """
    if len(split) == 0:
        raise ValueError("reconstruction_emotion_metrics: the split is empty")
    real = _reference_for(judge, split, reference, batch_size)
    with eval_mode(vae):
        recon, mu = reconstruct(vae, split, label_mode=honest_label_mode(vae))
    rebuilt = judge_outputs(judge, recon, batch_size)
    acc_real = float(accuracy_score(real.labels, real.outputs.pred))
    acc_recon = float(accuracy_score(real.labels, rebuilt.pred))
    return {
        f"{prefix}_emotion_acc_real": acc_real,
        f"{prefix}_emotion_acc_recon": acc_recon,
        f"{prefix}_emotion_acc_drop": acc_real - acc_recon,
        f"{prefix}_latent_silhouette": latent_silhouette(mu, real.labels),
        f"{prefix}_fd_recon": frechet_distance(real.outputs.emb, rebuilt.emb),
    }


def sample_per_emotion(
    vae: SpeechVAE, n_classes: int, n_per_emotion: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_per_emotion` samples of each emotion from a conditional VAE (decoded in eval mode,
    z from a CPU generator seeded with `seed`): features (n_classes * n, 1, n_mels, frames) and
    labels, both on the CPU."""
    if not vae.n_classes:
        raise ValueError(
            "generation emotion metrics need a conditional VAE (n_classes > 0); "
            "use unconditional_generation_metrics for an unconditional one"
        )
    if vae.n_classes != n_classes:
        raise ValueError(f"the VAE knows {vae.n_classes} emotions, the judge {n_classes}")
    if n_per_emotion < 1:
        raise ValueError(f"n_per_emotion: expected a positive integer, got {n_per_emotion}")
    labels = torch.arange(n_classes).repeat_interleave(n_per_emotion)
    return decode_samples(vae, len(labels), labels, seed), labels


class GenerationMetrics(NamedTuple):
    metrics: dict[str, float]
    confusion: np.ndarray  # (n_classes, n_classes) counts: row = emotion asked for, column = judged


def generation_emotion_metrics(
    judge: TrainedJudge,
    vae: SpeechVAE,
    label_names: Sequence[str],
    n_per_emotion: int,
    seed: int,
    real_split: Split,
    batch_size: int = PREDICT_BATCH,
    reference: Reference | None = None,
    prefix: str = "",
) -> GenerationMetrics:
    """The judge on `n_per_emotion` samples per emotion of a conditional VAE, against
    `real_split` (z-scored like the VAE's training data).

    Metrics: `gen_emotion_acc` (overall, also `gen_emotion_acc_<emotion>`), `gen_fd` (Frechet
    distance, all samples vs all real clips; also `gen_fd_<emotion>` within each emotion, NaN
    where the split has fewer than 2 clips of it), `gen_diversity` / `real_diversity` (mean
    pairwise embedding distance over all clips), `gen_diversity_within` /
    `real_diversity_within` (the same within each emotion, averaged) and `gen_diversity_ratio`
    (within, generated / real: well below 1 means mode collapse). Per-emotion FDs rest on few
    real clips (10-30 per emotion in an EmoDB test split) and are biased upwards accordingly.
    `reference` (from `real_reference(judge, real_split)`) saves re-judging the real clips.
    `prefix` goes before every key (a trial reports `val_gen_fd`, ...).
    Raises ValueError for an unconditional VAE.
    """
    samples, labels = sample_per_emotion(vae, len(label_names), n_per_emotion, seed)
    return judge_samples(
        judge, samples, labels, label_names, real_split, batch_size, reference, prefix
    )


def judge_samples(
    judge: TrainedJudge,
    samples: torch.Tensor,
    labels: torch.Tensor,
    label_names: Sequence[str],
    real_split: Split,
    batch_size: int = PREDICT_BATCH,
    reference: Reference | None = None,
    prefix: str = "",
) -> GenerationMetrics:
    """`generation_emotion_metrics` of samples already drawn (`sample_per_emotion`), so a
    caller that also vocodes them draws them once."""
    names = list(label_names)
    real = _reference_for(judge, real_split, reference, batch_size)
    truth = labels.numpy()
    generated = judge_outputs(judge, samples, batch_size)
    pred, gen_emb = generated.pred, generated.emb
    real_emb, real_truth = real.outputs.emb, real.labels

    metrics = {"gen_emotion_acc": float(accuracy_score(truth, pred))}
    per_emotion = recall_score(truth, pred, labels=np.arange(len(names)), average=None)
    metrics |= {
        f"gen_emotion_acc_{name}": float(r) for name, r in zip(names, per_emotion, strict=True)
    }
    metrics["gen_fd"] = frechet_distance(gen_emb, real_emb)
    for c, name in enumerate(names):
        metrics[f"gen_fd_{name}"] = frechet_distance(gen_emb[truth == c], real_emb[real_truth == c])
    gen_within = _within_diversity(gen_emb, truth)
    real_within = _within_diversity(real_emb, real_truth)
    metrics |= {
        "gen_diversity": diversity(gen_emb),
        "real_diversity": diversity(real_emb),
        "gen_diversity_within": gen_within,
        "real_diversity_within": real_within,
        "gen_diversity_ratio": gen_within / real_within if real_within > 0 else math.nan,
    }
    metrics = {f"{prefix}{key}": value for key, value in metrics.items()}
    return GenerationMetrics(metrics, _confusion_of(pred, truth, len(names)))


def convert_emotion(
    vae: SpeechVAE,
    features: torch.Tensor,
    source_labels: torch.Tensor,
    target_labels: torch.Tensor,
    seed: int,
    strength: float = 0.6,
    batch_size: int = DECODE_BATCH,
) -> torch.Tensor:
    """Real clips (N, 1, n_mels, frames) re-made with another emotion, on the CPU.

    With a learned conditional prior the clip's latent is noised to `strength` and denoised
    towards the target emotion (SDEdit: timing and words stay, the prior reshapes the rest);
    otherwise the clip's posterior mean is decoded with the target label (the seed
    architecture's encoder also reads the source label). Needs a conditional VAE.
    """
    if not vae.n_classes:
        raise ValueError("emotion conversion needs a conditional VAE")
    device = next(vae.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    with torch.no_grad(), eval_mode(vae):
        for start in range(0, len(features), batch_size):
            x = features[start : start + batch_size].to(device)
            source = source_labels[start : start + batch_size].to(device)
            target = target_labels[start : start + batch_size].to(device)
            mu, _ = vae.encode(x, source)
            if vae.prior is not None:
                mu = vae.prior.convert(mu, target, strength, generator)
            chunks.append(vae.decode(mu, target).cpu())
    return torch.cat(chunks)


def conversion_emotion_metrics(
    judge: TrainedJudge,
    vae: SpeechVAE,
    split: Split,
    label_names: Sequence[str],
    seed: int,
    source: str = "neutral",
    strength: float = 0.6,
    prefix: str = "test",
    batch_size: int = PREDICT_BATCH,
) -> dict[str, float]:
    """Label-swap conversion: every `source` clip of `split` converted to each other emotion
    (`convert_emotion`); `<prefix>_conversion_acc` is the share the judge hears as the emotion
    asked for (chance: 1 / (emotions - 1) if the judge never says `source`), also per target
    (`<prefix>_conversion_acc_<emotion>`). NaN where the split has no `source` clip."""
    names = list(label_names)
    if source not in names:
        raise ValueError(f"source: '{source}' is not one of the emotions {names}")
    src = names.index(source)
    clips = split.features[split.labels == src]
    targets = [c for c in range(len(names)) if c != src]
    if len(clips) == 0:
        return {f"{prefix}_conversion_acc": math.nan}
    features = clips.repeat(len(targets), 1, 1, 1)
    target_labels = torch.tensor(targets).repeat_interleave(len(clips))
    source_labels = torch.full_like(target_labels, src)
    converted = convert_emotion(
        vae, features, source_labels, target_labels, seed, strength, batch_size
    )
    pred, _ = predict(judge, converted, batch_size)
    truth = target_labels.numpy()
    metrics = {f"{prefix}_conversion_acc": float(accuracy_score(truth, pred))}
    per_target = recall_score(truth, pred, labels=targets, average=None)
    for c, recall in zip(targets, per_target, strict=True):
        metrics[f"{prefix}_conversion_acc_{names[c]}"] = float(recall)
    return metrics


def unconditional_generation_metrics(
    judge: TrainedJudge,
    vae: SpeechVAE,
    n_samples: int,
    seed: int,
    real_split: Split,
    batch_size: int = PREDICT_BATCH,
    reference: Reference | None = None,
) -> dict[str, float]:
    """Samples of an unconditional VAE have no emotion asked for, so no accuracy: `gen_fd` to
    `real_split`, `gen_diversity`, `real_diversity` and `gen_diversity_ratio` (generated / real)."""
    if n_samples < 2:
        raise ValueError(f"n_samples: expected at least 2, got {n_samples}")
    real = _reference_for(judge, real_split, reference, batch_size)
    samples = decode_samples(vae, n_samples, None, seed)
    gen_emb = judge_outputs(judge, samples, batch_size).emb
    gen_div, real_div = diversity(gen_emb), diversity(real.outputs.emb)
    return {
        "gen_fd": frechet_distance(gen_emb, real.outputs.emb),
        "gen_diversity": gen_div,
        "real_diversity": real_div,
        "gen_diversity_ratio": gen_div / real_div if real_div > 0 else math.nan,
    }


def plot_confusion(
    matrix: np.ndarray, label_names: Sequence[str], path: str | Path, title: str = "Confusion"
) -> Path:
    """Row-normalised confusion matrix (colour = share of the row) with the counts written in."""
    counts = np.asarray(matrix)
    n = len(label_names)
    if counts.shape != (n, n):
        raise ValueError(f"plot_confusion: expected a ({n}, {n}) matrix, got {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = 1.0 + 0.75 * n
    figure = Figure(figsize=(size + 1.2, size))
    figure.subplots_adjust(left=0.22, right=0.95, bottom=0.22, top=0.9)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(n):
        for col in range(n):
            # White text on dark cells, dark text on light ones.
            colour = "white" if shares[row, col] > 0.5 else "black"
            ax.text(
                col,
                row,
                str(int(counts[row, col])),
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    ax.set_xticks(range(n), list(label_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), list(label_names), fontsize=8)
    ax.set_xlabel("judged emotion")
    ax.set_ylabel("true (or requested) emotion")
    ax.set_title(title, fontsize=10)
    figure.colorbar(image, ax=ax, label="share of row")
    return save_figure(figure, path)


def plot_embeddings(
    real_emb: np.ndarray,
    real_labels: np.ndarray | torch.Tensor,
    gen_emb: np.ndarray,
    gen_labels: np.ndarray | torch.Tensor,
    label_names: Sequence[str],
    path: str | Path,
) -> Path:
    """Real (dots) and generated (crosses) clips in the judge's embedding space, projected on
    the real clips' first two principal components, coloured by emotion. Mode collapse shows as
    tight clusters of crosses inside wider clouds of dots; diversities are in the title."""
    real_emb, gen_emb = np.asarray(real_emb, np.float64), np.asarray(gen_emb, np.float64)
    real_y, gen_y = _labels_np(real_labels), _labels_np(gen_labels)
    if len(real_emb) < 2:
        raise ValueError("plot_embeddings: need at least 2 real clips")
    pca = PCA(n_components=min(2, real_emb.shape[1], len(real_emb))).fit(real_emb)
    real_2d, gen_2d = pca.transform(real_emb), pca.transform(gen_emb)
    if real_2d.shape[1] < 2:
        real_2d, gen_2d = (np.pad(p, ((0, 0), (0, 1))) for p in (real_2d, gen_2d))

    figure = Figure(figsize=(7, 5.5))
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.9)
    ax = figure.subplots()
    for c, name in enumerate(label_names):
        colour = f"C{c % 10}"
        ax.scatter(*real_2d[real_y == c].T, s=14, alpha=0.5, color=colour, label=f"{name} real")
        if (gen_y == c).any():
            ax.scatter(*gen_2d[gen_y == c].T, s=22, marker="x", color=colour, label=f"{name} gen")
    ax.set_xlabel("PC1 of real embeddings")
    ax.set_ylabel("PC2 of real embeddings")
    ax.set_title(
        f"Judge embeddings: diversity generated {diversity(gen_emb):.2f} vs real "
        f"{diversity(real_emb):.2f}",
        fontsize=10,
    )
    ax.legend(fontsize=6, ncol=2, loc="best")
    return save_figure(figure, path)
