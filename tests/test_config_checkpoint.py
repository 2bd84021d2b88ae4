"""Config loading (unknown keys, types, overrides) and self-contained, safely loaded checkpoints."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emovae.checkpoint import (
    CheckpointError,
    build_model,
    load_model,
    model_state,
    read_checkpoint,
    save_checkpoint,
)
from emovae.config import (
    DATA_RANGES,
    FEATURE_RANGES,
    TRAIN_RANGES,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    FeatureConfig,
    TrainConfig,
    apply_overrides,
    experiment_from_dict,
    field_names,
    from_dict,
    load_experiment,
)
from emovae.data.corpus import CorpusError, Item
from emovae.data.splits import split_speakers
from emovae.data.synthetic import MAX_PER_EMOTION, MAX_SPEAKERS
from emovae.features import Normalizer, n_frames


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "wrong", "suggested"),
    [
        ({"train": {"latnt_dim": 8}}, "latnt_dim", "latent_dim"),
        ({"features": {"n_mel": 64}}, "n_mel", "n_mels"),
        ({"data": {"val_fractoin": 0.1}}, "val_fractoin", "val_fraction"),
        ({"trian": {"lr": 0.1}}, "trian", "train"),
        ({"feature": {}}, "feature", "features"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_nearest_valid_one(
    values: dict, wrong: str, suggested: str
) -> None:
    with pytest.raises(ConfigError) as info:
        experiment_from_dict(values)
    message = str(info.value)
    assert f"unknown key '{wrong}'" in message
    assert f"did you mean '{suggested}'?" in message


def test_unknown_key_with_no_close_match_lists_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({"train": {"zzzzzz": 1}})
    assert "did you mean" not in str(info.value)
    assert "latent_dim" in str(info.value) and "max_epochs" in str(info.value)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"latent_dim": 8.5}}, "train.latent_dim"),
        ({"train": {"latent_dim": True}}, "train.latent_dim"),  # a bool is not an int
        ({"train": {"conditional": "yes"}}, "train.conditional"),
        ({"train": {"conditional": 1}}, "train.conditional"),
        ({"features": {"fmax": "high"}}, "features.fmax"),
        ({"data": {"path": 3}}, "data.path"),
        ({"train": 5}, "train"),
    ],
)
def test_wrong_types_are_rejected_naming_the_entry(values: dict, where: str) -> None:
    with pytest.raises(ConfigError, match=rf"config\.{where}: expected"):
        experiment_from_dict(values)


def test_ints_are_accepted_for_floats_and_none_for_optional() -> None:
    config = experiment_from_dict(
        {"train": {"lr": 1, "beta": 0}, "features": {"fmax": 8000, "duration": 2}}
    )
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert config.train.beta == 0.0 and type(config.train.beta) is float
    assert config.features.fmax == 8000.0 and type(config.features.fmax) is float
    assert type(config.features.duration) is float
    assert experiment_from_dict({"features": {"fmax": None}}).features.fmax is None


def test_missing_sections_and_keys_take_defaults() -> None:
    assert experiment_from_dict({}) == ExperimentConfig()
    assert experiment_from_dict(None) == ExperimentConfig()
    config = experiment_from_dict({"train": {"latent_dim": 8}, "data": None})
    assert config.train == dataclasses.replace(TrainConfig(), latent_dim=8)
    assert config.data == DataConfig()


def test_load_experiment_reads_yaml_and_applies_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump({"train": {"latent_dim": 8, "lr": 0.001}, "features": {"n_mels": 64}})
    )
    config = load_experiment(path, ["train.lr=1", "data.path=/somewhere", "features.fmax=null"])
    assert config.train.latent_dim == 8
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert config.features.n_mels == 64 and config.features.fmax is None
    assert config.data.path == "/somewhere"
    assert load_experiment(path).train.lr == 0.001


@pytest.mark.parametrize(
    ("text", "overrides", "pattern"),
    [
        ("train:\n  latnt_dim: 8\n", [], "exp.yaml.*unknown key 'latnt_dim'.*'latent_dim'"),
        ("train:\n  lr: fast\n", [], r"exp.yaml\.train\.lr: expected float, got 'fast'"),
        ("trainn:\n  lr: 1\n", [], "unknown key 'trainn'.*'train'"),
        ("", ["train.latnt_dim=3"], "unknown key 'latnt_dim'.*'latent_dim'"),
        ("", ["train.lr=fast"], "train.lr: expected float"),
        ("train: [1, 2]\n", [], "train: expected a mapping"),
        ("train: {lr: [unclosed\n", [], "not valid YAML"),
    ],
)
def test_load_experiment_rejects_bad_files_and_overrides(
    tmp_path: Path, text: str, overrides: list[str], pattern: str
) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_experiment(path, overrides)


def test_load_experiment_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_apply_overrides_parses_yaml_values_into_a_copy() -> None:
    raw = {"train": {"lr": 0.1}}
    result = apply_overrides(
        raw,
        [
            "train.lr=1.0e-3",
            "train.conditional=true",
            "features.n_mels=64",
            "data.path=a=b",
            "features.fmax=null",
        ],
    )
    assert raw == {"train": {"lr": 0.1}}  # the input is not modified
    assert result == {
        "train": {"lr": 1e-3, "conditional": True},
        "features": {"n_mels": 64, "fmax": None},
        "data": {"path": "a=b"},
    }
    assert apply_overrides({"train": None}, ["train.seed=2"]) == {"train": {"seed": 2}}
    assert apply_overrides(raw, ["train.lr=2", "train.lr=3"])["train"]["lr"] == 3


@pytest.mark.parametrize("text", ["1e-3", "3e-4", "1E5"])
def test_exponent_floats_without_a_dot_are_accepted(tmp_path: Path, text: str) -> None:
    assert yaml.safe_load("1.0e-3") == 1.0e-3  # the form PyYAML does read as a float
    config = experiment_from_dict(apply_overrides({}, [f"train.lr={text}"]))
    assert config.train.lr == float(text)
    path = tmp_path / "exp.yaml"
    path.write_text(f"train:\n  beta: {text}\n")
    assert load_experiment(path).train.beta == float(text)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.lr", "expected section.key=value"),
        ("lr=1", "expected section.key=value"),
        ("a.b.c=1", "expected section.key=value"),
        (".lr=1", "expected section.key=value"),
        ("train.lr=[1", "not valid YAML"),
        ("seed.x=1", "section 'seed' is not a mapping"),
    ],
)
def test_apply_overrides_rejects_malformed_entries(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides({"seed": 3}, [override])


# --- value ranges -----------------------------------------------------------------------------

SPEAKERS = "an integer in [3, 99] (a speaker-independent split needs 3)"
FMIN = "a number in [0, 11025) (below features.sample_rate / 2)"
FMAX = "a number in (0, 11025] (above features.fmin, at most features.sample_rate / 2)"
# One value just outside each checked field's range, and the range the message must name.
OUT_OF_RANGE = [
    ("data", "val_fraction", 0.0, "a number in (0, 1)"),
    ("data", "test_fraction", 1.0, "a number in (0, 1)"),
    ("data", "split_seed", -1, "an integer in [0, 4294967295]"),
    ("data", "synthetic_speakers", 2, SPEAKERS),
    ("data", "synthetic_speakers", 100, SPEAKERS),
    ("data", "synthetic_per_emotion", 0, "an integer in [1, 260]"),
    ("features", "sample_rate", 0, "an integer >= 1"),
    ("features", "n_fft", 0, "an integer >= 1"),
    ("features", "hop_length", 0, "an integer >= 1"),
    ("features", "n_mels", 0, "an integer >= 1"),
    ("features", "duration", 0.0, "a number > 0"),
    ("features", "fmin", -1.0, FMIN),
    ("features", "fmin", 11025.0, FMIN),
    ("features", "fmax", 11026.0, FMAX),
    ("features", "fmax", 0.0, FMAX),
    ("features", "log_floor", 0.0, "a number > 0"),
    ("train", "latent_dim", 0, "an integer >= 1"),
    ("train", "beta", -0.1, "a number >= 0"),
    ("train", "lr", -1e-3, "a number >= 0"),
    ("train", "grad_clip", -1.0, "a number >= 0 (0: no clipping)"),
    ("train", "batch_size", 0, "an integer >= 1"),
    ("train", "spectral_weight", -0.5, "a number >= 0"),
    ("train", "base_channels", 0, "an integer >= 1"),
    ("train", "hidden_channels", 0, "an integer >= 1"),
    ("train", "time_downsample", -1, "an integer >= 0"),
    ("train", "label_dropout", 1.0, "a number in [0, 1)"),
    ("train", "prior_channels", 0, "a multiple of 8 >= 8 (the prior's GroupNorm has 8 groups)"),
    ("train", "prior_channels", 20, "a multiple of 8 >= 8 (the prior's GroupNorm has 8 groups)"),
    ("train", "prior_steps", 0, "an integer >= 1"),
    ("train", "guidance", 0.5, "a number >= 1 (1: no guidance)"),
    ("train", "prior_finetune_steps", -1, "an integer >= 0 (0: none)"),
    ("train", "prior_ema", 1.0, "a number in [0, 1) (0: none)"),
    ("train", "prior_ema", -0.1, "a number in [0, 1) (0: none)"),
    ("train", "max_epochs", 0, "an integer >= 1"),
    ("train", "patience", 0, "an integer >= 1"),
    ("train", "lr_factor", 1.0, "a number in (0, 1)"),
    ("train", "lr_factor", 0.0, "a number in (0, 1)"),
    ("train", "lr_patience", -1, "an integer >= 0"),
    ("train", "min_lr", -1e-6, "a number >= 0"),
    ("train", "kl_warmup_epochs", -1, "an integer >= 0 (0: none)"),
    ("train", "weight_decay", -1e-4, "a number >= 0"),
    ("train", "seed", -1, "an integer in [0, 4294967295]"),
    ("train", "num_threads", -1, "an integer >= 0 (0: all cores)"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "valid"),
    OUT_OF_RANGE,
    ids=[f"{s}.{k}={v}" for s, k, v, _ in OUT_OF_RANGE],
)
def test_values_out_of_range_are_refused_naming_key_and_range(
    section: str, key: str, value: float, valid: str
) -> None:
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({section: {key: value}})
    assert str(info.value) == f"config.{section}.{key}: expected {valid}, got {value}"


# The other end of each range, and the values the shipped configurations rely on, load.
AT_THE_EDGE = [
    ("data", "val_fraction", 0.01),
    ("data", "synthetic_speakers", 3),
    ("data", "synthetic_per_emotion", 260),
    ("features", "fmin", 0.0),
    ("features", "fmax", 11025.0),
    ("train", "beta", 0.0),
    ("train", "lr", 0.0),  # freezes the weights: tests of early stopping use it
    ("train", "grad_clip", 0.0),
    ("train", "spectral_weight", 0.0),
    ("train", "time_downsample", 0),
    ("train", "time_downsample", 9),
    ("train", "label_dropout", 0.0),
    ("train", "prior_channels", 8),
    ("train", "guidance", 1.0),
    ("train", "lr_patience", 0),
    ("train", "min_lr", 0.0),
    ("train", "weight_decay", 0.0),
    ("train", "seed", 2**32 - 1),
    ("train", "num_threads", 0),
    ("train", "patience", 1),
]


@pytest.mark.parametrize(("section", "key", "value"), AT_THE_EDGE)
def test_values_at_the_edge_of_their_range_load(section: str, key: str, value: float) -> None:
    config = experiment_from_dict({section: {key: value}})
    assert getattr(getattr(config, section), key) == value


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.train\.beta: expected a finite number >= 0"):
        experiment_from_dict(apply_overrides({}, [f"train.beta={text}"]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"data": {"val_fraction": 0.5, "test_fraction": 0.5}},
            r"config\.data\.val_fraction \+ data\.test_fraction: expected a sum < 1",
        ),
        (
            {"features": {"fmin": 4000.0, "fmax": 3000.0}},
            r"config\.features\.fmax: expected a number in \(4000, 11025\] \(above features.fmin",
        ),
        (
            {"features": {"sample_rate": 16000, "fmax": 8000.5}},
            r"config\.features\.fmax: expected a number in \(0, 8000\].*sample_rate / 2\), got",
        ),
        # 1 s at 22,050 Hz and hop 256: 87 frames, one latent frame after 7 stride-2 stages.
        (
            {"features": {"duration": 1.0}, "train": {"time_downsample": 8}},
            r"config\.train\.time_downsample: expected an integer in \[0, 7\] \(7 stages .* 87 "
            r"frames one latent frame\), got 8",
        ),
    ],
)
def test_ranges_that_depend_on_other_fields(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict(values)


def test_range_errors_name_their_source_once(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  base_channels: 0\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert str(info.value) == f"{path}.train.base_channels: expected an integer >= 1, got 0"
    # Built in code, or from a mapping without a source: the message starts at the key.
    with pytest.raises(ConfigError, match=r"^train\.base_channels: expected an integer >= 1"):
        TrainConfig(base_channels=0)
    with pytest.raises(ConfigError, match=r"^train\.base_channels: expected an integer >= 1"):
        from_dict(TrainConfig, {"base_channels": 0})
    with pytest.raises(ConfigError, match=r"^src: train\.base_channels: expected"):
        from_dict(TrainConfig, {"base_channels": 0}, "src: train")
    with pytest.raises(ConfigError, match=r"^src: features\.duration: expected a number > 0"):
        from_dict(FeatureConfig, {"duration": 0}, "src: features")


@pytest.mark.parametrize(
    ("cls", "ranges"),
    [(DataConfig, DATA_RANGES), (FeatureConfig, FEATURE_RANGES), (TrainConfig, TRAIN_RANGES)],
)
def test_range_tables_name_fields(cls: type, ranges: dict) -> None:
    assert set(ranges) <= set(field_names(cls))


def test_synthetic_corpus_ranges_match_the_generator_and_the_split() -> None:
    assert DATA_RANGES["synthetic_speakers"].high == MAX_SPEAKERS
    assert DATA_RANGES["synthetic_per_emotion"].high == MAX_PER_EMOTION
    least = DATA_RANGES["synthetic_speakers"].low
    items = [Item(Path(f"{s}.wav"), "anger", str(s), str(s)) for s in range(least)]
    split_speakers(items, 0.15, 0.2, 0)
    with pytest.raises(CorpusError, match="at least 3 speakers"):
        split_speakers(items[:-1], 0.15, 0.2, 0)


# --- checkpoints ------------------------------------------------------------------------------

FEATURES = FeatureConfig(n_mels=32, duration=0.5)
TRAIN = TrainConfig(latent_dim=6, base_channels=4, conditional=False)
LABELS = ["anger", "neutral", "sadness"]


def _trained_state(train: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """A model with non-default weights and BatchNorm statistics, and its checkpoint state."""
    torch.manual_seed(0)
    model = build_model(train, FEATURES, len(LABELS))
    x = torch.randn(6, 1, FEATURES.n_mels, n_frames(FEATURES))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):  # moves weights and running statistics away from their initial values
        recon, _, _ = model(x, labels if train.conditional else None)
        loss = (recon - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    normalizer = Normalizer(
        np.linspace(-8.0, -2.0, FEATURES.n_mels, dtype=np.float32),
        np.linspace(1.0, 3.0, FEATURES.n_mels, dtype=np.float32),
    )
    state = model_state(model, train, FEATURES, LABELS, normalizer, 7, {"val_loss": 0.25})
    return model.eval(), state


@pytest.mark.parametrize("conditional", [False, True], ids=["vae", "cvae"])
def test_load_model_rebuilds_the_exact_model_from_the_file_alone(
    tmp_path: Path, conditional: bool
) -> None:
    train = dataclasses.replace(TRAIN, conditional=conditional)
    model, state = _trained_state(train)
    path = tmp_path / "best.pt"
    save_checkpoint(path, state)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temporary behind
    loaded = load_model(path)

    assert not loaded.model.training
    assert loaded.train == train and loaded.features == FEATURES
    assert loaded.label_names == LABELS
    assert (loaded.epoch, loaded.metrics) == (7, {"val_loss": 0.25})
    np.testing.assert_array_equal(loaded.normalizer.mean, state["norm_mean"].numpy())
    np.testing.assert_array_equal(loaded.normalizer.std, state["norm_std"].numpy())
    assert loaded.model.n_classes == (len(LABELS) if conditional else 0)

    x = torch.randn(
        3, 1, FEATURES.n_mels, n_frames(FEATURES), generator=torch.Generator().manual_seed(1)
    )
    labels = torch.tensor([2, 0, 1]) if conditional else None
    with torch.no_grad():
        expected = model(x, labels, sample=False)
        actual = loaded.model(x, labels, sample=False)
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor, rtol=0, atol=0)
    # A freshly built model of the same config differs: the output above came from the weights.
    torch.manual_seed(123)
    fresh = build_model(train, FEATURES, len(LABELS)).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x, labels, sample=False)[0], expected[0])


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="checkpoint file not found") as info:
        load_model(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        load_model(tmp_path)  # a folder is not a checkpoint file either


@pytest.mark.parametrize("content", ["random_bytes", "empty", "tensor", "plain_dict", "yaml"])
def test_a_file_that_is_not_a_checkpoint(tmp_path: Path, content: str) -> None:
    path = tmp_path / f"{content}.pt"
    if content == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "plain_dict":
        torch.save({"model": {}, "epoch": 1}, path)
    else:
        path.write_text("train:\n  lr: 1\n")
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "edit",
    [{"latent_dim": 5}, {"base_channels": 8}, {"conditional": True}],
    ids=["latent_dim", "base_channels", "conditional"],
)
def test_weights_that_do_not_fit_the_stored_config(tmp_path: Path, edit: dict) -> None:
    _, state = _trained_state(TRAIN)
    path = tmp_path / "edited.pt"
    save_checkpoint(path, state)
    stored = torch.load(path, weights_only=True)
    stored["train_config"].update(edit)
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match="weights do not fit") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_feature_config_that_does_not_fit_the_weights(tmp_path: Path) -> None:
    _, state = _trained_state(TRAIN)
    state["feature_config"]["n_mels"] = 64
    path = tmp_path / "edited.pt"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="weights do not fit") as info:
        load_model(path)
    assert str(path) in str(info.value)


class _Payload:
    """Unpickling an arbitrary class would run its code: weights_only must refuse it."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize(
    "extra",
    [datetime.datetime(2024, 1, 1), _Payload()],
    ids=["datetime", "custom_class"],
)
def test_a_checkpoint_holding_arbitrary_objects_is_refused(tmp_path: Path, extra: object) -> None:
    _, state = _trained_state(TRAIN)
    path = tmp_path / "unsafe.pt"
    torch.save(state | {"saved_by": extra}, path)
    # Full unpickling would read it: only the restricted loader refuses it.
    assert torch.load(path, weights_only=False)["saved_by"].__class__ is type(extra)
    with pytest.raises(CheckpointError, match="not a readable emovae checkpoint") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_torch_load_is_called_with_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state = _trained_state(TRAIN)
    path = tmp_path / "best.pt"
    save_checkpoint(path, state)
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    read_checkpoint(path)
    load_model(path)
    assert len(calls) == 2
    assert all(call.get("weights_only") is True for call in calls)


def test_stored_configs_round_trip_through_from_dict() -> None:
    _, state = _trained_state(TRAIN)
    assert from_dict(TrainConfig, state["train_config"]) == TRAIN
    assert from_dict(FeatureConfig, state["feature_config"]) == FEATURES
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
