"""Sample new clips from a trained VAE: z ~ N(0, I) -> log-mel -> mel power -> Griffin-Lim -> WAV.

A run writes `sample_0000.wav`, ... and then `manifest.csv`, last and atomically: a manifest
means the set it lists is complete. A previous run's manifest is removed before any WAV is
written, so an interrupted run leaves WAVs without a manifest, never a manifest that lies.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from emovae.checkpoint import load_model
from emovae.features import mel_from_log
from emovae.griffinlim import mel_to_audio
from emovae.train import select_device

PEAK_DBFS = -1.0
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


def peak_normalize(audio: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Scale each row of (B, samples) to the given peak; all-zero rows stay zero."""
    peaks = np.abs(audio).max(axis=-1, keepdims=True)
    target = 10.0 ** (peak_dbfs / 20.0)
    return np.where(peaks > 0, audio * (target / np.where(peaks > 0, peaks, 1.0)), 0.0)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, newline="")
    os.replace(tmp, path)


def generate(
    checkpoint_path: str | Path,
    n: int,
    out_dir: str | Path,
    emotion: str | None = None,
    seed: int = 0,
    n_iter: int = 32,
    device: str | torch.device = "cpu",
    batch_size: int = 25,
) -> Path:
    """Generate `n` clips from a checkpoint into `out_dir`; return the manifest's path.

    Latents are drawn on the CPU from a generator seeded with `seed`, all `n` at once, so they
    do not depend on `device` or `batch_size`; Griffin-Lim's random initial phase is seeded with
    `seed` per batch, so the WAV bytes are reproducible for the same seed, device and
    `batch_size`. A conditional model cycles through its emotions (round-robin) unless `emotion`
    names one; an unconditional model takes no `emotion`. Clips are peak-normalised to -1 dBFS, 16-bit mono at the feature sample rate,
    of the features' clip duration. manifest.csv has columns file, emotion (empty for an
    unconditional model), seed, index.
    """
    if n < 1:
        raise ValueError(f"n: expected a positive number of clips, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    checkpoint_path = Path(checkpoint_path)
    loaded = load_model(checkpoint_path, select_device(str(device)))
    model, features = loaded.model, loaded.features
    labels = _labels_for(n, emotion, loaded.label_names, model.n_classes)
    model_device = next(model.parameters()).device

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    manifest.unlink(missing_ok=True)

    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.latent_dim, generator=generator)
    label_tensor = torch.tensor(labels, dtype=torch.int64) if labels else None
    length = round(features.duration * features.sample_rate)
    names = [f"sample_{i:04d}.wav" for i in range(n)]

    model.eval()
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        with torch.no_grad():
            batch_labels = label_tensor[start:stop].to(model_device) if labels else None
            decoded = model.decode(z[start:stop].to(model_device), batch_labels)
        log_mels = loaded.normalizer.denormalize(decoded[:, 0].cpu().numpy())
        mel = torch.from_numpy(mel_from_log(log_mels, features))
        audio = mel_to_audio(
            mel.to(model_device),
            sample_rate=features.sample_rate,
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            n_iter=n_iter,
            fmin=features.fmin,
            fmax=features.fmax,
            seed=seed,
            length=length,
            power=features.power,
        )
        audio = audio.detach().cpu().numpy().astype(np.float64)
        if not np.isfinite(audio).all():
            bad = sorted({start + int(i) for i in np.flatnonzero(~np.isfinite(audio).all(axis=1))})
            raise RuntimeError(f"{checkpoint_path}: non-finite audio for samples {bad}")
        audio = peak_normalize(audio)
        # Own rounding to int16 so the bytes do not depend on libsndfile's float conversion.
        pcm = np.round(audio * 32767.0).astype(np.int16)
        for offset, clip in enumerate(pcm):
            sf.write(out_dir / names[start + offset], clip, features.sample_rate, subtype="PCM_16")

    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for index, name in enumerate(names):
        label = loaded.label_names[labels[index]] if labels else ""
        writer.writerow([name, label, seed, index])
    _write_atomic(manifest, rows.getvalue())
    return manifest
