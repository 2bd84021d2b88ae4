"""The eGeMAPS emotion judge (emovae.evaluation.smile_judge).

Fast tests use synthetic voiced clips and hand-made features; the slow ones extract eGeMAPS for
the 454 shared-six EmoDB clips once per session (about 25 s) and check that a judge trained on
the training speakers recognises emotions of unseen speakers well above chance.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import balanced_accuracy_score

import emovae.evaluation.smile_judge as smile_judge
from emovae.data.corpus import load_corpus
from emovae.data.splits import SpeakerSplit, split_speakers
from emovae.evaluation.smile_judge import (
    N_EGEMAPS,
    SmileJudge,
    egemaps,
    egemaps_of_files,
    judge_frechet_distance,
    judge_scores,
    train_smile_judge,
)
from emovae.features import AudioError

RATE = 16_000


def _voice(seed: int, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    """A vowel-like clip: a gliding harmonic tone with a little noise, so eGeMAPS finds a
    pitch; the seed moves its pitch, so clips differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110.0 + 15.0 * seed + 20.0 * t
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    return (0.2 * tone + 0.005 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="session")
def emodb_wav(emodb_dir: Path) -> Path:
    return emodb_dir


class Shared6(NamedTuple):
    paths: list[Path]
    features: np.ndarray  # (454, 88)
    labels: np.ndarray
    speakers: np.ndarray
    label_names: list[str]
    split: SpeakerSplit
    cache_dir: Path


@pytest.fixture(scope="session")
def shared6(emodb_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Shared6:
    items = load_corpus(emodb_wav, "auto", "shared6")
    names = sorted({it.emotion for it in items})
    cache_dir = tmp_path_factory.mktemp("egemaps-cache")
    paths = [it.path for it in items]
    return Shared6(
        paths=paths,
        features=egemaps_of_files(paths, cache_dir),
        labels=np.array([names.index(it.emotion) for it in items]),
        speakers=np.array([it.speaker for it in items]),
        label_names=names,
        split=split_speakers(items, 0.15, 0.2, 0),
        cache_dir=cache_dir,
    )


def test_egemaps_shape_and_finite_at_two_rates() -> None:
    clips = [_voice(0), _voice(1), _voice(2, seconds=0.6)]
    features = egemaps(clips, RATE)
    assert features.shape == (3, N_EGEMAPS) and features.dtype == np.float64
    assert np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])
    # 22,050 Hz input is resampled to 16 kHz first: nearly the same features.
    at_22k = egemaps([_voice(0, rate=22_050)], 22_050)
    assert np.corrcoef(at_22k[0], features[0])[0, 1] > 0.99
    assert egemaps([], RATE).shape == (0, N_EGEMAPS)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (np.zeros(RATE, dtype=np.float32), "silent"),
        (np.full(10, 0.1, dtype=np.float32), "too short"),
        (np.zeros(0, dtype=np.float32), "no samples"),
    ],
)
def test_egemaps_bad_clip_names_its_index(clip: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=rf"clips\[1\].*{message}"):
        egemaps([_voice(0), clip], RATE)


def _write_voices(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"clip{i}.wav")
        sf.write(paths[-1], _voice(i), RATE, subtype="PCM_16")
    return paths


class _CountingExtraction:
    """Counts clips extracted (cache misses) by wrapping the module's extraction function."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = smile_judge._functionals

        def counted(*args: object, **kwargs: object) -> np.ndarray:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(smile_judge, "_functionals", counted)


def test_cache_is_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _write_voices(tmp_path / "wav", 3)
    cache = tmp_path / "cache"
    counter = _CountingExtraction(monkeypatch)
    first = egemaps_of_files(paths, cache)
    assert counter.calls == 3
    second = egemaps_of_files(paths, cache)
    assert counter.calls == 3  # all from the cache
    np.testing.assert_array_equal(first, second)
    # A copy under another name has the same content: a cache hit.
    copy = shutil.copy(paths[0], tmp_path / "wav" / "renamed.wav")
    np.testing.assert_array_equal(egemaps_of_files([copy], cache)[0], first[0])
    assert counter.calls == 3
    # A changed file is extracted again, and only it.
    sf.write(paths[1], _voice(7), RATE, subtype="PCM_16")
    third = egemaps_of_files(paths, cache)
    assert counter.calls == 4
    np.testing.assert_array_equal(third[[0, 2]], first[[0, 2]])
    assert not np.allclose(third[1], first[1])
    # Same numbers as extracting the decoded audio directly, and without a cache.
    audio, rate = sf.read(paths[1], dtype="float32")
    np.testing.assert_array_equal(egemaps([audio], rate)[0], third[1])
    np.testing.assert_array_equal(egemaps_of_files(paths, None), third)


def test_damaged_cache_entry_is_extracted_again(tmp_path: Path) -> None:
    paths = _write_voices(tmp_path / "wav", 1)
    cache = tmp_path / "cache"
    first = egemaps_of_files(paths, cache)
    for entry in cache.glob("egemaps-*.npy"):
        entry.write_bytes(b"not an array")
    np.testing.assert_array_equal(egemaps_of_files(paths, cache), first)


def test_bad_files_are_errors_naming_them(tmp_path: Path) -> None:
    good = _write_voices(tmp_path / "wav", 1)[0]
    broken = tmp_path / "wav" / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    silent = tmp_path / "wav" / "silent.wav"
    sf.write(silent, np.zeros(RATE, dtype=np.float32), RATE)
    for bad, message in ((broken, "unreadable"), (silent, "silent")):
        with pytest.raises(AudioError, match=f"{bad.name}.*{message}"):
            egemaps_of_files([good, bad], tmp_path / "cache")


def test_missing_opensmile_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opensmile", None)
    with pytest.raises(ImportError, match=r"'opensmile'.*emovae-sweeps\[quality\]"):
        egemaps([_voice(0)], RATE)


def _toy_features(
    n_per: int = 12, n_speakers: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three emotions as Gaussian clusters in eGeMAPS-sized space, features in mixed units;
    the clusters are fixed, `seed` draws the clips."""
    fixed = np.random.default_rng(0)
    centres = fixed.normal(0.0, 1.5, (3, N_EGEMAPS))
    units = fixed.uniform(0.01, 100.0, N_EGEMAPS)  # like Hz next to ratios
    rng = np.random.default_rng(seed + 1)
    rows, labels, speakers = [], [], []
    for speaker in range(n_speakers):
        for label in range(3):
            rows.append((centres[label] + rng.normal(0.0, 1.0, (n_per, N_EGEMAPS))) * units)
            labels += [label] * n_per
            speakers += [f"s{speaker}"] * n_per
    return np.concatenate(rows), np.array(labels), np.array(speakers)


@pytest.fixture(scope="module")
def toy_judge() -> SmileJudge:
    features, labels, speakers = _toy_features()
    return train_smile_judge(features, labels, speakers, ["a", "b", "c"], seed=0)


def test_judge_learns_separable_emotions(toy_judge: SmileJudge) -> None:
    features, labels, _ = _toy_features(seed=1)  # other clips, same kind
    assert toy_judge.label_names == ["a", "b", "c"]
    assert toy_judge.classifier in {"logreg", "svm_rbf"} and "C" in toy_judge.params
    assert toy_judge.cv_accuracy > 0.9 and toy_judge.cv_uar > 0.9
    assert len(toy_judge.candidates) == len(smile_judge.CANDIDATES)
    predicted = toy_judge.predict(features)
    assert predicted.dtype == np.int64 and (predicted == labels).mean() > 0.9


def test_embedding_is_standardised_on_the_training_clips(toy_judge: SmileJudge) -> None:
    features, _, _ = _toy_features()
    embedded = toy_judge.embed(features)
    assert embedded.shape == features.shape
    np.testing.assert_allclose(embedded.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(embedded.std(axis=0), 1.0, atol=1e-9)


def test_judge_scores_match_sklearn_and_stay_quiet(toy_judge: SmileJudge) -> None:
    features, labels, _ = _toy_features(seed=2)
    scores = judge_scores(toy_judge, features, labels)
    predicted = toy_judge.predict(features)
    assert scores["n"] == len(labels)
    assert scores["accuracy"] == pytest.approx((predicted == labels).mean())
    assert scores["uar"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert scores["confusion"].shape == (3, 3) and scores["confusion"].sum() == len(labels)
    # Clips of one emotion only, some predicted as others: no sklearn warning.
    one = labels == 0
    wrong = np.zeros(one.sum(), dtype=np.int64) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = judge_scores(toy_judge, features[one], wrong)
    assert single["accuracy"] < 0.2 and single["confusion"][1].sum() == one.sum()
    empty = judge_scores(toy_judge, np.empty((0, N_EGEMAPS)), np.empty(0))
    assert np.isnan(empty["accuracy"]) and np.isnan(empty["uar"]) and empty["n"] == 0


def test_frechet_distance_nan_below_two_quiet_from_two(toy_judge: SmileJudge) -> None:
    features, labels, _ = _toy_features(seed=3)
    assert np.isnan(judge_frechet_distance(toy_judge, features[:1], features))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = judge_frechet_distance(toy_judge, features[:2], features[2:4])
        same = judge_frechet_distance(toy_judge, features, features)
        apart = judge_frechet_distance(toy_judge, features[labels == 0], features[labels == 1])
    assert np.isfinite(small)
    assert same == pytest.approx(0.0, abs=1e-3)
    assert apart > 1.0


def test_train_rejects_bad_inputs() -> None:
    features, labels, speakers = _toy_features(n_speakers=2)
    names = ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least 2 speakers"):
        train_smile_judge(features, labels, ["s0"] * len(labels), names)
    with pytest.raises(ValueError, match="labels must index label_names"):
        train_smile_judge(features, labels + 1, speakers, names)
    with pytest.raises(ValueError, match=r"\(N, 88\)"):
        train_smile_judge(features[:, :10], labels, speakers, names)
    with pytest.raises(ValueError, match="one of each per clip"):
        train_smile_judge(features, labels[:-1], speakers, names)


@pytest.mark.slow
@pytest.mark.emodb
def test_judge_recognises_emotions_of_unseen_emodb_speakers(shared6: Shared6) -> None:
    train = np.isin(shared6.speakers, shared6.split.train)
    test = np.isin(shared6.speakers, shared6.split.test)
    assert shared6.features.shape == (454, N_EGEMAPS) and np.isfinite(shared6.features).all()
    judge = train_smile_judge(
        shared6.features[train],
        shared6.labels[train],
        shared6.speakers[train],
        shared6.label_names,
        seed=0,
    )
    assert judge.train_speakers == sorted(shared6.split.train)
    scores = judge_scores(judge, shared6.features[test], shared6.labels[test])
    # Chance is 1/6. Seen with seed 0: test accuracy 0.66, UAR 0.65; LOSO on the 6 training
    # speakers 0.52 / 0.48 (benchmarks/RESULTS_judges.md).
    assert scores["accuracy"] > 0.4 and scores["uar"] > 0.35
    assert judge.cv_uar > 0.3
    # Real test clips sit closer to real training clips than to the same clips scrambled
    # feature by feature (each feature's values shuffled across clips on its own).
    rng = np.random.default_rng(0)
    scrambled = np.apply_along_axis(rng.permutation, 0, shared6.features[test])
    real_fd = judge_frechet_distance(judge, shared6.features[train], shared6.features[test])
    assert real_fd < judge_frechet_distance(judge, shared6.features[train], scrambled)


@pytest.mark.slow
@pytest.mark.emodb
def test_emodb_cache_gives_identical_features_without_extracting(
    shared6: Shared6, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted despite a warm cache")

    monkeypatch.setattr(smile_judge, "_functionals", no_extraction)
    again = egemaps_of_files(shared6.paths, shared6.cache_dir)
    np.testing.assert_array_equal(again, shared6.features)
