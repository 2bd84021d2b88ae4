"""`python -m emovae train` and `generate` end to end, in subprocesses, as a user runs them."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovae.data.synthetic import generate_synthetic_corpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# One thread per process: the machine is shared, and these tensors gain nothing from more.
ENV = os.environ | {
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
SMALL = [
    "train.base_channels=4",
    "train.num_threads=1",
    "features.n_mels=64",
]


def emovae(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emovae", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=REPO,
    )


def train_command(data: Path, out: Path, cache: Path, *overrides: str) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out)]
    for override in [*SMALL, f"data.cache_dir={cache}", *overrides]:
        args += ["--set", override]
    return args


def _explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_corpus(
        tmp_path_factory.mktemp("synthetic"), n_speakers=5, per_emotion=2, duration=0.75, seed=0
    )


def check_training_outputs(out: Path) -> list[dict[str, float]]:
    assert (out / "checkpoints" / "best.pt").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "config.yaml").is_file()
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["test_recon"] is not None and math.isfinite(metrics["test_recon"])
    assert metrics["test_recon"] > 0
    history = json.loads((out / "history.json").read_text())
    losses = [h["train_loss"] for h in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    return history


def check_generated(out: Path, n: int, duration: float) -> None:
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == n
    for wav in wavs:
        info = sf.info(wav)
        assert info.samplerate == 22_050
        assert info.channels == 1
        assert info.frames == round(duration * 22_050)
        assert info.duration == pytest.approx(duration, abs=1e-4)
        audio, _ = sf.read(wav)
        # Clips keep the level the model gave them (loudness carries emotion): sound, not silence.
        assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == [w.name for w in wavs]


def test_train_then_generate_on_a_synthetic_corpus(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = emovae(
        *train_command(
            corpus,
            out,
            tmp_path / "cache",
            "train.max_epochs=3",
            "features.duration=0.75",
        )
    )
    assert result.returncode == 0, _explain(result)
    history = check_training_outputs(out)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert "test metrics (held-out speakers)" in result.stdout

    samples = tmp_path / "samples"
    result = emovae(
        "generate",
        "--checkpoint",
        out / "checkpoints" / "best.pt",
        "--n",
        "4",
        "--out",
        samples,
        "--iters",
        "8",
    )
    assert result.returncode == 0, _explain(result)
    check_generated(samples, 4, 0.75)


@pytest.mark.emodb
def test_train_then_generate_on_emodb(emodb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = emovae(
        *train_command(
            emodb_dir,
            out,
            tmp_path / "cache",
            "train.max_epochs=2",
            "features.duration=2.0",
        )
    )
    assert result.returncode == 0, _explain(result)
    check_training_outputs(out)
    assert "anger, boredom, disgust, fear, happiness, neutral, sadness" in result.stdout

    samples = tmp_path / "samples"
    result = emovae(
        "generate",
        "--checkpoint",
        out / "checkpoints" / "best.pt",
        "--n",
        "2",
        "--out",
        samples,
        "--iters",
        "8",
    )
    assert result.returncode == 0, _explain(result)
    check_generated(samples, 2, 2.0)


def _corpus_with_a_corrupt_wav(corpus: Path, folder: Path) -> Path:
    shutil.copytree(corpus, folder)
    corrupt = folder / "03a01Wz.wav"  # an EmoDB name, so only its content is wrong
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return corrupt


def test_a_corrupt_wav_stops_training_naming_it(corpus: Path, tmp_path: Path) -> None:
    corrupt = _corpus_with_a_corrupt_wav(corpus, tmp_path / "corpus")
    command = train_command(
        tmp_path / "corpus", tmp_path / "run", tmp_path / "cache", "features.duration=0.75"
    )
    result = emovae(*command)
    assert result.returncode == 2, _explain(result)
    assert str(corrupt) in result.stderr and "unreadable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_bad_files_lists_a_corrupt_wav(corpus: Path, tmp_path: Path) -> None:
    corrupt = _corpus_with_a_corrupt_wav(corpus, tmp_path / "corpus")
    out = tmp_path / "run"
    command = train_command(
        tmp_path / "corpus", out, tmp_path / "cache", "train.max_epochs=1", "features.duration=0.75"
    )
    result = emovae(*command, "--skip-bad-files")
    assert result.returncode == 0, _explain(result)
    bad = json.loads((out / "bad_files.json").read_text())
    assert [entry[0] for entry in bad] == [str(corrupt)]
    assert str(corrupt) in bad[0][1]  # the reason, naming the file
    assert "skipped 1 unreadable file(s)" in result.stdout
    assert (out / "checkpoints" / "best.pt").is_file()
    assert json.loads((out / "evaluation" / "metrics.json").read_text())["test_recon"] is not None


def test_unknown_config_key_exits_2_suggesting_the_right_one(corpus: Path, tmp_path: Path) -> None:
    result = emovae(
        *train_command(corpus, tmp_path / "run", tmp_path / "cache", "train.latnt_dim=3")
    )
    assert result.returncode == 2, _explain(result)
    assert "latnt_dim" in result.stderr and "did you mean 'latent_dim'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_folder_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus"
    result = emovae(*train_command(missing, tmp_path / "run", tmp_path / "cache"))
    assert result.returncode == 2, _explain(result)
    assert str(missing) in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
