"""The shared helpers of emovae.runtime: device, threads, seeds, atomic writes, cache keys,
eval mode and figures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import emovae.train
from emovae import runtime
from emovae.data.synthetic import CorpusSpec
from emovae.judge import JudgeConfig, judge_key
from emovae.runtime import (
    atomic_save_array,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    configure_threads,
    content_key,
    eval_mode,
    save_figure,
    seed_everything,
    select_device,
)


def test_the_trainer_still_exports_the_runtime_helpers() -> None:
    # sweeps/ imports them from emovae.train.
    assert emovae.train.select_device is select_device
    assert emovae.train.configure_threads is configure_threads
    assert emovae.train.seed_everything is seed_everything


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            select_device("cuda:0")


def test_configure_threads_zero_leaves_the_count() -> None:
    before = torch.get_num_threads()
    try:
        configure_threads(0)
        assert torch.get_num_threads() == before
        configure_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_seed_everything_repeats_torch_and_numpy_draws() -> None:
    seed_everything(7)
    first = torch.rand(3), np.random.rand(3)  # the global generator is the point
    seed_everything(7)
    second = torch.rand(3), np.random.rand(3)
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("old")
    assert atomic_write_text(path, "new\n") == path
    assert path.read_text() == "new\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "state.pt", lambda tmp: torch.save({"x": torch.ones(2)}, tmp))
    assert torch.equal(torch.load(tmp_path / "state.pt", weights_only=True)["x"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "state.pt"]


def test_atomic_write_text_keeps_newlines_when_asked(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "m.csv", "a\r\nb\n", newline="")
    assert path.read_bytes() == b"a\r\nb\n"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old"


def test_atomic_save_array_keeps_the_name(tmp_path: Path) -> None:
    # np.save given a name appends ".npy"; the helper must write exactly the path asked for.
    array = np.arange(6.0).reshape(2, 3)
    path = atomic_save_array(tmp_path / "entry-abc.npy", array)
    assert np.array_equal(np.load(path), array)
    assert [p.name for p in tmp_path.iterdir()] == ["entry-abc.npy"]


def test_content_key_is_the_sha256_of_sorted_json() -> None:
    value = {"b": 1, "a": [1.5, "x"]}
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    assert content_key(value, 12) == digest[:12]
    assert content_key({"a": [1.5, "x"], "b": 1}, 12) == content_key(value, 12)


def test_cache_keys_did_not_change() -> None:
    # Caches written before the keys moved to runtime.content_key must still be found.
    assert judge_key("fp-a", JudgeConfig()) == "be1d7a57eb9eb157"
    assert CorpusSpec().key == "0c7af2dbdb62"


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_even_after_an_error(training: bool) -> None:
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(2))
    model.train(training)
    with eval_mode(model):
        assert not model.training and not model[0].training
    assert model.training is training and model[1].training is training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("inside")
    assert model.training is training


def test_save_figure_writes_a_png_into_a_new_folder(tmp_path: Path) -> None:
    figure = Figure(figsize=(2, 2))
    figure.subplots().plot([0, 1], [1, 0])
    path = save_figure(figure, tmp_path / "sub" / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runtime_imports_no_other_emovae_module() -> None:
    source = Path(runtime.__file__).read_text()
    assert "from emovae" not in source and "import emovae" not in source
