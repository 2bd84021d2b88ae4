"""Mel inversion and batched Griffin-Lim: shapes, determinism, and quality against librosa."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from emovae.griffinlim import (
    griffin_lim,
    mel_to_audio,
    mel_to_stft_magnitude,
    spectral_convergence,
)

EMODB_WAV = Path(__file__).resolve().parents[1].parent / "shared/data/emodb/wav"
needs_emodb = pytest.mark.skipif(
    not EMODB_WAV.is_dir(), reason=f"EmoDB copy not found at {EMODB_WAV}"
)

SR = 22050
N_FFT = 1024
HOP = 256
N_MELS = 128


def harmonic(seconds: float = 1.0, sr: int = SR, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A voiced-speech stand-in: gliding pitch, decaying harmonics, a syllable envelope, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    pitch = f0 * (1.0 + 0.15 * np.sin(2 * np.pi * 1.3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    audio = sum(np.sin(k * phase) / k for k in range(1, 16))
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * 2.0 * t)
    return (0.2 * envelope * audio + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)


def speech(seconds: float = 1.0, index: int = 0) -> np.ndarray:
    """An EmoDB recording cut or zero-padded to `seconds` (soundfile: librosa.load's lazy
    imports alone cost seconds)."""
    path = sorted(EMODB_WAV.glob("*.wav"))[index]
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SR:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=SR)
    return librosa.util.fix_length(audio, size=round(seconds * SR))


def magnitude(audio: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    return np.abs(librosa.stft(audio, n_fft=n_fft, hop_length=hop)).astype(np.float32)


def mel_power(audio: np.ndarray, sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS, **kw):
    mel = librosa.feature.melspectrogram(
        y=audio, sr=sr, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, **kw
    )
    return mel.astype(np.float32)


def restft(audio: torch.Tensor, n_fft: int = N_FFT, hop: int = HOP) -> torch.Tensor:
    """The magnitude that librosa.stft would give (hann, centred, zero padding)."""
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(
        audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True
    )
    return spec.abs()


def reference_griffin_lim(
    mag: torch.Tensor,
    n_fft: int,
    hop: int,
    n_iter: int,
    seed: int = 0,
    length: int | None = None,
) -> torch.Tensor:
    """librosa.griffinlim's loop, written with torch.stft / torch.istft and our initial phase."""
    window = torch.hann_window(n_fft)
    generator = torch.Generator().manual_seed(seed)
    angles = torch.polar(mag, torch.rand(mag.shape, generator=generator) * (2 * math.pi))
    previous = None
    for _ in range(n_iter):
        audio = torch.istft(angles, n_fft, hop, window=window, center=True, length=length)
        rebuilt = torch.stft(
            audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True
        )
        angles = rebuilt if previous is None else rebuilt - 0.99 / 1.99 * previous
        angles = angles / (angles.abs() + np.finfo(np.float32).tiny) * mag
        previous = rebuilt
    return torch.istft(angles, n_fft, hop, window=window, center=True, length=length)


@pytest.fixture(scope="module")
def harmonic_batch() -> torch.Tensor:
    clips = [harmonic(1.0, f0=f0, seed=i) for i, f0 in enumerate((110.0, 160.0, 220.0))]
    return torch.from_numpy(np.stack([magnitude(c) for c in clips]))


# ---------------------------------------------------------------------------- shapes and types


def test_shapes_dtype_and_device(harmonic_batch: torch.Tensor) -> None:
    frames = harmonic_batch.shape[-1]
    audio = griffin_lim(harmonic_batch.double(), N_FFT, HOP, n_iter=2)
    assert audio.shape == (3, HOP * (frames - 1))
    assert audio.dtype == torch.float32 and audio.device == harmonic_batch.device
    assert griffin_lim(harmonic_batch[0], N_FFT, HOP, n_iter=2).shape == (HOP * (frames - 1),)

    mel = torch.rand(2, 40, 17, dtype=torch.float64)
    mag = mel_to_stft_magnitude(mel, 16000, 512)
    assert mag.shape == (2, 257, 17) and mag.dtype == torch.float32
    assert mel_to_stft_magnitude(mel[0], 16000, 512).shape == (257, 17)
    assert mel_to_audio(mel, 16000, 512, 128, n_iter=2).shape == (2, 128 * 16)

    assert griffin_lim(harmonic_batch[:0], N_FFT, HOP, n_iter=2).shape == (0, HOP * (frames - 1))

    sc = spectral_convergence(harmonic_batch, harmonic_batch * 1.1)
    assert sc.shape == (3,)
    torch.testing.assert_close(sc, torch.full((3,), 0.1), rtol=1e-5, atol=1e-6)
    assert torch.equal(spectral_convergence(harmonic_batch, harmonic_batch), torch.zeros(3))


def test_restores_the_intra_op_thread_count(harmonic_batch: torch.Tensor) -> None:
    # On CPU the chunks run on worker threads with single-threaded ops during the call.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=1)
        mel_to_stft_magnitude(torch.rand(2, 40, 600), 16000, 512, nnls_iter=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_rejects_inconsistent_arguments(harmonic_batch: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="frequency bins"):
        griffin_lim(harmonic_batch, 512, HOP)
    with pytest.raises(ValueError, match="hop_length"):
        griffin_lim(harmonic_batch, N_FFT, 0)
    with pytest.raises(ValueError, match="shapes differ"):
        spectral_convergence(harmonic_batch, harmonic_batch[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_input_device(harmonic_batch: torch.Tensor) -> None:
    cuda = griffin_lim(harmonic_batch.cuda(), N_FFT, HOP, n_iter=8)
    cpu = griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=8)
    assert cuda.device.type == "cuda"
    sc_cuda = spectral_convergence(harmonic_batch, restft(cuda).cpu())
    sc_cpu = spectral_convergence(harmonic_batch, restft(cpu))
    assert torch.allclose(sc_cuda, sc_cpu, rtol=0.2)
    mel = torch.from_numpy(mel_power(harmonic(0.5)))[None]
    torch.testing.assert_close(
        mel_to_stft_magnitude(mel.cuda(), SR, N_FFT).cpu(),
        mel_to_stft_magnitude(mel, SR, N_FFT),
        rtol=1e-3,
        atol=1e-4,
    )


# ---------------------------------------------------------------------------- Griffin-Lim


def test_same_seed_same_audio(harmonic_batch: torch.Tensor) -> None:
    first = griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4, seed=7)
    assert torch.equal(first, griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4, seed=7))
    assert not torch.equal(first, griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4, seed=8))


@pytest.mark.parametrize(("n_fft", "hop", "length"), [(1024, 256, None), (1000, 300, 10_900)])
def test_equals_the_stft_istft_loop(n_fft: int, hop: int, length: int | None) -> None:
    """The fused padded-domain loop computes what stft(istft(.)) per iteration computes."""
    clips = np.stack([harmonic(0.5, seed=0), harmonic(0.5, f0=190.0, seed=1)])
    mag = torch.from_numpy(magnitude(clips, n_fft, hop))
    ours = griffin_lim(mag, n_fft, hop, n_iter=8, seed=3, length=length)
    reference = reference_griffin_lim(mag, n_fft, hop, n_iter=8, seed=3, length=length)
    assert ours.shape == reference.shape
    assert torch.linalg.vector_norm(ours - reference) <= 1e-4 * torch.linalg.vector_norm(reference)


def _quality_against_librosa(clips: np.ndarray, n_iter: int = 32) -> tuple[float, float]:
    mag = magnitude(clips)
    ours = griffin_lim(torch.from_numpy(mag), N_FFT, HOP, n_iter=n_iter)
    theirs = np.stack(
        [
            librosa.griffinlim(
                m, n_iter=n_iter, hop_length=HOP, n_fft=N_FFT, init="random", random_state=0
            )
            for m in mag
        ]
    )
    target = torch.from_numpy(mag)
    sc_ours = spectral_convergence(target, restft(ours)).mean().item()
    sc_theirs = spectral_convergence(target, restft(torch.from_numpy(theirs))).mean().item()
    return sc_ours, sc_theirs


def test_quality_matches_librosa_on_harmonic_signals() -> None:
    clips = np.stack([harmonic(1.0, f0=f0, seed=i) for i, f0 in enumerate((120.0, 200.0))])
    sc_ours, sc_theirs = _quality_against_librosa(clips)
    assert sc_ours <= 1.1 * sc_theirs, (sc_ours, sc_theirs)
    assert sc_ours < 0.2


@needs_emodb
def test_quality_matches_librosa_on_speech() -> None:
    clips = np.stack([speech(1.5, index) for index in range(2)])
    sc_ours, sc_theirs = _quality_against_librosa(clips)
    assert sc_ours <= 1.1 * sc_theirs, (sc_ours, sc_theirs)
    assert sc_ours < 0.15


def test_more_iterations_converge_further(harmonic_batch: torch.Tensor) -> None:
    target = harmonic_batch[:1]
    errors = [
        spectral_convergence(target, restft(griffin_lim(target, N_FFT, HOP, n_iter=n))).item()
        for n in (0, 4, 16)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_length_cuts_or_pads(harmonic_batch: torch.Tensor) -> None:
    frames = harmonic_batch.shape[-1]
    natural = griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4)
    short = griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4, length=5000)
    assert short.shape == (3, 5000)
    # A constraint inside the iterations, not only a crop: samples past `length` are zero there.
    assert not torch.allclose(short, natural[:, :5000], atol=1e-4)
    generate_like = HOP * (frames - 1) + 100  # what emovae.generate asks for
    assert griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4, length=generate_like).shape == (
        3,
        generate_like,
    )
    long = griffin_lim(harmonic_batch, N_FFT, HOP, n_iter=4, length=HOP * frames + 3000)
    assert long.shape == (3, HOP * frames + 3000)
    assert torch.count_nonzero(long[:, HOP * frames :]) == 0
    assert torch.isfinite(long).all() and long.abs().max() < 10 * natural.abs().max()


# ---------------------------------------------------------------------------- mel inversion


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [(SR, N_FFT, N_MELS, 0.0, None), (16000, 512, 64, 60.0, 7600.0)],
)
def test_mel_inversion_against_librosa(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> None:
    audio = harmonic(0.5, sr=sr)
    if EMODB_WAV.is_dir():
        audio = librosa.resample(speech(0.5), orig_sr=SR, target_sr=sr)
    mel = mel_power(audio, sr, n_fft, n_mels, fmin=fmin, fmax=fmax)
    true_mag = magnitude(audio, n_fft, n_fft // 4)
    theirs = librosa.feature.inverse.mel_to_stft(mel, sr=sr, n_fft=n_fft, fmin=fmin, fmax=fmax)
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    mel_t = torch.from_numpy(mel)[None]
    start = mel_to_stft_magnitude(mel_t, sr, n_fft, fmin, fmax, nnls_iter=0)[0].numpy()
    assert start.shape == theirs.shape and start.min() >= 0
    # librosa's L-BFGS-B starting point, where it often stops.
    librosa_start = np.sqrt(np.clip(np.linalg.pinv(basis) @ mel, 0, None))
    assert rel(start, librosa_start) < 1e-4

    ours = mel_to_stft_magnitude(mel_t, sr, n_fft, fmin, fmax)[0].numpy()
    assert ours.min() >= 0
    assert rel(ours, theirs) < 0.3
    # A better NNLS solution: it reproduces the mel far better and is closer to the true STFT.
    assert rel(basis @ ours**2, mel) < 0.25 * rel(basis @ theirs**2, mel)
    assert rel(ours, true_mag) <= rel(theirs, true_mag)


@needs_emodb
def test_round_trip_of_real_speech() -> None:
    audio = speech(2.0, index=3)
    mel = torch.from_numpy(mel_power(audio))[None]
    rebuilt = mel_to_audio(mel, SR, N_FFT, HOP, length=len(audio))
    assert rebuilt.shape == (1, len(audio))
    target = torch.from_numpy(magnitude(audio))[None]
    sc = spectral_convergence(target, restft(rebuilt)).item()
    assert sc < 0.2, sc
