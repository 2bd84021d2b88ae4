"""The samples' audio metric a trial reports (`val_wav_gen_fd_smile`): samples vocoded as the
finaliser exports them, measured with eGeMAPS against the real validation WAVs; the trial's
callback computes it only on due epochs; the driver extracts the real clips' eGeMAPS once.
On a small synthetic corpus with Griffin-Lim (real files, real openSMILE)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sweep_emotion import TINY_JUDGE, mlflow_parent_run

from emovae.config import DataConfig, FeatureConfig, TrainConfig
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluation.sample_audio import AUDIO_FD_KEY, prepare_sample_audio, sample_audio_metrics
from emovae.evaluation.smile_judge import egemaps_cache
from emovae.judge import JudgeConfig
from emovae.models import build_model
from sweeps.driver import _absolute_cache, _prepare_judge, _trial_experiment
from sweeps.space import ConfigError, spec_from_dict
from sweeps.space_checks import AUDIO_OBJECTIVES
from sweeps.trainable import AUDIO_KEY, emotion_epoch_metrics, trial_setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURES = FeatureConfig(n_mels=40, duration=1.0)  # 1 s: long enough for openSMILE's functionals
JUDGE = JudgeConfig(**TINY_JUDGE)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def data(cache: Path) -> PreparedData:
    return prepare_data(
        DataConfig(
            path="synthetic", cache_dir=str(cache), synthetic_speakers=5, synthetic_per_emotion=2
        ),
        FEATURES,
    )


def test_vocoded_real_log_mels_lie_nearer_the_real_clips_than_noise(
    data: PreparedData, cache: Path
) -> None:
    """The real validation clips' own log-mels, vocoded, against as many frames of noise: the
    distance must tell speech from noise, or the sweep would choose blind."""
    scorer = prepare_sample_audio(data, "griffinlim", cache)
    assert scorer.real.shape == (len(data.val), 88)
    real = sample_audio_metrics(scorer, data.val.features, prefix="val_")
    noise = torch.randn(data.val.features.shape, generator=torch.Generator().manual_seed(0))
    noisy = sample_audio_metrics(scorer, noise, prefix="val_")
    assert set(real) == {f"val_{AUDIO_FD_KEY}"}
    assert 0.0 < real[f"val_{AUDIO_FD_KEY}"] < noisy[f"val_{AUDIO_FD_KEY}"] / 2
    # Deterministic: the same samples, the same distance.
    again = sample_audio_metrics(scorer, data.val.features, prefix="val_")
    assert again == real


def test_a_silent_sample_leaves_the_set_unscored(data: PreparedData, cache: Path) -> None:
    scorer = prepare_sample_audio(data, "griffinlim", cache)
    samples = data.val.features.clone()
    samples[0] = -1e4  # far below the quietest log-mel: the vocoder gives silence
    assert math.isnan(sample_audio_metrics(scorer, samples)[AUDIO_FD_KEY])


def test_the_trial_callback_computes_the_audio_metric_only_when_due(
    data: PreparedData, cache: Path
) -> None:
    """Epoch 1 (the first seen, not due) carries NaN; epoch 2 is due (every 2) and finite;
    epoch 3 repeats it; epoch 4 (last) computes it again."""
    train = TrainConfig(base_channels=4, latent_dim=4, conditional=True, device="cpu")
    model = build_model(train, data.features, len(data.label_names))
    metrics = emotion_epoch_metrics(data, 2, JUDGE, cache, "griffinlim")
    rows = [metrics(model, epoch, epoch == 4) for epoch in (1, 2, 3, 4)]
    assert AUDIO_KEY in AUDIO_OBJECTIVES  # the key trials report is the one spaces may name
    assert math.isnan(rows[0][AUDIO_KEY])
    assert math.isfinite(rows[0]["val_gen_fd"])  # the judge's metrics are not held back
    assert all(math.isfinite(row[AUDIO_KEY]) for row in rows[1:])
    assert rows[2] == rows[1]
    without = emotion_epoch_metrics(data, 2, JUDGE, cache)
    assert AUDIO_KEY not in without(model, 1, False)


def _raw(corpus: Path, cache: Path, **sweep: object) -> dict[str, object]:
    return {
        "sweep": {"metric": "val_wav_gen_fd_smile", "emotion_every": 2, "grace_period": 2} | sweep,
        "data": {"path": str(corpus), "cache_dir": str(cache)},
        "features": dataclasses.asdict(FEATURES),
        "train": {"conditional": True, "base_channels": 4, "latent_dim": 4, "max_epochs": 4},
        "params": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}},
        "judge": dataclasses.asdict(JUDGE),
        "finalise": {"vocoder": "griffinlim"},
    }


def test_the_driver_extracts_the_real_clips_once_and_its_trials_report_the_metric(
    data: PreparedData, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    spec = spec_from_dict(_raw(Path(data.corpus_path), cache), "tiny", "test")
    client, state = mlflow_parent_run(tmp_path)
    _prepare_judge(client, state, spec, data)
    extracted = sorted(egemaps_cache(cache).glob("egemaps-*.npy"))
    assert len(extracted) == len(data.train) + len(data.val)
    trial = _trial_experiment(spec, _absolute_cache(spec), state)
    assert trial["emotion"]["audio_vocoder"] == "griffinlim"
    assert trial["objective"] == {"metric": "val_wav_gen_fd_smile", "mode": "min"}
    # What a trial builds from that entry reports the metric on a due epoch.
    setup = trial_setup({"lr": 2e-3}, trial, cpus_per_trial=1)
    model = build_model(setup.train_config, setup.data.features, len(setup.data.label_names))
    assert math.isfinite(setup.epoch_metrics(model, 2, False)[AUDIO_KEY])
    other = spec_from_dict(_raw(Path(data.corpus_path), cache, metric="val_gen_fd"), "tiny", "test")
    assert (
        _trial_experiment(other, _absolute_cache(other), state)["emotion"]["audio_vocoder"] is None
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"sweep": {"emotion_every": 4}},
            r"emotion_every.*first computed at epoch 4.*grace_period: 2",
        ),
        ({"train": {"conditional": False}}, r"val_wav_gen_fd_smile.*train.conditional: true"),
        (
            {"finalise": {"vocoder": "hifigan", "enabled": False}},
            r"val_wav_gen_fd_smile vocodes with finalise.vocoder.*80",
        ),
    ],
)
def test_a_space_that_cannot_compute_the_audio_metric_is_refused(
    tmp_path: Path, change: dict[str, dict[str, object]], message: str
) -> None:
    raw = _raw(tmp_path / "corpus", tmp_path / "cache")
    for section, values in change.items():
        raw[section] = dict(raw[section]) | values  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(raw, "tiny", "test")


def test_egemaps_space_standardises_with_the_training_clips() -> None:
    from emovae.evaluation.smile_judge import fit_egemaps_space

    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(50, 88))
    space = fit_egemaps_space(train)
    embedded = space.transform(train)
    assert np.allclose(embedded.mean(axis=0), 0.0, atol=1e-9)
    assert np.abs(embedded).max() <= 5.0
    with pytest.raises(ValueError, match="at least 2 clips"):
        fit_egemaps_space(train[:1])


def test_a_missing_opensmile_is_named_with_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    raw = _raw(tmp_path / "corpus", tmp_path / "cache")
    raw["finalise"] = {"vocoder": "griffinlim", "enabled": False}  # only the trials need it
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "opensmile" else real(name, *a),
    )
    with pytest.raises(
        ConfigError, match=r"val_wav_gen_fd_smile measures.*'opensmile'.*emovae-sweeps\[quality\]"
    ):
        spec_from_dict(raw, "tiny", "test")
