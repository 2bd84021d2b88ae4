"""Search-space files: every shipped space loads, and malformed ones fail by name before Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray import tune

from emovae.config import ConfigError, TrainConfig, field_names
from emovae.judge import JUDGE_RANGES, JudgeConfig
from sweeps.space import (
    FINALISE_RANGES,
    OBJECTIVES,
    SWEEP_RANGES,
    FinaliseSettings,
    SweepSettings,
    available_spaces,
    load_space,
    to_tune_space,
    trial_train_config,
)


def write_space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", available_spaces())
def test_every_shipped_space_loads_and_converts(name: str) -> None:
    spec = load_space(name, ["data.path=/data/emodb/wav"])
    space = to_tune_space(spec.params)
    assert {"latent_dim", "beta", "lr", "grad_clip"} <= set(space)
    assert all(hasattr(space[k], "sample") for k in ("latent_dim", "beta", "lr", "grad_clip"))
    # Never a beta-dependent objective: reconstruction, or samples' quality.
    assert spec.sweep.metric in ("val_recon", "val_gen_fd", "val_wav_gen_fd_smile")
    assert spec.sweep.grace_period <= spec.experiment.train.max_epochs


def test_shipped_spaces_are_quick_and_default() -> None:
    assert {"quick", "default"} <= set(available_spaces())
    default = load_space("default")
    assert default.sweep.gpus_per_trial == 0.25
    # CPU-only runs use 2 concurrent 1-thread trials (faster than 1 trial x 2 threads here).
    quick = load_space("quick")
    assert (quick.sweep.max_concurrent, quick.sweep.cpus_per_trial) == (2, 1.0)


def test_names_defined_in_space_checks_are_importable_from_space() -> None:
    """Trials, the simulator and the benchmarks import the metric names and parse_constraint
    from sweeps.space; the checks module that defines them is an implementation detail."""
    import sweeps.space as space
    import sweeps.space_checks as checks

    for name in (
        "DISTRIBUTIONS",
        "OBJECTIVES",
        "EMOTION_OBJECTIVES",
        "GENERATION_OBJECTIVES",
        "LOSS_METRICS",
        "EMOTION_METRICS",
        "GENERATION_METRICS",
        "QUALITY_MODULES",
        "parse_constraint",
        "constraint_metrics",
        "validate_params",
    ):
        assert getattr(space, name) is getattr(checks, name), name
        assert name in space.__all__


def test_unknown_space_name_lists_available() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown search space 'quik'.*did you mean 'quick'.*default"
    ):
        load_space("quik")


def test_unknown_param_key_suggests_nearest(tmp_path: Path) -> None:
    path = write_space(tmp_path, "params:\n  latnet_dim: {choice: [8, 16]}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'latnet_dim'.*did you mean 'latent_dim'"):
        load_space(path)


def test_unknown_sweep_key_suggests_nearest(tmp_path: Path) -> None:
    path = write_space(tmp_path, "sweep:\n  num_sample: 4\n")
    with pytest.raises(ConfigError, match=r"sweep: unknown key 'num_sample'.*'num_samples'"):
        load_space(path)


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section 'param'.*'params'"):
        load_space(write_space(tmp_path, "param:\n  lr: 0.001\n"))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("lr: {logunifrom: [1.0e-4, 1.0e-2]}", r"unknown distribution 'logunifrom'.*'loguniform'"),
        ("lr: {loguniform: [1.0e-2, 1.0e-4]}", r"low 0.01 is greater than high 0.0001"),
        ("lr: {loguniform: [0, 1.0e-2]}", r"log distribution needs low > 0"),
        ("lr: {uniform: [1.0e-4]}", r"expected \[low, high\]"),
        ("lr: {uniform: [a, 1]}", r"bounds must be numbers"),
        ("latent_dim: {uniform: [8, 64]}", r"holds int, which a uniform distribution cannot"),
        ("latent_dim: {int: [8.5, 64]}", r"bounds must be integers"),
        ("latent_dim: {choice: [16, big]}", r"params.latent_dim.choice: expected int, got 'big'"),
        ("latent_dim: {choice: []}", r"non-empty list"),
        ("beta: fast", r"params.beta: expected float, got 'fast'"),
        ("lr: {uniform: [0, 1], choice: [1]}", r"one mapping entry"),
    ],
)
def test_bad_distributions_fail_by_name(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(write_space(tmp_path, f"params:\n  {entry}\n"))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("sweep:\n  metric: val_loss", r"not a valid objective.*beta"),
        ("sweep:\n  mode: maximize", r"expected 'min' or 'max'"),
        ("sweep:\n  num_samples: 0", r"sweep.num_samples: expected an integer >= 1, got 0"),
        ("sweep:\n  reduction_factor: 1", r"sweep.reduction_factor: expected an integer >= 2"),
        ("sweep:\n  cpus_per_trial: 0", r"sweep.cpus_per_trial: expected a number > 0, got 0.0"),
        ("sweep:\n  gpus_per_trial: -1", r"sweep.gpus_per_trial: expected a number >= 0"),
        ("sweep:\n  max_failures: -1", r"sweep.max_failures: expected an integer >= 0"),
        ("sweep:\n  mlflow_flush_s: -1", r"sweep.mlflow_flush_s: expected a number >= 0"),
        ("sweep:\n  seed: -1", r"sweep.seed: expected an integer in \[0, 4294967295\]"),
        ("sweep:\n  gpus_per_trial: 1.5", r"above 1 it must be a whole number"),
        ("sweep:\n  grace_period: 9\ntrain:\n  max_epochs: 4", r"exceeds train.max_epochs 4"),
        ("sweep:\n  num_samples: four", r"sweep.num_samples: expected int"),
        ("train:\n  batch_size: 16.5", r"train.batch_size: expected int"),
        ("data:\n  pth: x", r"data: unknown key 'pth'.*'path'"),
        ("sweep:\n  mode: max", r"sweep.mode: 'max' contradicts val_recon, where lower is better"),
        ("sweep:\n  metric: val_spectral\n  mode: max", r"sweep.mode: 'max' contradicts"),
        (
            "sweep:\n  emotion_every: -1",
            r"sweep.emotion_every: expected an integer >= 0 \(0: off\)",
        ),
        ("finalise:\n  emotion_samples: 0", r"finalise.emotion_samples: expected an integer >= 1"),
        ("finalise:\n  n_samples: 0", r"finalise.n_samples: expected an integer >= 1, got 0"),
        ("finalise:\n  max_epochs: -1", r"finalise.max_epochs: expected an integer >= 0 \(0: the"),
        (
            "finalise:\n  griffin_lim_iters: -1",
            r"finalise.griffin_lim_iters: expected an integer >= 0",
        ),
        ("judge:\n  lr: 0", r"judge.lr: expected a number > 0, got 0.0"),
        ("judge:\n  dropout: 1.0", r"judge.dropout: expected a number in \[0, 1\), got 1.0"),
        ("judge:\n  patience: 0", r"judge.patience: expected an integer >= 1, got 0"),
        ("judge:\n  n_blocks: 0", r"judge.n_blocks: expected an integer >= 1, got 0"),
        ("judge:\n  freq_mask: 1.5", r"judge.freq_mask: expected a number in \[0, 1\], got 1.5"),
        (
            "judge:\n  blur_prob: -0.1",
            r"judge.blur_prob: expected a number in \[0, 1\] \(0: no blur\)",
        ),
        ("judge:\n  blur_time: -1", r"judge.blur_time: expected a number >= 0"),
        ("judge:\n  weight_decay: -1", r"judge.weight_decay: expected a number >= 0"),
        (
            "data:\n  val_fraction: 0",
            r"space.yaml: data.val_fraction: expected a number in \(0, 1\)",
        ),
        (
            "features:\n  hop_length: 0",
            r"space.yaml: features.hop_length: expected an integer >= 1",
        ),
    ],
)
def test_bad_settings_fail_by_name(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(write_space(tmp_path, section + "\n"))


def test_overrides_apply_and_validate() -> None:
    spec = load_space("quick", ["sweep.num_samples=3", "params.lr={loguniform: [1.0e-4, 1.0e-3]}"])
    assert spec.sweep.num_samples == 3
    assert spec.params["lr"] == {"loguniform": [1.0e-4, 1.0e-3]}
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_space("quick", ["num_samples=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'nmu_samples'"):
        load_space("quick", ["sweep.nmu_samples=3"])


def test_not_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(write_space(tmp_path, "params: [unclosed\n"))


def test_int_distribution_is_inclusive_and_trial_config_is_plain() -> None:
    space = to_tune_space({"latent_dim": {"int": [4, 5]}, "beta": 0.01})
    samples = {space["latent_dim"].sample() for _ in range(200)}
    assert samples == {4, 5}
    assert space["beta"] == 0.01
    config = trial_train_config(TrainConfig(), {"latent_dim": 5, "beta": 0.01})
    assert (config.latent_dim, config.beta, config.lr) == (5, 0.01, TrainConfig().lr)


def test_raw_space_roundtrips_for_resume(tmp_path: Path) -> None:
    spec = load_space("quick", ["sweep.num_samples=2"])
    again = load_space(write_space(tmp_path, yaml.safe_dump(spec.raw)))
    assert again.sweep == spec.sweep and again.params == spec.params
    assert isinstance(to_tune_space(again.params)["lr"], tune.search.sample.Float)


def test_shipped_spaces_compute_emotion_metrics_with_a_judge_section() -> None:
    quick, default = load_space("quick"), load_space("default")
    assert (quick.sweep.emotion_every, default.sweep.emotion_every) == (2, 5)
    assert quick.judge == JudgeConfig(epochs=30)
    assert default.judge == JudgeConfig(epochs=40)
    assert SweepSettings().emotion_every == 0  # off unless a space asks for it


def test_judge_section_maps_onto_judge_config(tmp_path: Path) -> None:
    spec = load_space(write_space(tmp_path, "judge:\n  epochs: 3\n  lr: 1e-3\n  augment: false\n"))
    assert (spec.judge.epochs, spec.judge.lr, spec.judge.augment) == (3, 0.001, False)
    assert spec.judge.channels == JudgeConfig().channels
    with pytest.raises(ConfigError, match=r"judge: unknown key 'epoch'.*did you mean 'epochs'"):
        load_space(write_space(tmp_path, "judge:\n  epoch: 3\n"))
    with pytest.raises(ConfigError, match=r"judge.epochs: expected int"):
        load_space(write_space(tmp_path, "judge:\n  epochs: many\n"))
    with pytest.raises(ConfigError, match=r"judge.epochs: expected an integer >= 1, got 0"):
        load_space(write_space(tmp_path, "judge:\n  epochs: 0\n"))
    with pytest.raises(ConfigError, match=r"unknown section 'judges'.*'judge'"):
        load_space(write_space(tmp_path, "judges:\n  epochs: 3\n"))


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("val_emotion_acc_recon", "max"),
        ("val_emotion_acc_drop", "min"),
        ("val_fd_recon", "min"),
        ("val_latent_silhouette", "max"),
    ],
)
def test_emotion_objectives_need_emotion_every_and_their_direction(
    tmp_path: Path, metric: str, mode: str
) -> None:
    assert OBJECTIVES[metric] == mode
    spec = load_space("quick", [f"sweep.metric={metric}", f"sweep.mode={mode}"])
    assert (spec.sweep.metric, spec.sweep.mode) == (metric, mode)
    with pytest.raises(ConfigError, match=rf"sweep.emotion_every: the objective {metric} is an"):
        load_space(
            "quick", [f"sweep.metric={metric}", f"sweep.mode={mode}", "sweep.emotion_every=0"]
        )
    wrong = "min" if mode == "max" else "max"
    with pytest.raises(ConfigError, match=rf"sweep.mode: '{wrong}' contradicts {metric}.*{mode}"):
        load_space("quick", [f"sweep.metric={metric}", f"sweep.mode={wrong}"])


def test_judge_section_roundtrips_for_resume(tmp_path: Path) -> None:
    spec = load_space("quick", ["judge.epochs=5"])
    again = load_space(write_space(tmp_path, yaml.safe_dump(spec.raw)))
    assert again.judge == spec.judge == JudgeConfig(epochs=5)
    assert again.sweep.emotion_every == 2


def test_the_real_corpus_space_asks_for_its_data_and_judges_samples() -> None:
    with pytest.raises(ConfigError, match=r"data.path: this space trains on a real corpus.*--set"):
        load_space("emodb_cpu")
    spec = load_space("emodb_cpu", ["data.path=/data/emodb/wav"])
    assert (spec.sweep.metric, spec.sweep.mode) == ("val_wav_gen_fd_smile", "min")
    # The costly audio metric is computed at each of ASHA's rungs, not after the first.
    assert spec.sweep.emotion_every == spec.sweep.grace_period
    assert (spec.experiment.train.arch, spec.experiment.train.prior) == ("temporal", "diffusion")
    assert spec.experiment.train.contrast_weight == 5.0  # trials and the finaliser alike
    assert spec.finalise.vocoder == "hifigan"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.conditional=false"], "needs train.conditional: true"),
        (["finalise.vocoder=hifigan"], r"finalise: vocoder hifigan reads 80 mels.*features.n_mels"),
        (["finalise.vocoder=wavenet"], "finalise.vocoder: expected one of griffinlim, hifigan"),
        (["finalise.conversion_strength=0"], r"conversion_strength: expected a number in \(0, 1\]"),
        (
            ["finalise.dnsmos_clips=-1"],
            r"finalise.dnsmos_clips: expected an integer >= 0 \(0: every",
        ),
    ],
)
def test_generation_and_audio_settings_are_checked_before_ray(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space("quick", overrides)


def test_missing_quality_packages_are_named_with_their_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pystoi" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"'pystoi'.*emovae-sweeps\[quality\]"):
        load_space("quick")


# --- value ranges -----------------------------------------------------------------------------


def test_out_of_range_constants_are_refused_before_ray() -> None:
    """The issue's example: every trial died on a torch RuntimeError."""
    with pytest.raises(ConfigError) as info:
        load_space("quick", ["train.base_channels=0"])
    message = str(info.value)
    assert message.endswith("quick.yaml: train.base_channels: expected an integer >= 1, got 0")
    assert message.count("quick.yaml") == 1


def test_a_constant_that_params_searches_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("quick", ["train.latent_dim=8"])
    message = str(info.value)
    assert "quick.yaml: train.latent_dim is also searched in params.latent_dim" in message
    assert "--set params.latent_dim=8" in message
    # The fix the message suggests loads, with the value fixed for every trial.
    assert load_space("quick", ["params.latent_dim=8"]).params["latent_dim"] == 8


def test_a_constant_in_both_train_and_params_is_an_error(tmp_path: Path) -> None:
    path = write_space(tmp_path, "train:\n  beta: 0.01\nparams:\n  beta: 0.02\n")
    with pytest.raises(
        ConfigError, match=r"train.beta \(0.01\) is also set in params.beta \(0.02\)"
    ):
        load_space(path)


# Searched ranges and choices outside the TrainConfig field's range, and the range named.
PARAMS_OUT_OF_RANGE = [
    ("beta: {uniform: [-1, 1]}", r"params.beta.uniform: expected a number >= 0, got -1.0"),
    ("lr: {uniform: [-1.0e-3, 1.0e-3]}", r"params.lr.uniform: expected a number >= 0, got -0.001"),
    ("latent_dim: {int: [0, 8]}", r"params.latent_dim.int: expected an integer >= 1, got 0"),
    ("batch_size: {choice: [16, 0]}", r"params.batch_size.choice: expected an integer >= 1, got 0"),
    (
        "lr_factor: {uniform: [0.5, 1.0]}",
        r"params.lr_factor.uniform: expected a number in \(0, 1\)",
    ),
    ("guidance: {uniform: [0.5, 2.0]}", r"params.guidance.uniform: expected a number >= 1 \(1: no"),
    (
        "label_dropout: {choice: [0.1, 1.0]}",
        r"params.label_dropout.choice: expected a number in \[",
    ),
    ("spectral_weight: -0.5", r"params.spectral_weight: expected a number >= 0, got -0.5"),
    ("grad_clip: {loguniform: [0.1, .inf]}", r"params.grad_clip.loguniform: expected a finite"),
    (
        "prior_channels: {choice: [64, 100]}",
        r"params.prior_channels.choice: expected a multiple of 8",
    ),
    (
        "prior_channels: {int: [8, 64]}",
        r"params.prior_channels.int: .* int distributions do not keep to; search a choice",
    ),
    # Default features: 3 s, 259 frames, one latent frame after 9 stride-2 stages.
    (
        "time_downsample: {int: [0, 12]}",
        r"params.time_downsample.int: expected an integer in \[0, 9\]",
    ),
    ("time_downsample: 10", r"params.time_downsample: expected an integer in \[0, 9\]"),
    # Fields that hold one of a few names: refused at load, not in every trial.
    (
        "recon_loss: {choice: [mse, huber]}",
        r"params.recon_loss.choice: expected one of mse, l1, got 'huber'",
    ),
    ("arch: seeds", r"params.arch: expected one of seed, temporal, got 'seeds'"),
]


@pytest.mark.parametrize(("entry", "message"), PARAMS_OUT_OF_RANGE)
def test_searched_values_outside_the_field_range_are_refused(
    tmp_path: Path, entry: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(write_space(tmp_path, f"params:\n  {entry}\n"))


def test_searched_time_downsample_is_bounded_by_the_space_features() -> None:
    # The quick space's 1.5 s clips have 130 frames: 8 stages make one latent frame.
    assert load_space("quick", ["params.time_downsample={choice: [0, 8]}"])
    with pytest.raises(ConfigError, match=r"quick.yaml: params.time_downsample.choice: .*\[0, 8\]"):
        load_space("quick", ["params.time_downsample={choice: [0, 9]}"])
    with pytest.raises(ConfigError, match=r"quick.yaml: train.time_downsample: .*\[0, 8\].* got 9"):
        load_space("quick", ["train.time_downsample=9"])


@pytest.mark.parametrize(
    ("cls", "ranges"),
    [
        (SweepSettings, SWEEP_RANGES),
        (FinaliseSettings, FINALISE_RANGES),
        (JudgeConfig, JUDGE_RANGES),
    ],
)
def test_range_tables_name_fields_and_hold_the_defaults(cls: type, ranges: dict) -> None:
    assert set(ranges) <= set(field_names(cls))
    cls()  # the defaults are in range
