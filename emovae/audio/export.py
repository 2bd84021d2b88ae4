"""Writing a set of clips as WAV files with a manifest, the way every exported set is written
(samples, reconstructions, conversions).

The manifest (`manifest.csv`) is written last and atomically, and a previous one is removed
before any WAV is written: a manifest means the set it lists is complete, and an interrupted
run leaves WAVs without a manifest, never a manifest that lies.

Clips keep the level the model and the vocoder gave them: loudness is one of the ways emotion
sounds (anger loud, sadness soft), and the judges of the exported audio listen for it. Only a
clip whose peak would pass -1 dBFS is scaled down, to that peak, so 16-bit PCM never clips.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from emovae.runtime import atomic_write_text

PEAK_DBFS = -1.0
MANIFEST = "manifest.csv"


def limit_peak(audio: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Scale each row of (B, samples) whose peak exceeds `peak_dbfs` down to it; others, and
    silence, stay as they are."""
    audio = np.asarray(audio, dtype=np.float64)
    ceiling = 10.0 ** (peak_dbfs / 20.0)
    peaks = np.abs(audio).max(axis=-1, keepdims=True)
    return np.where(peaks > ceiling, audio * (ceiling / np.maximum(peaks, ceiling)), audio)


def start_set(out_dir: str | Path) -> Path:
    """Create `out_dir` and remove its manifest: the set is incomplete until `finish_set`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    return out_dir


def write_clips(
    out_dir: Path, names: Sequence[str], audio: np.ndarray, sample_rate: int
) -> list[Path]:
    """(B, samples) float audio -> 16-bit mono WAVs `out_dir/names[i]` (peak-limited)."""
    if len(names) != len(audio):
        raise ValueError(f"write_clips: {len(names)} names for {len(audio)} clips")
    if not np.isfinite(audio).all():
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(audio).all(axis=1))]
        raise RuntimeError(f"non-finite audio for {bad}: nothing written for them")
    # Own rounding to int16 so the bytes do not depend on libsndfile's float conversion.
    pcm = np.round(limit_peak(audio) * 32767.0).astype(np.int16)
    paths = []
    for name, clip in zip(names, pcm, strict=True):
        sf.write(out_dir / name, clip, sample_rate, subtype="PCM_16")
        paths.append(out_dir / name)
    return paths


def finish_set(out_dir: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write the manifest (header `columns`, one row per clip): the set is complete."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    path = Path(out_dir) / MANIFEST
    atomic_write_text(path, text.getvalue(), newline="")
    return path


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a set's manifest.csv, as dicts keyed by its header."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))
