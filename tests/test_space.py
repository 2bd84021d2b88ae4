"""Search-space files: every shipped space loads, and malformed ones fail by name before Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray import tune

from emovae.config import ConfigError, TrainConfig
from emovae.judge import JudgeConfig
from sweeps.space import (
    OBJECTIVES,
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
    assert spec.sweep.metric in ("val_recon", "val_gen_fd")
    assert spec.sweep.grace_period <= spec.experiment.train.max_epochs


def test_shipped_spaces_are_quick_and_default() -> None:
    assert {"quick", "default"} <= set(available_spaces())
    default = load_space("default")
    assert default.sweep.gpus_per_trial == 0.25
    # CPU-only runs use 2 concurrent 1-thread trials (faster than 1 trial x 2 threads here).
    quick = load_space("quick")
    assert (quick.sweep.max_concurrent, quick.sweep.cpus_per_trial) == (2, 1.0)


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
        ("sweep:\n  num_samples: 0", r"num_samples: expected at least 1"),
        ("sweep:\n  reduction_factor: 1", r"reduction_factor: expected at least 2"),
        ("sweep:\n  gpus_per_trial: 1.5", r"above 1 it must be a whole number"),
        ("sweep:\n  grace_period: 9\ntrain:\n  max_epochs: 4", r"exceeds train.max_epochs 4"),
        ("sweep:\n  num_samples: four", r"sweep.num_samples: expected int"),
        ("train:\n  batch_size: 16.5", r"train.batch_size: expected int"),
        ("data:\n  pth: x", r"data: unknown key 'pth'.*'path'"),
        ("sweep:\n  mode: max", r"sweep.mode: 'max' contradicts val_recon, where lower is better"),
        ("sweep:\n  metric: val_spectral\n  mode: max", r"sweep.mode: 'max' contradicts"),
        ("sweep:\n  emotion_every: -1", r"sweep.emotion_every: expected 0 \(off\)"),
        ("finalise:\n  emotion_samples: 0", r"finalise.emotion_samples: expected at least 1"),
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
    with pytest.raises(ConfigError, match=r"judge.epochs: expected at least 1"):
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
    assert (spec.sweep.metric, spec.sweep.mode) == ("val_gen_fd", "min")
    assert (spec.experiment.train.arch, spec.experiment.train.prior) == ("temporal", "diffusion")
    assert spec.finalise.vocoder == "hifigan"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.conditional=false"], "needs train.conditional: true"),
        (["finalise.vocoder=hifigan"], r"finalise: vocoder hifigan reads 80 mels.*features.n_mels"),
        (["finalise.vocoder=wavenet"], "finalise.vocoder: expected one of griffinlim, hifigan"),
        (["finalise.conversion_strength=0"], r"conversion_strength: expected a value in \(0, 1\]"),
        (["finalise.dnsmos_clips=-1"], r"finalise.dnsmos_clips: expected 0 \(every WAV\)"),
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
