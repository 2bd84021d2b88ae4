"""Sampling WAVs from a checkpoint: files, manifest, emotion handling, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import emovae.audio.vocoder as vocoder_module
from emovae.audio.export import limit_peak
from emovae.audio.vocoder import load_vocoder
from emovae.checkpoint import build_model, load_model, model_state, save_checkpoint
from emovae.config import FeatureConfig, TrainConfig
from emovae.dataset import Split
from emovae.features import Normalizer, mel_from_log, mel_power_from_log
from emovae.generate import (
    MANIFEST_COLUMNS,
    RECON_COLUMNS,
    export_copy_synthesis,
    generate,
)

FEATURES = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, duration=0.5)
EMOTIONS = ["anger", "happiness", "sadness"]
N_SAMPLES = round(FEATURES.duration * FEATURES.sample_rate)
PEAK = 10.0 ** (-1.0 / 20.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpoint(path: Path, conditional: bool) -> Path:
    """An untrained tiny model: generation only needs weights and statistics, not good ones."""
    torch.manual_seed(0)
    config = TrainConfig(latent_dim=4, base_channels=4, conditional=conditional)
    model = build_model(config, FEATURES, len(EMOTIONS))
    # Typical speech log-mel statistics, so the decoded power spans a realistic range.
    normalizer = Normalizer(
        np.linspace(-3.0, -9.0, FEATURES.n_mels, dtype=np.float32),
        np.full(FEATURES.n_mels, 2.0, dtype=np.float32),
    )
    save_checkpoint(path, model_state(model, config, FEATURES, EMOTIONS, normalizer, 1, {}))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "conditional": _checkpoint(root / "cvae.pt", conditional=True),
        "unconditional": _checkpoint(root / "vae.pt", conditional=False),
    }


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        return list(reader)


def test_mel_from_log_inverts_the_log_and_clamps() -> None:
    features = FeatureConfig(log_floor=1e-5)
    power = np.array([0.0, 1e-6, 0.5, 3.0])
    np.testing.assert_allclose(mel_from_log(np.log(power + 1e-5), features), power, atol=1e-12)
    as_tensor = mel_from_log(torch.log(torch.from_numpy(power) + 1e-5), features)
    assert isinstance(as_tensor, torch.Tensor)
    torch.testing.assert_close(as_tensor, torch.from_numpy(power), atol=1e-12, rtol=0)
    # Below log(floor) a decoder output has no power to invert to: it is zero, not negative.
    assert mel_from_log(np.array([-50.0]), features)[0] == 0.0
    # HiFi-GAN's clamped log keeps the floor; its magnitudes square to power.
    clamped = FeatureConfig(power=1.0, log_mode="clamp", log_floor=1e-5)
    magnitude = np.array([1e-5, 0.5, 3.0])
    np.testing.assert_allclose(mel_from_log(np.log(magnitude), clamped), magnitude)
    np.testing.assert_allclose(mel_power_from_log(np.log(magnitude), clamped), magnitude**2)


def test_limit_peak_only_scales_clips_above_the_ceiling() -> None:
    audio = np.array([[0.1, -0.5, 0.2], [0.0, 0.0, 0.0], [2.0, 1.0, -1.0]])
    out = limit_peak(audio)
    # Loudness carries emotion: a clip under the ceiling keeps its level.
    np.testing.assert_allclose(out[:2], audio[:2])
    assert np.abs(out[2]).max() == pytest.approx(PEAK)
    np.testing.assert_allclose(out[2] / out[2, 1], audio[2] / audio[2, 1])


def test_unconditional_generation_writes_wavs_and_manifest(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    manifest = generate(checkpoints["unconditional"], 3, tmp_path, seed=7, n_iter=4, batch_size=2)
    assert manifest == tmp_path / "manifest.csv"
    rows = _manifest(manifest)
    assert [row["file"] for row in rows] == [
        "sample_0000.wav",
        "sample_0001.wav",
        "sample_0002.wav",
    ]
    assert all(row["emotion"] == "" and row["seed"] == "7" for row in rows)
    assert [row["index"] for row in rows] == ["0", "1", "2"]
    for row in rows:
        info = sf.info(tmp_path / row["file"])
        assert (info.samplerate, info.frames, info.channels) == (
            FEATURES.sample_rate,
            N_SAMPLES,
            1,
        )
        assert info.subtype == "PCM_16"
        audio, _ = sf.read(tmp_path / row["file"], dtype="float64")
        assert 0 < np.abs(audio).max() <= PEAK + 1 / 32767
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == [row["file"] for row in rows]


def test_conditional_generation_spreads_emotions_round_robin(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    rows = _manifest(generate(checkpoints["conditional"], 5, tmp_path, n_iter=2))
    assert [row["emotion"] for row in rows] == [
        "anger",
        "happiness",
        "sadness",
        "anger",
        "happiness",
    ]
    assert len(list(tmp_path.glob("sample_*.wav"))) == 5


def test_conditional_generation_of_one_emotion(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    rows = _manifest(generate(checkpoints["conditional"], 2, tmp_path, emotion="sadness", n_iter=2))
    assert [row["emotion"] for row in rows] == ["sadness", "sadness"]


def test_emotion_errors_name_the_problem(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"'boredom'.*anger, happiness, sadness"):
        generate(checkpoints["conditional"], 2, tmp_path, emotion="boredom")
    with pytest.raises(ValueError, match="'anger'.*unconditional"):
        generate(checkpoints["unconditional"], 2, tmp_path, emotion="anger")
    with pytest.raises(ValueError, match="n: expected"):
        generate(checkpoints["unconditional"], 0, tmp_path)
    assert not list(tmp_path.glob("*.wav"))


def test_same_seed_gives_identical_bytes_and_another_seed_differs(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    def run(name: str, seed: int) -> list[bytes]:
        generate(checkpoints["conditional"], 3, tmp_path / name, seed=seed, n_iter=3)
        return [(tmp_path / name / f"sample_{i:04d}.wav").read_bytes() for i in range(3)]

    first = run("a", seed=1)
    assert run("b", seed=1) == first
    assert run("c", seed=2) != first


def test_interrupted_run_leaves_no_manifest(
    tmp_path: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(checkpoints["unconditional"], 2, tmp_path, n_iter=2)
    assert (tmp_path / "manifest.csv").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("vocoder crashed")

    monkeypatch.setattr(vocoder_module, "mel_to_audio", broken)
    with pytest.raises(RuntimeError, match="vocoder crashed"):
        generate(checkpoints["unconditional"], 2, tmp_path, n_iter=2)
    # The earlier run's manifest must not vouch for a set this run may have half replaced.
    assert not (tmp_path / "manifest.csv").exists()


def test_mel_to_audio_receives_the_feature_settings(
    tmp_path: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake(mel_power: torch.Tensor, **kwargs) -> torch.Tensor:
        calls.append((tuple(mel_power.shape), float(mel_power.min()), kwargs))
        return torch.zeros(mel_power.shape[0], kwargs["length"])

    monkeypatch.setattr(vocoder_module, "mel_to_audio", fake)
    generate(checkpoints["unconditional"], 5, tmp_path, seed=3, n_iter=9, batch_size=2)
    assert [shape for shape, _, _ in calls] == [(2, 32, 63), (2, 32, 63), (1, 32, 63)]
    assert all(minimum >= 0.0 for _, minimum, _ in calls)
    assert calls[0][2] == {
        "sample_rate": 8000,
        "n_fft": 256,
        "hop_length": 64,
        "n_iter": 9,
        "fmin": 0.0,
        "fmax": None,
        "power": 2.0,
        "seed": 3,
        "length": N_SAMPLES,
    }
    # All-zero audio from the vocoder stays silent instead of dividing by zero.
    audio, _ = sf.read(tmp_path / "sample_0000.wav")
    assert not audio.any()


def test_hifigan_features_are_refused_by_name_for_other_features(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    with pytest.raises(ValueError, match="features.n_mels"):
        generate(checkpoints["unconditional"], 2, tmp_path, vocoder="hifigan")
    assert not list(tmp_path.glob("*.wav"))


def test_copy_synthesis_vocodes_the_chosen_clips_under_their_names(
    tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    loaded = load_model(checkpoints["conditional"], torch.device("cpu"))
    n_frames = 1 + N_SAMPLES // FEATURES.hop_length
    generator = torch.Generator().manual_seed(0)
    split = Split(
        torch.randn(3, 1, FEATURES.n_mels, n_frames, generator=generator),
        torch.tensor([2, 0, 1]),
        ["03", "03", "08"],
        ["/corpus/03a01Wa.wav", "/corpus/03a01Fa.wav", "/corpus/08a01Ta.wav"],
    )
    synthesize = load_vocoder("griffinlim", FEATURES, n_iter=4)
    manifest = export_copy_synthesis(loaded, split, [2, 0], synthesize, tmp_path / "copies")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RECON_COLUMNS
        rows = list(reader)
    assert [(r["file"], r["emotion"], r["source"]) for r in rows] == [
        ("08a01Ta.wav", "happiness", "/corpus/08a01Ta.wav"),
        ("03a01Wa.wav", "sadness", "/corpus/03a01Wa.wav"),
    ]
    clips = [sf.read(tmp_path / "copies" / r["file"])[0] for r in rows]
    assert all(len(c) == N_SAMPLES and np.abs(c).max() > 1e-3 for c in clips)
    assert not np.allclose(clips[0], clips[1])  # each clip from its own features
    with pytest.raises(ValueError, match="at least one row"):
        export_copy_synthesis(loaded, split, [], synthesize, tmp_path / "none")
