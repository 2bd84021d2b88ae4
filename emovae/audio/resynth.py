"""Copy synthesis: audio -> log-mel features -> vocoder -> audio, for every file of a folder.

What is left of a recording after this round trip is the ceiling of any model that produces
those features: the sound of a copy-synthesised folder separates what the vocoder loses from
what the VAE loses. Features are taken from each whole file (not the training crop), and each
output has the input's duration, at the features' sample rate, mono, 16-bit PCM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from emovae.audio.vocoder import Vocoder, default_features, load_vocoder
from emovae.config import FeatureConfig
from emovae.features import AudioError, load_audio, log_mel
from emovae.runtime import atomic_write

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class ResynthError(ValueError):
    """The input folder is missing or holds no audio, or the output folder would overwrite it."""


@dataclass
class ResynthResult:
    """What a copy-synthesis run wrote, and the inputs it could not use with the reason."""

    vocoder: str
    features: FeatureConfig
    inputs: list[Path] = field(default_factory=list)  # every audio file found, in order
    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _Clip:
    source: Path
    target: Path
    samples: int  # at the features' sample rate


def find_audio(in_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Audio files (AUDIO_SUFFIXES, any case) under `in_dir`, sorted, none under `exclude`."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in in_dir.rglob("*"):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return sorted(found)


def _check_folders(in_dir: Path, out_dir: Path) -> None:
    if not in_dir.is_dir():
        raise ResynthError(f"{in_dir}: input folder not found (expected a folder of audio files)")
    if out_dir.resolve() == in_dir.resolve():
        raise ResynthError(
            f"{out_dir}: the output folder is the input folder; "
            "choose another one, or the outputs would overwrite the inputs"
        )


def _plan(
    sources: list[Path], in_dir: Path, out_dir: Path, features: FeatureConfig, result: ResynthResult
) -> list[_Clip]:
    """One clip per readable input of at least one STFT window whose output name no other input
    also claims; the others go to `result.failures`."""
    targets = {
        source: out_dir / source.relative_to(in_dir).with_suffix(".wav") for source in sources
    }
    claims: dict[Path, list[Path]] = {}
    for source, target in targets.items():
        claims.setdefault(target, []).append(source)
    clips = []
    for source, target in targets.items():
        others = [p for p in claims[target] if p != source]
        if others:
            names = ", ".join(str(p) for p in others)
            result.failures.append(
                (source, f"would write the same {target} as {names}: rename one")
            )
            continue
        try:
            info = sf.info(source)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            result.failures.append((source, f"unreadable audio file ({exc})"))
            continue
        samples = round(info.frames * features.sample_rate / info.samplerate)
        if samples < features.n_fft:
            window_ms = 1000 * features.n_fft / features.sample_rate
            reason = (
                f"too short: {samples} samples, one STFT window needs {features.n_fft} "
                f"({window_ms:.0f} ms at {features.sample_rate} Hz)"
            )
            result.failures.append((source, reason))
            continue
        clips.append(_Clip(source, target, samples))
    return clips


def _load(clip: _Clip, features: FeatureConfig) -> np.ndarray:
    """The whole file, mono, at the features' rate: the training crop would cut it."""
    whole = dataclasses.replace(features, duration=clip.samples / features.sample_rate)
    audio = load_audio(clip.source, whole)
    if not np.any(audio):
        raise AudioError(f"{clip.source}: silent (every sample is zero), nothing to resynthesise")
    return audio


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM, written to a temporary name first so that no half-written WAV is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Own rounding to int16, as emovae.generate, so the bytes do not depend on libsndfile.
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    atomic_write(path, lambda tmp: sf.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV"))


def _vocode_batch(
    clips: list[_Clip], audios: list[np.ndarray], vocoder: Vocoder
) -> list[np.ndarray]:
    """Clips of one batch side by side, their log-mels padded with silence to the longest."""
    features = vocoder.features
    mels = [log_mel(audio, features) for audio in audios]
    frames = max(mel.shape[1] for mel in mels)
    # log(log_floor) is silence for both log modes (mel_from_log gives 0 or the floor).
    batch = np.full((len(mels), features.n_mels, frames), np.log(features.log_floor), np.float32)
    for i, mel in enumerate(mels):
        batch[i, :, : mel.shape[1]] = mel
    out = vocoder(batch, length=max(clip.samples for clip in clips))
    return [out[i, : clip.samples] for i, clip in enumerate(clips)]


def resynthesize(
    in_dir: str | Path,
    out_dir: str | Path,
    vocoder: str = "hifigan",
    features: FeatureConfig | None = None,
    device: str | torch.device = "cpu",
    n_iter: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> ResynthResult:
    """Copy-synthesise every audio file under `in_dir` into `out_dir`, same relative paths.

    `features` defaults to `default_features(vocoder)` (HiFi-GAN's mel for hifigan, the
    project's 128-mel power features for griffinlim). Files are read at any sample rate and
    channel count (downmixed) and written as .wav; clips of similar length share a batch of
    `batch_size`. An unreadable, silent or too short file (under one STFT window), or two
    inputs that would write the same output (a.wav and a.flac), are listed in `failures` with
    the reason, and the rest are still written.
    Raises ResynthError for a missing or empty `in_dir`, or `out_dir` equal to it; an `out_dir`
    inside `in_dir` is not read as input.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    _check_folders(in_dir, out_dir)
    sources = find_audio(in_dir, exclude=out_dir)
    if not sources:
        raise ResynthError(
            f"{in_dir}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found in it or below it"
        )
    features = features or default_features(vocoder)
    # The vocoder is loaded first: features it cannot read fail before any audio is decoded.
    model = load_vocoder(vocoder, features, device=device, n_iter=n_iter, seed=seed)
    result = ResynthResult(vocoder, features, inputs=sources)
    clips = _plan(sources, in_dir, out_dir, features, result)
    # Similar lengths side by side: less silence padding in each batch.
    clips.sort(key=lambda clip: (clip.samples, str(clip.source)))
    with tqdm(
        total=len(clips), desc=f"resynth ({vocoder})", unit="file", disable=not progress
    ) as bar:
        for start in range(0, len(clips), batch_size):
            batch = clips[start : start + batch_size]
            _resynthesize_batch(batch, model, result)
            bar.update(len(batch))
    result.written.sort()
    order = {path: i for i, path in enumerate(sources)}
    result.failures.sort(key=lambda failure: order[failure[0]])
    return result


def _resynthesize_batch(clips: list[_Clip], vocoder: Vocoder, result: ResynthResult) -> None:
    loaded, audios = [], []
    for clip in clips:
        try:
            audios.append(_load(clip, vocoder.features))
            loaded.append(clip)
        except AudioError as exc:
            result.failures.append((clip.source, str(exc).removeprefix(f"{clip.source}: ")))
    if not loaded:
        return
    for clip, audio in zip(loaded, _vocode_batch(loaded, audios, vocoder), strict=True):
        _write_wav(clip.target, audio, vocoder.features.sample_rate)
        result.written.append(clip.target)
