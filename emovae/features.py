"""Audio -> log-mel features, with a disk cache keyed by audio content and feature parameters.

A sweep of many trials extracts features once: the cache key is a hash of every file's content
hash (re-hashed only when its size or mtime changes, as git does) and every feature parameter.
Changing one parameter or one file gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import librosa
import numpy as np
import soundfile as sf
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from emovae.config import FeatureConfig, clip_frames
from emovae.runtime import atomic_save_array, atomic_write_bytes

CACHE_VERSION = 1  # bump when the extraction code changes what it computes


class AudioError(ValueError):
    """An audio file that cannot be read or holds no samples."""


def n_frames(features: FeatureConfig) -> int:
    """Frames of a clip of `features.duration` seconds (librosa's centred STFT)."""
    return clip_frames(features)


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """(float32 samples averaged over channels, sample rate) of an audio file; AudioError,
    naming the file, when it cannot be read or holds no samples."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: unreadable audio file ({exc})") from exc
    if audio.shape[0] == 0:
        raise AudioError(f"{path}: audio file holds no samples (zero length)")
    return audio.mean(axis=1), rate


def load_audio(path: Path, features: FeatureConfig) -> np.ndarray:
    """Mono float32 at the feature sample rate, cropped or zero-padded to the configured duration."""
    audio, rate = read_mono(path)
    if rate != features.sample_rate:
        audio = librosa.resample(
            audio, orig_sr=rate, target_sr=features.sample_rate, res_type="soxr_hq"
        )
    target = round(features.duration * features.sample_rate)
    if audio.shape[0] >= target:
        return np.ascontiguousarray(audio[:target])
    # Short clips are padded, not rejected: EmoDB's originals run from about 1.2 s.
    return np.pad(audio, (0, target - audio.shape[0]))


def mel_filterbank_args(features: FeatureConfig) -> dict[str, Any]:
    """The mel filterbank's settings as librosa's `filters.mel` (and so `melspectrogram`) takes them."""
    return {
        "sr": features.sample_rate,
        "n_fft": features.n_fft,
        "n_mels": features.n_mels,
        "fmin": features.fmin,
        "fmax": features.fmax,
    }


def log_mel(audio: np.ndarray, features: FeatureConfig) -> np.ndarray:
    """(n_mels, frames) natural-log mel spectrogram (of power or magnitude: `features.power`)."""
    mel = librosa.feature.melspectrogram(
        y=audio,
        hop_length=features.hop_length,
        power=features.power,
        pad_mode=features.pad_mode,
        **mel_filterbank_args(features),
    )
    if features.log_mode == "clamp":
        return np.log(np.maximum(mel, features.log_floor)).astype(np.float32)
    return np.log(mel + features.log_floor).astype(np.float32)


ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def mel_from_log(log_mel: ArrayT, features: FeatureConfig) -> ArrayT:
    """Inverse of `log_mel`'s log: the mel spectrogram in its own unit (power or magnitude).

    With `log_mode` add, clamped at 0, since a decoded log-mel can fall below log(log_floor),
    where the inverse would be negative; with clamp, values at the floor stay at the floor.
    """
    floor = features.log_floor if features.log_mode == "add" else 0.0
    if isinstance(log_mel, torch.Tensor):
        return (torch.exp(log_mel) - floor).clamp_min(0.0)
    return np.maximum(np.exp(log_mel) - floor, 0.0)


def max_log_mel(features: FeatureConfig) -> float:
    """The largest log-mel any full-scale ([-1, 1]) signal can have under `features`.

    |STFT| of a Hann-windowed frame is at most the window's sum, and a mel band adds at most
    its filter's weights times that; a decoded value above this is not a sound, only a model
    that has not learnt yet, and is clamped here before a vocoder exponentiates it.
    """
    basis = librosa.filters.mel(**mel_filterbank_args(features))
    peak_magnitude = features.n_fft / 2  # sum of a periodic Hann window
    return float(np.log(basis.sum(axis=1).max() * peak_magnitude**features.power))


def mel_power_from_log(log_mel: ArrayT, features: FeatureConfig) -> ArrayT:
    """The mel power spectrogram behind a log-mel; for magnitude features (power 1), the square
    of the mel magnitude, which is what a listener's level comparison needs."""
    mel = mel_from_log(log_mel, features)
    return mel if features.power == 2.0 else mel**2


def extract_file(path: Path, features: FeatureConfig) -> np.ndarray:
    return log_mel(load_audio(path, features), features)


@dataclass
class FeatureSet:
    """Log-mels of a list of files; `bad_files` holds (path, reason) of files that were skipped."""

    log_mels: np.ndarray  # (n_ok, n_mels, frames) float32
    paths: list[Path]  # the files behind log_mels, in order
    bad_files: list[tuple[str, str]]
    key: str = ""  # the cache key: audio content + feature parameters ("" without a cache)


class _HashIndex:
    """path -> (size, mtime_ns, sha256): files are re-hashed only when their stat changes."""

    def __init__(self, index_path: Path):
        self.index_path = index_path
        self.entries: dict[str, list] = {}
        if index_path.exists():
            try:
                self.entries = json.loads(index_path.read_text())
            except json.JSONDecodeError:
                self.entries = {}  # a damaged index only costs a re-hash
        self.changed = False

    def content_hash(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError as exc:
            raise AudioError(f"{path}: cannot read file ({exc})") from exc
        key = str(path.resolve())
        entry = self.entries.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            atomic_write_bytes(self.index_path, json.dumps(self.entries).encode())


def cache_key(content_hashes: Sequence[str], features: FeatureConfig, skip_bad_files: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, dataclasses.asdict(features), skip_bad_files]).encode())
    for digest in content_hashes:
        h.update(digest.encode())
    return h.hexdigest()[:24]


def extract_features(
    paths: Sequence[Path],
    features: FeatureConfig,
    cache_dir: Path | None = None,
    skip_bad_files: bool = False,
    progress: bool = False,
) -> FeatureSet:
    """Log-mels for `paths`, read from / written to `cache_dir` when given.

    A bad file raises AudioError naming it, unless `skip_bad_files`, in which case it is
    left out and listed in `bad_files`.
    """
    paths = [Path(p) for p in paths]
    key = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        index = _HashIndex(cache_dir / "content-hashes.json")
        key = cache_key([index.content_hash(p) for p in paths], features, skip_bad_files)
        index.save()
        cached = _read_cache(cache_dir, key, paths)
        if cached is not None:
            cached.key = key
            return cached

    arrays, kept, bad = [], [], []
    # Multithreaded OpenBLAS makes the small mel-filter products ~10x slower here, not faster.
    with threadpool_limits(1, user_api="blas"):
        for path in tqdm(paths, desc="log-mel features", unit="file", disable=not progress):
            try:
                arrays.append(extract_file(path, features))
                kept.append(path)
            except AudioError as exc:
                if not skip_bad_files:
                    raise
                bad.append((str(path), str(exc)))
    if not arrays:
        raise AudioError(f"no readable audio among {len(paths)} files")
    result = FeatureSet(np.stack(arrays), kept, bad, key or "")
    if key is not None:
        _write_cache(cache_dir, key, result, paths)
    return result


def _read_cache(cache_dir: Path, key: str, paths: list[Path]) -> FeatureSet | None:
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not (array_path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    kept = [paths[i] for i in meta["kept"]]
    bad = [tuple(b) for b in meta["bad_files"]]
    return FeatureSet(np.load(array_path), kept, bad)


def _write_cache(cache_dir: Path, key: str, result: FeatureSet, paths: list[Path]) -> None:
    position = {p: i for i, p in enumerate(paths)}
    meta = {"kept": [position[p] for p in result.paths], "bad_files": result.bad_files}
    atomic_save_array(cache_dir / f"{key}.npy", result.log_mels)
    # The array lands first: a reader needs both files, so a crash in between is a cache miss.
    atomic_write_bytes(cache_dir / f"{key}.json", json.dumps(meta).encode())


@dataclass
class Normalizer:
    """Per-mel-bin z-score with statistics from the training split only."""

    mean: np.ndarray  # (n_mels,)
    std: np.ndarray  # (n_mels,)

    @classmethod
    def fit(cls, log_mels: np.ndarray) -> Normalizer:
        mean = log_mels.mean(axis=(0, 2), dtype=np.float64)
        std = log_mels.std(axis=(0, 2), dtype=np.float64)
        return cls(mean.astype(np.float32), np.maximum(std, 1e-5).astype(np.float32))

    def normalize(self, log_mels: np.ndarray) -> np.ndarray:
        return ((log_mels - self.mean[:, None]) / self.std[:, None]).astype(np.float32)

    def denormalize(self, z: np.ndarray) -> np.ndarray:
        return (z * self.std[:, None] + self.mean[:, None]).astype(np.float32)
