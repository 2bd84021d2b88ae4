"""Audio loading, log-mel extraction, the feature cache, bad files and the z-score normaliser."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

import emovae.features as features_module
from emovae.config import ConfigError, FeatureConfig
from emovae.features import (
    AudioError,
    Normalizer,
    extract_features,
    extract_file,
    load_audio,
    log_mel,
    n_frames,
)

# Small settings keep every extraction in the millisecond range.
FEATURES = FeatureConfig(n_mels=40, duration=0.5)
RATE = FEATURES.sample_rate
N_SAMPLES = round(FEATURES.duration * RATE)


def _tone(seconds: float, rate: int, freq: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    audio = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    return audio.astype(np.float32)


def _write(path: Path, audio: np.ndarray, rate: int = RATE, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype=subtype)
    return path


def _corpus(root: Path, n: int = 4) -> list[Path]:
    return [
        _write(root / f"clip{i}.wav", _tone(0.6, RATE, 200.0 + 60 * i, seed=i)) for i in range(n)
    ]


def _dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1.0 / rate)[np.argmax(spectrum)])


def _assert_same_features(actual: np.ndarray, expected: np.ndarray) -> None:
    """extract_features limits BLAS to one thread; a direct call may use several, which sums the
    mel-filter products in another order: equal up to float32 rounding, not bit for bit."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


class _Counter:
    """Wraps extract_file and counts calls: a cache hit makes none."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path, features: FeatureConfig) -> np.ndarray:
        self.calls.append(Path(path))
        return extract_file(path, features)


@pytest.fixture
def count_extractions(monkeypatch: pytest.MonkeyPatch) -> Callable[[], _Counter]:
    def install() -> _Counter:
        counter = _Counter()
        monkeypatch.setattr(features_module, "extract_file", counter)
        return counter

    return install


# --- load_audio -------------------------------------------------------------------------------


def test_load_audio_downmixes_stereo_to_the_channel_mean(tmp_path: Path) -> None:
    left = _tone(0.5, RATE, 300.0, seed=1)
    right = _tone(0.5, RATE, 700.0, seed=2)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    audio = load_audio(path, FEATURES)
    assert audio.ndim == 1 and audio.dtype == np.float32
    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)


def test_load_audio_resamples_48k_ravdess_stereo_to_22050(
    make_ravdess: Callable[..., Path],
) -> None:
    root = make_ravdess(actors=(2,), emotions=("01",), song=False)
    (path,) = sorted(root.rglob("*.wav"))
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (48_000, 2)  # the fixture's stereo 48 kHz file
    features = FeatureConfig(duration=2.0)
    audio = load_audio(path, features)
    assert audio.shape == (round(2.0 * 22_050),)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.1


def test_load_audio_resampling_keeps_the_pitch(tmp_path: Path) -> None:
    """Resampling, not truncation: a 440 Hz tone at 48 kHz is still 440 Hz at 22,050 Hz (read
    without resampling, its samples would sound at 440 * 22050 / 48000 = 202 Hz)."""
    path = _write(tmp_path / "a.wav", _tone(1.0, 48_000, 440.0), rate=48_000)
    audio = load_audio(path, FeatureConfig(duration=1.0))
    assert audio.shape == (22_050,)
    assert _dominant_frequency(audio, 22_050) == pytest.approx(440.0, abs=3.0)


def test_load_audio_crops_long_clips(tmp_path: Path) -> None:
    source = _tone(1.3, RATE, 250.0)
    audio = load_audio(_write(tmp_path / "long.wav", source), FEATURES)
    assert audio.shape == (N_SAMPLES,)
    np.testing.assert_array_equal(audio, source[:N_SAMPLES])


def test_load_audio_zero_pads_short_clips_instead_of_rejecting_them(tmp_path: Path) -> None:
    source = _tone(0.2, RATE, 250.0)
    audio = load_audio(_write(tmp_path / "short.wav", source), FEATURES)
    assert audio.shape == (N_SAMPLES,)
    np.testing.assert_array_equal(audio[: len(source)], source)
    assert not audio[len(source) :].any()


# --- log_mel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features",
    [
        FEATURES,
        FeatureConfig(n_mels=64, duration=0.75),
        FeatureConfig(n_mels=128, duration=1.0, hop_length=200, n_fft=512),
        FeatureConfig(n_mels=32, duration=0.3, sample_rate=16_000, fmin=50.0, fmax=6000.0),
    ],
    ids=["40x0.5s", "64x0.75s", "128x1s-hop200", "32x0.3s-16k"],
)
def test_log_mel_shape_matches_n_frames_and_is_finite(
    tmp_path: Path, features: FeatureConfig
) -> None:
    path = _write(tmp_path / "a.wav", _tone(1.2, features.sample_rate, 330.0))
    mel = log_mel(load_audio(path, features), features)
    assert mel.shape == (features.n_mels, n_frames(features))
    assert mel.dtype == np.float32
    assert np.isfinite(mel).all()
    assert mel.std() > 0.5  # a tone is not a flat spectrogram


def test_log_mel_of_silence_is_the_log_floor_not_minus_infinity() -> None:
    silence = np.zeros(N_SAMPLES, dtype=np.float32)
    mel = log_mel(silence, FEATURES)
    assert mel.shape == (FEATURES.n_mels, n_frames(FEATURES))
    np.testing.assert_allclose(mel, np.log(FEATURES.log_floor), rtol=1e-6)


# --- the cache --------------------------------------------------------------------------------


def test_second_call_hits_the_cache_and_returns_identical_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _corpus(tmp_path / "corpus")
    cache = tmp_path / "cache"
    first = extract_features(paths, FEATURES, cache)
    assert first.log_mels.shape == (len(paths), FEATURES.n_mels, n_frames(FEATURES))
    for row, path in zip(first.log_mels, paths, strict=True):
        _assert_same_features(row, extract_file(path, FEATURES))

    def no_extraction(path: Path, features: FeatureConfig) -> np.ndarray:
        raise AssertionError(f"cache miss: {path} was extracted again")

    monkeypatch.setattr(features_module, "extract_file", no_extraction)
    second = extract_features(paths, FEATURES, cache)
    np.testing.assert_array_equal(second.log_mels, first.log_mels)
    assert second.log_mels.dtype == np.float32
    assert second.paths == paths
    assert second.bad_files == []


def test_without_a_cache_dir_every_call_extracts(
    tmp_path: Path, count_extractions: Callable[[], _Counter]
) -> None:
    paths = _corpus(tmp_path / "corpus", n=2)
    counter = count_extractions()
    extract_features(paths, FEATURES)
    extract_features(paths, FEATURES)
    assert len(counter.calls) == 4


@pytest.mark.parametrize(
    "change",
    [
        {"n_mels": 32},
        {"duration": 0.4},
        {"hop_length": 128},
        {"n_fft": 512},
        {"fmin": 40.0},
        {"fmax": 8000.0},
        {"log_floor": 1e-4},
        {"sample_rate": 16_000},
    ],
    ids=lambda change: next(iter(change)),
)
def test_changing_any_feature_parameter_is_a_cache_miss(
    tmp_path: Path, count_extractions: Callable[[], _Counter], change: dict
) -> None:
    paths = _corpus(tmp_path / "corpus", n=2)
    cache = tmp_path / "cache"
    extract_features(paths, FEATURES, cache)
    changed = dataclasses.replace(FEATURES, **change)
    counter = count_extractions()
    result = extract_features(paths, changed, cache)
    assert counter.calls == paths
    _assert_same_features(result.log_mels[0], extract_file(paths[0], changed))
    # ... and the original settings still hit their own entry.
    extract_features(paths, FEATURES, cache)
    assert counter.calls == paths


def test_rewriting_one_file_with_new_audio_is_a_cache_miss(
    tmp_path: Path, count_extractions: Callable[[], _Counter]
) -> None:
    paths = _corpus(tmp_path / "corpus", n=3)
    cache = tmp_path / "cache"
    before = extract_features(paths, FEATURES, cache)
    size = paths[1].stat().st_size
    # Same path, same length (so the same byte size), different samples.
    _write(paths[1], _tone(0.6, RATE, 1234.0, seed=99))
    assert paths[1].stat().st_size == size
    counter = count_extractions()
    after = extract_features(paths, FEATURES, cache)
    assert counter.calls == paths
    _assert_same_features(after.log_mels[1], extract_file(paths[1], FEATURES))
    assert not np.array_equal(after.log_mels[1], before.log_mels[1])
    np.testing.assert_array_equal(after.log_mels[0], before.log_mels[0])


# --- bad files --------------------------------------------------------------------------------


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    header_only = _write(folder / "header_only.wav", np.zeros(0, dtype=np.float32))
    return {"corrupt": corrupt, "empty": empty, "header_only": header_only}


@pytest.mark.parametrize("kind", ["corrupt", "empty", "header_only"])
def test_a_bad_wav_raises_audio_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    bad = _bad_files(tmp_path / "bad")[kind]
    with pytest.raises(AudioError, match="zero length|unreadable") as info:
        load_audio(bad, FEATURES)
    assert str(bad) in str(info.value)
    paths = [*_corpus(tmp_path / "corpus", n=2), bad]
    with pytest.raises(AudioError) as info:
        extract_features(paths, FEATURES, tmp_path / "cache")
    assert str(bad) in str(info.value)


def test_skip_bad_files_lists_them_with_reasons_and_returns_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = _corpus(tmp_path / "corpus", n=3)
    bad = _bad_files(tmp_path / "bad")
    paths = [good[0], bad["corrupt"], good[1], bad["empty"], bad["header_only"], good[2]]
    cache = tmp_path / "cache"
    result = extract_features(paths, FEATURES, cache, skip_bad_files=True)

    assert result.paths == good
    assert result.log_mels.shape == (3, FEATURES.n_mels, n_frames(FEATURES))
    for row, path in zip(result.log_mels, good, strict=True):
        _assert_same_features(row, extract_file(path, FEATURES))
    listed = dict(result.bad_files)
    assert set(listed) == {str(p) for p in bad.values()}
    assert "unreadable" in listed[str(bad["corrupt"])]
    assert "zero length" in listed[str(bad["header_only"])]
    for path, reason in listed.items():
        assert path in reason  # the reason is the AudioError message, naming the file

    # A cache hit reports the same skipped files.
    monkeypatch.setattr(features_module, "extract_file", None)  # any call would fail
    again = extract_features(paths, FEATURES, cache, skip_bad_files=True)
    assert again.paths == good
    assert sorted(map(tuple, again.bad_files)) == sorted(result.bad_files)
    np.testing.assert_array_equal(again.log_mels, result.log_mels)


def test_skip_bad_files_with_nothing_readable_still_raises(tmp_path: Path) -> None:
    bad = list(_bad_files(tmp_path / "bad").values())
    with pytest.raises(AudioError, match="no readable audio among 3 files"):
        extract_features(bad, FEATURES, skip_bad_files=True)


# --- Normalizer -------------------------------------------------------------------------------


def _log_mels(seed: int, n: int = 6, n_mels: int = 8, frames: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.linspace(-10.0, 2.0, n_mels)[None, :, None]
    stds = np.linspace(0.5, 3.0, n_mels)[None, :, None]
    return (means + stds * rng.standard_normal((n, n_mels, frames))).astype(np.float32)


def test_normalizer_fit_gives_per_bin_statistics_of_the_given_array() -> None:
    x = _log_mels(0)
    norm = Normalizer.fit(x)
    assert norm.mean.shape == norm.std.shape == (8,)
    assert norm.mean.dtype == norm.std.dtype == np.float32
    np.testing.assert_allclose(norm.mean, x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.std, x.std(axis=(0, 2)), rtol=1e-5)
    z = norm.normalize(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1.0, atol=1e-4)


def test_normalizer_uses_only_the_array_it_is_fitted_on() -> None:
    train, other = _log_mels(0), _log_mels(1) + 5.0
    norm = Normalizer.fit(train)
    both = Normalizer.fit(np.concatenate([train, other]))
    assert not np.allclose(norm.mean, both.mean)
    np.testing.assert_allclose(Normalizer.fit(train.copy()).mean, norm.mean)
    # Data it was not fitted on keeps its offset after normalisation.
    assert (norm.normalize(other).mean(axis=(0, 2)) > 0.5).all()


def test_normalizer_round_trip() -> None:
    x = _log_mels(2)
    norm = Normalizer.fit(_log_mels(3))
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-4)
    z = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(norm.normalize(norm.denormalize(z)), z, atol=1e-4)


def test_normalizer_constant_bin_stays_finite() -> None:
    x = _log_mels(0)
    x[:, 3, :] = np.log(1e-5)  # a bin that is silent everywhere
    norm = Normalizer.fit(x)
    assert norm.std[3] == pytest.approx(1e-5)
    z = norm.normalize(x)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, 3, :], 0.0, atol=1e-3)


def test_hifigan_style_features_are_clamped_log_magnitudes() -> None:
    """power 1 + clamp + reflect padding: the log of max(mel of |STFT|, floor), as HiFi-GAN."""
    features = FeatureConfig(
        n_mels=80, fmax=8000.0, power=1.0, log_mode="clamp", pad_mode="reflect", duration=0.5
    )
    tone = np.sin(2 * np.pi * 440.0 * np.arange(11025) / 22050).astype(np.float32)
    spectrum = np.abs(librosa.stft(tone, n_fft=1024, hop_length=256, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    expected = np.log(np.maximum(basis @ spectrum, 1e-5))
    np.testing.assert_allclose(log_mel(tone, features), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("key", "value"), [("power", 3.0), ("log_mode", "mul"), ("pad_mode", "wrap")]
)
def test_feature_modes_outside_their_choices_are_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"features.{key}: expected one of"):
        FeatureConfig(**{key: value})
