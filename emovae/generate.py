"""Sample new clips from a trained VAE: prior -> latents -> log-mel -> vocoder -> WAV.

A run writes `sample_0000.wav`, ... and then `manifest.csv` (emovae.audio.export: the manifest
comes last and atomically, so it only ever lists a complete set). Clips keep the level the
model gave them, limited to a -1 dBFS peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emovae.audio.export import finish_set, start_set, write_clips
from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.checkpoint import LoadedModel, load_model
from emovae.dataset import Split
from emovae.emotion import convert_emotion
from emovae.evaluate import honest_label_mode, reconstruct
from emovae.features import Normalizer
from emovae.runtime import select_device

MANIFEST_COLUMNS = ("file", "emotion", "seed", "index")


def _labels_for(n: int, emotion: str | None, label_names: list[str], n_classes: int) -> list[int]:
    """Class index per sample; empty for an unconditional model."""
    if n_classes == 0:
        if emotion is not None:
            raise ValueError(
                f"emotion '{emotion}' given, but this checkpoint is an unconditional VAE: "
                "it cannot generate a chosen emotion (train with conditional: true)"
            )
        return []
    if emotion is None:
        # Round-robin: any n covers the emotions as evenly as it can, in label order.
        return [i % n_classes for i in range(n)]
    if emotion not in label_names:
        raise ValueError(
            f"emotion: unknown value '{emotion}' (this checkpoint knows {', '.join(label_names)})"
        )
    return [label_names.index(emotion)] * n


def generate(
    checkpoint_path: str | Path,
    n: int,
    out_dir: str | Path,
    emotion: str | None = None,
    seed: int = 0,
    n_iter: int = 32,
    device: str | torch.device = "cpu",
    batch_size: int = 25,
    vocoder: str = "griffinlim",
) -> Path:
    """Generate `n` clips from a checkpoint into `out_dir`; return the manifest's path.

    Latents come from the model's prior (N(0, I), or its learned prior), all `n` at once from
    a CPU generator seeded with `seed`, so they do not depend on `device` or `batch_size`.
    `vocoder` is griffinlim (any features; its random initial phase is seeded with `seed` per
    batch, so the WAV bytes repeat for the same seed, device and batch size) or hifigan
    (features made by `emovae.audio.vocoder.hifigan_features`). A conditional model cycles
    through its emotions (round-robin) unless `emotion` names one; an unconditional model
    takes no `emotion`. Clips are 16-bit mono at the feature sample rate, of the features'
    clip duration. manifest.csv has columns file, emotion (empty for an unconditional model),
    seed, index.
    """
    if n < 1:
        raise ValueError(f"n: expected a positive number of clips, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    checkpoint_path = Path(checkpoint_path)
    loaded = load_model(checkpoint_path, select_device(str(device)))
    model, features = loaded.model, loaded.features
    labels = _labels_for(n, emotion, loaded.label_names, model.n_classes)
    synthesize = load_vocoder(vocoder, features, device, n_iter=n_iter, seed=seed)
    model_device = next(model.parameters()).device
    label_tensor = torch.tensor(labels, dtype=torch.int64).to(model_device) if labels else None
    names = [f"sample_{i:04d}.wav" for i in range(n)]

    out_dir = start_set(out_dir)
    model.eval()
    z = model.sample_latents(n, label_tensor, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        decoded = torch.cat(
            [
                model.decode(
                    z[i : i + batch_size], label_tensor[i : i + batch_size] if labels else None
                ).cpu()
                for i in range(0, n, batch_size)
            ]
        )
    try:
        _vocode_and_write(decoded, loaded, synthesize, out_dir, names, batch_size)
    except RuntimeError as exc:
        raise RuntimeError(f"{checkpoint_path}: {exc}") from exc

    rows = [
        [name, loaded.label_names[labels[i]] if labels else "", seed, i]
        for i, name in enumerate(names)
    ]
    return finish_set(out_dir, MANIFEST_COLUMNS, rows)


RECON_COLUMNS = ("file", "emotion", "source")
CONVERSION_COLUMNS = ("file", "emotion", "source_emotion", "source")


def _vocode_and_write(
    decoded: torch.Tensor,
    loaded: LoadedModel,
    synthesize: Vocoder,
    out_dir: Path,
    names: list[str],
    batch_size: int,
) -> None:
    """Decoded z-scored log-mels (N, 1, n_mels, frames) -> WAVs `names` under `out_dir`."""
    for start in range(0, len(names), batch_size):
        audio = vocode(decoded[start : start + batch_size], loaded.normalizer, synthesize)
        write_clips(
            out_dir, names[start : start + batch_size], audio, synthesize.features.sample_rate
        )


def vocode(decoded: torch.Tensor, normalizer: Normalizer, synthesize: Vocoder) -> np.ndarray:
    """Decoded z-scored log-mels (N, 1, n_mels, frames) -> (N, samples) float audio of the
    features' clip duration, as the exported WAVs hold it before their peak is limited."""
    features = synthesize.features
    length = round(features.duration * features.sample_rate)
    log_mels = normalizer.denormalize(decoded[:, 0].cpu().numpy())
    return np.asarray(synthesize(log_mels, length=length))


def export_reconstructions(
    loaded: LoadedModel,
    split: Split,
    synthesize: Vocoder,
    out_dir: str | Path,
    batch_size: int = 25,
) -> Path:
    """Each clip of `split` reconstructed (posterior mean, decoded with the label withheld, or
    swapped where the model cannot withhold it: `honest_label_mode`) and vocoded, under the
    original file's name; manifest columns file, emotion (the clip's true one), source."""
    out_dir = start_set(out_dir)
    recon, _ = reconstruct(loaded.model, split, label_mode=honest_label_mode(loaded.model))
    names = [Path(p).stem + ".wav" for p in split.paths]
    _vocode_and_write(recon, loaded, synthesize, out_dir, names, batch_size)
    rows = [
        [name, loaded.label_names[int(y)], path]
        for name, y, path in zip(names, split.labels, split.paths, strict=True)
    ]
    return finish_set(out_dir, RECON_COLUMNS, rows)


def export_copy_synthesis(
    loaded: LoadedModel,
    split: Split,
    rows: Sequence[int],
    synthesize: Vocoder,
    out_dir: str | Path,
    batch_size: int = 25,
) -> Path:
    """Clips `rows` of `split` vocoded from their own features, no model (copy synthesis),
    under the original file's name: the augmentation test's control set. Manifest columns
    file, emotion (the clip's true one), source."""
    rows = [int(r) for r in rows]
    if not rows:
        raise ValueError("export_copy_synthesis: expected at least one row")
    out_dir = start_set(out_dir)
    names = [Path(split.paths[r]).stem + ".wav" for r in rows]
    _vocode_and_write(split.features[rows], loaded, synthesize, out_dir, names, batch_size)
    table = [
        [name, loaded.label_names[int(split.labels[r])], split.paths[r]]
        for name, r in zip(names, rows, strict=True)
    ]
    return finish_set(out_dir, RECON_COLUMNS, table)


def export_conversions(
    loaded: LoadedModel,
    split: Split,
    synthesize: Vocoder,
    out_dir: str | Path,
    seed: int = 0,
    source: str = "neutral",
    strength: float = 0.6,
    batch_size: int = 25,
) -> Path | None:
    """Every `source` clip of `split` converted to each other emotion (`convert_emotion`),
    written as `<stem>_to_<emotion>.wav`; manifest columns file, emotion (asked for),
    source_emotion, source. None (nothing written) for an unconditional model or a split
    without `source` clips."""
    model, label_names = loaded.model, loaded.label_names
    if not model.n_classes or source not in label_names:
        return None
    src = label_names.index(source)
    rows_of_source = torch.nonzero(split.labels == src).flatten().tolist()
    if not rows_of_source:
        return None
    targets = [c for c in range(len(label_names)) if c != src]
    pairs = [(row, c) for c in targets for row in rows_of_source]
    features_in = split.features[[row for row, _ in pairs]]
    target_labels = torch.tensor([c for _, c in pairs])
    converted = convert_emotion(
        model, features_in, torch.full_like(target_labels, src), target_labels, seed, strength
    )
    names = [f"{Path(split.paths[row]).stem}_to_{label_names[c]}.wav" for row, c in pairs]
    out_dir = start_set(out_dir)
    _vocode_and_write(converted, loaded, synthesize, out_dir, names, batch_size)
    rows = [
        [name, label_names[c], source, split.paths[row]]
        for name, (row, c) in zip(names, pairs, strict=True)
    ]
    return finish_set(out_dir, CONVERSION_COLUMNS, rows)
