"""Corpus summary (`emovae.data.summary`) and the `python -m emovae data summary` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovae.cli import main
from emovae.data.corpus import CorpusError
from emovae.data.summary import format_summary, summarize_corpus

SUMMARY_KEYS = {
    "format", "n_files", "emotions", "speakers", "sample_rates", "channels", "durations",
    "bad_files",
}  # fmt: skip


def _run_cli(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The checkout under test must win over any installed copy of the package.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "emovae", *args],
        capture_output=True,
        text=True,
        cwd=repo_root,
        env=env,
        timeout=60,
    )


def test_summary_fake_ravdess(make_ravdess) -> None:
    root = make_ravdess()
    summary = summarize_corpus(root)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["format"] == "ravdess"
    assert summary["n_files"] == 12  # song files are not part of the corpus
    assert summary["emotions"] == {"anger": 3, "happiness": 3, "neutral": 3, "surprise": 3}
    assert summary["speakers"] == {"01": 4, "02": 4, "03": 4}
    assert summary["sample_rates"] == {48000: 12}
    assert summary["channels"] == {1: 11, 2: 1}
    durations = summary["durations"]
    assert 3.0 <= durations["min"] <= durations["mean"] <= durations["max"] <= 5.0
    assert durations["total"] == pytest.approx(durations["mean"] * 12, abs=1e-3)
    assert summary["bad_files"] == []
    json.dumps(summary)  # ready for --json as is


def test_summary_given_format_is_reported(make_ravdess) -> None:
    assert summarize_corpus(make_ravdess(), format="ravdess")["format"] == "ravdess"


@pytest.mark.emodb
def test_summary_real_emodb(emodb_dir: Path) -> None:
    summary = summarize_corpus(emodb_dir)
    assert summary["format"] == "emodb"
    assert summary["n_files"] == 535
    assert summary["emotions"]["boredom"] == 81  # native labels, not shared6
    assert sum(summary["emotions"].values()) == 535
    assert len(summary["speakers"]) == 10
    assert summary["sample_rates"] == {22050: 535}
    assert summary["channels"] == {1: 535}
    assert summary["durations"]["min"] == summary["durations"]["max"] == 2.0
    assert summary["durations"]["total"] == pytest.approx(1070.0)
    assert summary["bad_files"] == []


def test_summary_lists_bad_files(make_ravdess) -> None:
    root = make_ravdess(actors=(1,), song=False)
    folder = root / "Actor_01"
    corrupt = folder / "03-01-01-01-01-01-01.wav"
    empty = folder / "03-01-03-01-01-01-01.wav"
    no_frames = folder / "03-01-05-01-01-01-01.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    empty.write_bytes(b"")
    sf.write(no_frames, np.zeros(0, dtype=np.int16), 48000, subtype="PCM_16")

    summary = summarize_corpus(root)
    reasons = {Path(bad["path"]): bad["reason"] for bad in summary["bad_files"]}
    assert set(reasons) == {corrupt, empty, no_frames}
    assert "not a readable audio file" in reasons[corrupt]
    assert "empty file" in reasons[empty]
    assert "no audio frames" in reasons[no_frames]
    # Labels still count every file; audio facts only the one readable file.
    assert summary["n_files"] == 4
    assert sum(summary["emotions"].values()) == 4
    assert summary["sample_rates"] == {48000: 1}
    assert summary["channels"] == {1: 1}
    text = format_summary(summary)
    assert "3 unreadable" in text
    assert corrupt.name in text and "no audio frames" in text


def test_summary_all_files_bad(tmp_path: Path) -> None:
    root = tmp_path / "emodb"
    root.mkdir()
    (root / "03a01Fa.wav").write_bytes(b"RIFF")
    summary = summarize_corpus(root)
    assert summary["durations"] == {"min": None, "mean": None, "max": None, "total": 0.0}
    assert summary["sample_rates"] == {} and summary["channels"] == {}
    assert "1 unreadable" in format_summary(summary)


def test_summary_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        summarize_corpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match="no .wav files"):
        summarize_corpus(tmp_path)


def test_format_summary_table(make_ravdess) -> None:
    text = format_summary(summarize_corpus(make_ravdess()))
    assert "Format:   ravdess" in text
    assert "Files:    12 (0 unreadable)" in text
    assert "surprise" in text and "48000" in text
    assert "\n01 " in text  # speaker ids are the actor numbers, not folder names
    assert "Unreadable files" not in text


def test_cli_summary_json(repo_root: Path, make_ravdess) -> None:
    result = _run_cli(repo_root, "data", "summary", str(make_ravdess()), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert isinstance(summary, dict)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["format"] == "ravdess"
    assert summary["sample_rates"] == {"48000": 12}  # JSON object keys are strings


def test_cli_missing_folder(repo_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_corpus"
    result = _run_cli(repo_root, "data", "summary", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert str(missing) in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_main_text_output(make_ravdess, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_ravdess()
    assert main(["data", "summary", str(root), "--format", "ravdess"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Corpus:   {root}")
    assert "surprise" in out


def test_main_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hello.wav").touch()
    assert main(["data", "summary", str(tmp_path), "--format", "emodb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hello.wav" in err and "not an EmoDB file name" in err


@pytest.mark.parametrize(
    "argv",
    [[], ["data"], ["data", "summary"], ["data", "summary", "x", "--format", "wav"], ["train"]],
)
def test_main_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "summary", "--help"]) == 0
    assert "--json" in capsys.readouterr().out
