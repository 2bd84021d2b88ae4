"""One interface for the vocoders that turn log-mel spectrograms back into audio.

    vocoder = load_vocoder("hifigan", hifigan_features())
    audio = vocoder(log_mels, length=66150)  # (N, n_mels, frames) -> (N, samples) float32

Griffin-Lim reads any feature settings (it inverts the mel filterbank they describe); HiFi-GAN
reads only the mel it was trained on, which `hifigan_features()` reproduces, and refuses others
with a `VocoderError` that names the settings on both sides.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

from emovae.audio import hifigan
from emovae.config import FeatureConfig
from emovae.features import max_log_mel, mel_from_log
from emovae.griffinlim import mel_to_audio
from emovae.runtime import select_device

VOCODERS = ("griffinlim", "hifigan")


class VocoderError(ValueError):
    """A vocoder was asked for by an unknown name, or for features it cannot read."""


def hifigan_features(duration: float = 3.0) -> FeatureConfig:
    """Feature settings equal to HiFi-GAN's own mel: log(max(mel_basis @ |STFT|, 1e-5)), 80 Slaney
    mels from 0 to 8 kHz of a 1024-point STFT with hop 256 at 22,050 Hz, reflect-padded."""
    return FeatureConfig(
        sample_rate=22050,
        n_fft=1024,
        hop_length=256,
        n_mels=80,
        duration=duration,
        fmin=0.0,
        fmax=8000.0,
        log_floor=1e-5,
        power=1.0,
        log_mode="clamp",
        pad_mode="reflect",
    )


def default_features(name: str) -> FeatureConfig:
    """The features a vocoder reads best: HiFi-GAN's mel, or the project default for Griffin-Lim."""
    _check_name(name)
    return hifigan_features() if name == "hifigan" else FeatureConfig()


class Vocoder(ABC):
    """Log-mels in the units of `features` (natural log, de-normalised) -> waveforms."""

    name: str

    def __init__(self, features: FeatureConfig, device: torch.device):
        self.features = features
        self.device = device
        # A filterbank sum: computed once, not on every call.
        self.max_log_mel = max_log_mel(features)

    def __call__(
        self, log_mels: np.ndarray | torch.Tensor, length: int | None = None
    ) -> np.ndarray:
        """(N, n_mels, frames) log-mels -> (N, samples) float32 in [-1, 1].

        `samples` is `length` when given (cut or zero-padded), else frames * hop_length for
        HiFi-GAN and (frames - 1) * hop_length for Griffin-Lim.
        """
        mels = self._check_input(log_mels)
        if length is not None and length < 0:
            raise ValueError(f"length: expected a number of samples >= 0, got {length}")
        audio = self._synthesize(mels, length).detach().cpu().numpy().astype(np.float32)
        if length is not None and audio.shape[1] != length:
            audio = audio[:, :length]
            audio = np.pad(audio, ((0, 0), (0, length - audio.shape[1])))
        if not np.isfinite(audio).all():
            bad = np.flatnonzero(~np.isfinite(audio).all(axis=1)).tolist()
            raise RuntimeError(f"vocoder {self.name}: non-finite audio for clips {bad}")
        # HiFi-GAN's tanh stays inside [-1, 1], but Griffin-Lim can overshoot a little.
        return np.clip(audio, -1.0, 1.0)

    def _check_input(self, log_mels: np.ndarray | torch.Tensor) -> torch.Tensor:
        mels = torch.as_tensor(log_mels, dtype=torch.float32)
        n_mels = self.features.n_mels
        if mels.ndim != 3 or mels.shape[1] != n_mels:
            raise ValueError(
                f"vocoder {self.name}: expected log-mels of shape (N, {n_mels}, frames), "
                f"got {tuple(mels.shape)}"
            )
        finite = torch.isfinite(mels).flatten(1).all(dim=1)
        if not finite.all():
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"vocoder {self.name}: log-mels of clips {bad} are not finite")
        # An untrained decoder can emit values whose exp overflows float32 inside the vocoder.
        return mels.clamp_max(self.max_log_mel)

    @abstractmethod
    def _synthesize(self, log_mels: torch.Tensor, length: int | None) -> torch.Tensor:
        """(N, n_mels, frames) float32 log-mels -> (N, samples) waveforms."""


class GriffinLimVocoder(Vocoder):
    name = "griffinlim"

    def __init__(self, features: FeatureConfig, device: torch.device, n_iter: int, seed: int):
        super().__init__(features, device)
        self.n_iter = n_iter
        self.seed = seed

    def _synthesize(self, log_mels: torch.Tensor, length: int | None) -> torch.Tensor:
        features = self.features
        # Griffin-Lim takes `length` itself, so its iterations fit the kept samples only.
        return mel_to_audio(
            mel_from_log(log_mels.to(self.device), features),
            sample_rate=features.sample_rate,
            n_fft=features.n_fft,
            hop_length=features.hop_length,
            n_iter=self.n_iter,
            fmin=features.fmin,
            fmax=features.fmax,
            seed=self.seed,
            length=length,
            power=features.power,
        )


class HifiGanVocoder(Vocoder):
    name = "hifigan"

    def __init__(self, features: FeatureConfig, device: torch.device):
        check_hifigan_features(features)
        super().__init__(features, device)
        self.generator = hifigan.load_generator(device)

    def _synthesize(self, log_mels: torch.Tensor, length: int | None) -> torch.Tensor:
        # A decoded log-mel can dip below the floor that HiFi-GAN's training mels never went
        # under (log 1e-5); such values only mean "silent", so they are raised to the floor.
        floor = math.log(self.features.log_floor)
        return hifigan.synthesize(self.generator, log_mels.clamp_min(floor))


def _check_name(name: str) -> None:
    if name not in VOCODERS:
        raise VocoderError(f"vocoder: unknown name {name!r} (valid: {', '.join(VOCODERS)})")


def check_hifigan_features(features: FeatureConfig) -> None:
    """Raise VocoderError, naming HiFi-GAN's value and the features' for every mismatch.

    pad_mode is not checked: it only changes how the STFT pads the first and last n_fft / 2
    samples, i.e. the two edge frames at each end, which HiFi-GAN renders well either way; a
    model trained on the project's default constant padding can use HiFi-GAN unchanged.
    """
    expected = hifigan_features(features.duration)
    fields = (
        "sample_rate",
        "n_fft",
        "hop_length",
        "n_mels",
        "fmin",
        "fmax",
        "power",
        "log_mode",
        "log_floor",
    )
    wrong = [name for name in fields if not _same(getattr(features, name), getattr(expected, name))]
    if wrong:
        have = ", ".join(f"features.{name} is {getattr(features, name)!r}" for name in wrong)
        want = ", ".join(f"features.{name}={getattr(expected, name)!r}" for name in wrong)
        raise VocoderError(
            "vocoder hifigan reads 80 mels of |STFT| (power 1) from 0 to 8000 Hz, n_fft 1024, "
            f"hop 256 at 22050 Hz, clamped log (log_floor 1e-5); {have}: use "
            f"emovae.audio.vocoder.hifigan_features() (or set {want})"
        )


def _same(value: object, expected: object) -> bool:
    if isinstance(value, float) and isinstance(expected, float):
        return math.isclose(value, expected, rel_tol=1e-9)
    return value == expected


def load_vocoder(
    name: str,
    features: FeatureConfig,
    device: str | torch.device = "cpu",
    n_iter: int = 32,
    seed: int = 0,
) -> Vocoder:
    """The vocoder called `name` (one of VOCODERS) for log-mels computed with `features`.

    `n_iter` and `seed` are Griffin-Lim's iterations and initial-phase seed; HiFi-GAN is
    deterministic and ignores them. Raises VocoderError for an unknown name or features the
    vocoder cannot read, and hifigan.VocoderUnavailableError when HiFi-GAN's weights are not
    installed.
    """
    _check_name(name)
    if name == "hifigan":
        return HifiGanVocoder(features, select_device(str(device)))
    if n_iter < 0:
        raise ValueError(f"n_iter: expected Griffin-Lim iterations >= 0, got {n_iter}")
    return GriffinLimVocoder(features, select_device(str(device)), n_iter, seed)
