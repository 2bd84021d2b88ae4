"""Speaker-independent splits and `prepare_data` on a small generated corpus."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from emovae.config import DataConfig, FeatureConfig
from emovae.data.corpus import EMODB_EMOTIONS, CorpusError, Item
from emovae.data.labels import SHARED6
from emovae.data.splits import SpeakerSplit, save_split, split_speakers
from emovae.data.synthetic import generate_synthetic_corpus
from emovae.dataset import PreparedData, prepare_data
from emovae.features import Normalizer, extract_features, n_frames

FEATURES = FeatureConfig(n_mels=32, duration=0.75)
N_SPEAKERS = 5
PER_EMOTION = 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _items(n_speakers: int, per_speaker: int = 3) -> list[Item]:
    return [
        Item(Path(f"/corpus/{s:02d}_{i}.wav"), "anger", f"{s:02d}", f"{s:02d}_{i}")
        for s in range(n_speakers)
        for i in range(per_speaker)
    ]


def _parts(split: SpeakerSplit) -> tuple[tuple[str, ...], ...]:
    return tuple(split.train), tuple(split.val), tuple(split.test)


# --- split_speakers ---------------------------------------------------------------------------


def test_split_is_deterministic_for_a_seed_and_ignores_item_order() -> None:
    items = _items(10)
    first = split_speakers(items, 0.2, 0.2, seed=3)
    shuffled = [items[i] for i in np.random.default_rng(0).permutation(len(items))]
    assert _parts(split_speakers(items, 0.2, 0.2, seed=3)) == _parts(first)
    assert _parts(split_speakers(shuffled, 0.2, 0.2, seed=3)) == _parts(first)
    assert first.seed == 3


def test_split_differs_for_another_seed() -> None:
    items = _items(10)
    splits = {seed: _parts(split_speakers(items, 0.2, 0.2, seed)) for seed in range(6)}
    assert splits[0] != splits[1]
    assert len(set(splits.values())) >= 4  # not a handful of fixed outcomes


@pytest.mark.parametrize(
    ("n_speakers", "val", "test", "sizes"),
    [
        (10, 0.2, 0.2, (6, 2, 2)),
        (10, 0.15, 0.2, (6, 2, 2)),
        (3, 0.15, 0.2, (1, 1, 1)),
        (24, 0.1, 0.25, (16, 2, 6)),
    ],
)
def test_split_uses_every_speaker_once(
    n_speakers: int, val: float, test: float, sizes: tuple[int, int, int]
) -> None:
    items = _items(n_speakers)
    for seed in range(5):
        split = split_speakers(items, val, test, seed)
        train, val_s, test_s = map(set, _parts(split))
        assert not (train & val_s or train & test_s or val_s & test_s)
        assert train | val_s | test_s == {it.speaker for it in items}
        assert (len(train), len(val_s), len(test_s)) == sizes
        for part in _parts(split):
            assert list(part) == sorted(part)
        assert all(split.of(it.speaker) in ("train", "val", "test") for it in items)
    with pytest.raises(KeyError):
        split.of("nobody")


@pytest.mark.parametrize("n_speakers", [1, 2])
def test_split_needs_three_speakers(n_speakers: int) -> None:
    with pytest.raises(CorpusError, match=f"at least 3 speakers.*has {n_speakers}"):
        split_speakers(_items(n_speakers), 0.15, 0.2, 0)


@pytest.mark.parametrize(
    ("n_speakers", "val", "test"), [(3, 0.5, 0.5), (4, 0.5, 0.5), (10, 0.5, 0.5), (6, 0.3, 0.6)]
)
def test_fractions_that_leave_no_training_speaker_are_rejected(
    n_speakers: int, val: float, test: float
) -> None:
    with pytest.raises(CorpusError, match="leave no training speaker"):
        split_speakers(_items(n_speakers), val, test, 0)


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.2, 1.0), (-0.1, 0.2), (0.2, 1.5)])
def test_fractions_outside_zero_one_are_rejected(val: float, test: float) -> None:
    with pytest.raises(CorpusError, match="expected a fraction in"):
        split_speakers(_items(10), val, test, 0)


def test_save_split_writes_json_naming_the_files_of_each_split(tmp_path: Path) -> None:
    items = _items(6, per_speaker=2)
    split = split_speakers(items, 0.2, 0.2, seed=1)
    path = save_split(split, items, tmp_path / "splits")
    record = json.loads(path.read_text())
    assert record["seed"] == 1
    for name in ("train", "val", "test"):
        assert record[name] == getattr(split, name)
        expected = [str(it.path) for it in items if it.speaker in getattr(split, name)]
        assert record["files"][name] == expected
    assert sorted(sum(record["files"].values(), [])) == sorted(str(it.path) for it in items)
    # Named by content: the same split gives the same file, another split another file.
    assert save_split(split, items, tmp_path / "splits") == path
    other = save_split(split_speakers(items, 0.2, 0.2, seed=2), items, tmp_path / "splits")
    assert other != path and other.exists()


# --- prepare_data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_corpus(
        tmp_path_factory.mktemp("synthetic"),
        n_speakers=N_SPEAKERS,
        per_emotion=PER_EMOTION,
        duration=FEATURES.duration,
        sample_rate=FEATURES.sample_rate,
        seed=0,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def prepared(corpus: Path, cache_dir: Path) -> PreparedData:
    return prepare_data(DataConfig(path=str(corpus), cache_dir=str(cache_dir)), FEATURES)


def _emotion_of(path: str) -> str:
    return EMODB_EMOTIONS[Path(path).stem[5]]


def test_prepare_data_splits_by_speaker(prepared: PreparedData, corpus: Path) -> None:
    splits = {name: getattr(prepared, name) for name in ("train", "val", "test")}
    speakers = {name: set(split.speakers) for name, split in splits.items()}
    assert not (speakers["train"] & speakers["val"])
    assert not (speakers["train"] & speakers["test"])
    assert not (speakers["val"] & speakers["test"])
    for name, split in splits.items():
        assert speakers[name] == set(getattr(prepared.speaker_split, name))
        assert len(split) == len(split.paths) == len(split.speakers) == len(split.labels)
        assert split.features.shape == (len(split), 1, FEATURES.n_mels, n_frames(FEATURES))
        assert split.features.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert len(split) > 0
    all_paths = sorted(p for split in splits.values() for p in split.paths)
    assert all_paths == sorted(str(p) for p in corpus.glob("*.wav"))
    assert len(all_paths) == N_SPEAKERS * len(EMODB_EMOTIONS) * PER_EMOTION
    assert prepared.bad_files == []
    assert prepared.split_file.exists()


def test_prepare_data_labels_are_sorted_names_indexing_each_clip(prepared: PreparedData) -> None:
    assert prepared.label_names == sorted(EMODB_EMOTIONS.values())
    for split in (prepared.train, prepared.val, prepared.test):
        for path, label in zip(split.paths, split.labels.tolist(), strict=True):
            assert prepared.label_names[label] == _emotion_of(path)


def test_prepare_data_z_scores_with_training_statistics_only(prepared: PreparedData) -> None:
    train = prepared.train.features[:, 0].numpy()
    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 2)), 1.0, atol=1e-3)
    # The raw training log-mels, extracted afresh: the stored statistics are theirs alone.
    raw = extract_features([Path(p) for p in prepared.train.paths], FEATURES).log_mels
    expected = Normalizer.fit(raw)
    np.testing.assert_allclose(prepared.normalizer.mean, expected.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prepared.normalizer.std, expected.std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prepared.normalizer.denormalize(train), raw, atol=1e-4)
    # Statistics over all clips would differ: held-out speakers are not z-scored to 0 and 1.
    everything = np.concatenate(
        [raw] + [getattr(prepared, n).features[:, 0].numpy() for n in ("val", "test")]
    )
    assert not np.allclose(Normalizer.fit(everything).mean, prepared.normalizer.mean, atol=1e-3)
    held_out = np.concatenate([prepared.val.features[:, 0], prepared.test.features[:, 0]])
    assert np.abs(held_out.mean(axis=(0, 2))).max() > 1e-2


def test_prepare_data_fingerprint_is_stable_and_tracks_settings(
    prepared: PreparedData, corpus: Path, cache_dir: Path
) -> None:
    data = DataConfig(path=str(corpus), cache_dir=str(cache_dir))
    again = prepare_data(data, FEATURES)
    assert again.fingerprint == prepared.fingerprint
    assert again.split_file == prepared.split_file
    torch.testing.assert_close(again.train.features, prepared.train.features, rtol=0, atol=0)
    fingerprints = {prepared.fingerprint}
    for change in ({"n_mels": 24}, {"hop_length": 128}, {"log_floor": 1e-4}):
        other = prepare_data(data, dataclasses.replace(FEATURES, **change))
        assert other.fingerprint not in fingerprints, change
        fingerprints.add(other.fingerprint)
    reseeded = prepare_data(dataclasses.replace(data, split_seed=1), FEATURES)
    assert reseeded.speaker_split.train != prepared.speaker_split.train
    assert reseeded.fingerprint not in fingerprints


def test_prepare_data_fingerprint_changes_with_the_audio_content(
    corpus: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "wav"
    shutil.copytree(corpus, copy)
    data = DataConfig(path=str(copy), cache_dir=str(tmp_path / "cache"))
    before = prepare_data(data, FEATURES)
    clip = sorted(copy.glob("*.wav"))[0]
    audio, rate = sf.read(clip, dtype="int16")
    sf.write(clip, np.ascontiguousarray(audio[::-1]), rate, subtype="PCM_16")  # new bytes
    after = prepare_data(data, FEATURES)
    # The features did change (the cache missed and re-read the clip) ...
    name = before.speaker_split.of(Path(clip).stem[:2])
    row = getattr(before, name).paths.index(str(clip))
    if torch.equal(getattr(after, name).features[row], getattr(before, name).features[row]):
        pytest.fail("precondition: the rewritten clip's features should have changed")
    # ... but the fingerprint, said to identify the corpus content, did not.
    assert after.fingerprint != before.fingerprint


def test_shared6_drops_boredom(corpus: Path, cache_dir: Path) -> None:
    data = DataConfig(path=str(corpus), cache_dir=str(cache_dir), label_set="shared6")
    shared = prepare_data(data, FEATURES)
    assert shared.label_names == sorted(SHARED6)
    assert "boredom" not in shared.label_names
    paths = [p for n in ("train", "val", "test") for p in getattr(shared, n).paths]
    assert len(paths) == N_SPEAKERS * 6 * PER_EMOTION
    assert all(_emotion_of(p) != "boredom" for p in paths)
    for split in (shared.train, shared.val, shared.test):
        assert all(
            shared.label_names[i] == _emotion_of(p)
            for p, i in zip(split.paths, split.labels.tolist(), strict=True)
        )
    native = prepare_data(dataclasses.replace(data, label_set="native"), FEATURES)
    assert shared.fingerprint != native.fingerprint
