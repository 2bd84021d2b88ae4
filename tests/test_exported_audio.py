"""Judging exported WAVs: both judges, DNSMOS, STOI, Frechet distances and the augmentation
test, on a small synthetic corpus (real files on disk, read back as a user's would be)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emovae.config import DataConfig, FeatureConfig
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluation.exported_audio import (
    AudioJudges,
    WavSet,
    augmentation_control_rows,
    augmentation_gain,
    dnsmos_subset,
    prepare_audio_judges,
    score_set,
    wav_set,
)
from emovae.judge import JudgeConfig, train_judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURES = FeatureConfig(n_mels=40, duration=1.0)
JUDGE = JudgeConfig(epochs=4, channels=4, n_blocks=2, embedding_dim=8, num_threads=1, device="cpu")
PER_CLIP_KEYS = {"cnn_acc", "cnn_uar", "smile_acc", "smile_uar", "dnsmos", "dnsmos_sig"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedData, AudioJudges, Path]:
    cache = tmp_path_factory.mktemp("cache")
    data = prepare_data(
        DataConfig(
            path="synthetic", cache_dir=str(cache), synthetic_speakers=5, synthetic_per_emotion=1
        ),
        FEATURES,
    )
    judges = prepare_audio_judges(data, train_judge(data, JUDGE), cache)
    return data, judges, cache


@pytest.fixture(scope="module")
def real(setup: tuple[PreparedData, AudioJudges, Path]) -> WavSet:
    """The real test clips, read and judged once: the ceiling every set is scored against."""
    data, judges, cache = setup
    return wav_set(judges, "real", data.test.paths, data.test.labels.numpy(), cache)


def test_real_clips_score_as_the_ceiling_and_their_copies_match_them(
    setup: tuple[PreparedData, AudioJudges, Path], real: WavSet, tmp_path: Path
) -> None:
    data, judges, _ = setup
    labels = real.labels
    metrics = score_set(judges, real)
    assert {f"wav_real_{k}" for k in PER_CLIP_KEYS} <= set(metrics)
    assert not any("_fd_" in k for k in metrics)  # no distance of the ceiling to itself
    # Copies of the real clips as "reconstructions": the same scores, no distance, STOI ~ 1.
    for path in data.test.paths:
        audio, rate = sf.read(path)
        sf.write(tmp_path / Path(path).name, audio, rate)
    copies = [tmp_path / Path(p).name for p in data.test.paths]
    recon = score_set(judges, wav_set(judges, "recon", copies, labels), real, references=real.clips)
    for key in PER_CLIP_KEYS:
        assert recon[f"wav_recon_{key}"] == pytest.approx(metrics[f"wav_real_{key}"], abs=1e-6)
    assert recon["wav_recon_fd_cnn"] == pytest.approx(0.0, abs=1e-3)
    assert recon["wav_recon_stoi"] > 0.99


def test_dnsmos_per_emotion_is_each_emotions_mean(
    setup: tuple[PreparedData, AudioJudges, Path],
    real: WavSet,
) -> None:
    data, judges, _ = setup
    labels = real.labels
    metrics = score_set(judges, real)
    overall = judges.dnsmos.score(real.clips, FEATURES.sample_rate)["ovrl"]
    present = sorted(set(labels.tolist()))
    assert len(present) > 1
    for index in present:
        expected = float(np.mean(overall[labels == index]))
        name = data.label_names[index]
        assert metrics[f"wav_real_dnsmos_{name}"] == pytest.approx(expected, abs=1e-6)
    absent = set(range(len(data.label_names))) - set(present)
    assert not any(f"wav_real_dnsmos_{data.label_names[i]}" in metrics for i in absent)
    # Unlabelled samples have no emotion to group by: the set's DNSMOS only.
    unlabelled = score_set(judges, wav_set(judges, "gen", data.test.paths[:3], None))
    assert set(unlabelled) == {f"wav_gen_dnsmos{k}" for k in ("", "_n", "_sig", "_bak")}


def test_noise_scores_worse_than_speech_on_every_measure(
    setup: tuple[PreparedData, AudioJudges, Path], real: WavSet, tmp_path: Path
) -> None:
    data, judges, _ = setup
    labels = real.labels
    rng = np.random.default_rng(0)
    paths = []
    for i, clip in enumerate(real.clips):
        path = tmp_path / f"noise_{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(len(clip))).astype(np.float32), 22050)
        paths.append(path)
    noise = score_set(judges, wav_set(judges, "gen", paths, labels), real)
    reference = score_set(judges, real)
    # Real speech of other speakers (the validation split), the same number of clips.
    count = len(paths)
    other = wav_set(judges, "conv", data.val.paths[:count], data.val.labels.numpy()[:count])
    speech = score_set(judges, other, real)
    assert noise["wav_gen_dnsmos"] < reference["wav_real_dnsmos"] - 0.5
    assert noise["wav_gen_fd_cnn"] > speech["wav_conv_fd_cnn"]
    assert noise["wav_gen_fd_smile"] > speech["wav_conv_fd_smile"]


def test_unlabelled_samples_get_quality_but_no_accuracy(
    setup: tuple[PreparedData, AudioJudges, Path],
) -> None:
    data, judges, _ = setup
    metrics = score_set(judges, wav_set(judges, "gen", data.test.paths[:3], None))
    assert "wav_gen_dnsmos" in metrics and "wav_gen_cnn_acc" not in metrics
    with pytest.raises(ValueError, match="one label per WAV"):
        wav_set(judges, "gen", data.test.paths[:3], [0])
    with pytest.raises(ValueError, match="expected one of real, recon"):
        wav_set(judges, "fake", data.test.paths[:3], None)


def test_dnsmos_on_a_capped_subset_spread_over_the_set(
    setup: tuple[PreparedData, AudioJudges, Path],
    real: WavSet,
) -> None:
    assert dnsmos_subset(5, 0).tolist() == [0, 1, 2, 3, 4]
    assert dnsmos_subset(5, 9).tolist() == [0, 1, 2, 3, 4]
    assert dnsmos_subset(100, 4).tolist() == [0, 33, 66, 99]  # first and last emotion too
    data, judges, cache = setup
    full = score_set(judges, real)
    capped = score_set(dataclasses.replace(judges, dnsmos_clips=2), real)
    assert full["wav_real_dnsmos_n"] == len(real) > 2 and capped["wav_real_dnsmos_n"] == 2
    first_and_last = judges.dnsmos.score([real.clips[0], real.clips[-1]], FEATURES.sample_rate)
    assert capped["wav_real_dnsmos"] == pytest.approx(first_and_last["ovrl"].mean())
    assert capped["wav_real_smile_acc"] == full["wav_real_smile_acc"]  # only DNSMOS is capped
    with pytest.raises(ValueError, match="dnsmos_clips: expected 0"):
        prepare_audio_judges(data, None, cache, dnsmos_clips=-1)


def test_augmentation_compares_both_judges_with_and_without_extra_clips(
    setup: tuple[PreparedData, AudioJudges, Path],
    real: WavSet,
) -> None:
    data, judges, _ = setup
    # The validation speakers' real clips stand in for generated ones: the mechanics are the
    # same, and the test speakers stay unseen by every judge.
    extra = wav_set(judges, "gen", data.val.paths, data.val.labels.numpy())
    # The same clips as the control: judges trained alike, so the samples add nothing over it.
    metrics = augmentation_gain(judges, data, extra, real, seed=JUDGE.seed, control=extra)
    for judge in ("cnn", "smile"):
        for score in ("acc", "uar"):
            prefix = f"wav_aug_{judge}_{score}"
            assert metrics[f"{prefix}_gain"] == pytest.approx(
                metrics[f"{prefix}_real_plus_generated"] - metrics[f"{prefix}_real_only"]
            )
            assert 0.0 <= metrics[f"{prefix}_real_plus_generated"] <= 1.0
    # The real-only CNN figure is the sweep's judge itself (same settings and seed).
    assert metrics["wav_aug_cnn_acc_real_only"] == judges.cnn.test_accuracy
    for judge in ("cnn", "smile"):
        prefix = f"wav_aug_{judge}"
        assert (
            metrics[f"{prefix}_uar_real_plus_control"]
            == metrics[f"{prefix}_uar_real_plus_generated"]
        )
        assert (
            metrics[f"{prefix}_acc_real_plus_control"]
            == metrics[f"{prefix}_acc_real_plus_generated"]
        )
        assert metrics[f"{prefix}_uar_gain_over_control"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values())


def test_augmentation_control_rows_match_the_generated_emotions() -> None:
    train = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    generated = np.array([0, 0, 1, 1, 1, 2])
    rows = augmentation_control_rows(train, generated, seed=3)
    # Emotion 1 has two training clips for the three samples asked: both, no repeats.
    assert Counter(train[rows].tolist()) == {0: 2, 1: 2, 2: 1}
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert rows.tolist() == augmentation_control_rows(train, generated, seed=3).tolist()
    draws = {tuple(augmentation_control_rows(train, generated, seed=s)) for s in range(8)}
    assert len(draws) > 1  # the seed chooses the clips
