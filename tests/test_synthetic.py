"""The synthetic corpus: EmoDB names, exact format, determinism, caching, and emotional content."""

from __future__ import annotations

import hashlib
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from emovae.data import synthetic
from emovae.data.corpus import EMODB_EMOTIONS, Item, detect_format, load_corpus
from emovae.data.synthetic import CorpusSpec, ensure_synthetic_corpus, generate_synthetic_corpus

N_SPEAKERS = 6
PER_EMOTION = 6
SR = 22050
DURATION = 2.0
SMALL = CorpusSpec(n_speakers=1, per_emotion=1, duration=0.5)  # 7 clips, one per emotion


def _hashes(wav_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(wav_dir.glob("*"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_corpus(
        tmp_path_factory.mktemp("synthetic"), N_SPEAKERS, PER_EMOTION, DURATION, SR, seed=0
    )


def _clip_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip mean/std of 40 log-mel bands plus pitch stats; and the voiced-frame F0 track."""
    audio, sr = sf.read(path, dtype="float32")
    mel = librosa.power_to_db(
        librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=1024, hop_length=256, n_mels=40)
    )
    f0 = librosa.yin(audio, fmin=60, fmax=500, sr=sr, frame_length=2048, hop_length=512)
    rms = librosa.feature.rms(y=audio, frame_length=2048, hop_length=512)[0]
    voiced = rms > 0.1 * rms.max()
    log_f0 = np.log(f0[voiced])
    pitch = [log_f0.mean(), log_f0.std(), np.percentile(log_f0, 90) - np.percentile(log_f0, 10)]
    features = np.concatenate([mel.mean(axis=1), mel.std(axis=1), pitch, [voiced.mean()]])
    return features, f0[voiced]


@pytest.fixture(scope="module")
def features(corpus: Path) -> tuple[list[Item], np.ndarray, list[np.ndarray]]:
    items = load_corpus(corpus, format="emodb")
    # Small matrix products in many OpenBLAS threads crawl on a busy 2-core machine.
    with threadpool_limits(limits=1):
        rows = [_clip_features(item.path) for item in items]
    return items, np.array([row[0] for row in rows]), [row[1] for row in rows]


def test_names_count_and_format(corpus: Path) -> None:
    assert detect_format(corpus) == "emodb"
    items = load_corpus(corpus, format="auto")
    assert len(items) == N_SPEAKERS * 7 * PER_EMOTION
    assert {item.emotion for item in items} == set(EMODB_EMOTIONS.values())
    assert {item.speaker for item in items} == {f"{i:02d}" for i in range(1, N_SPEAKERS + 1)}
    assert len({item.utterance_id for item in items}) == len(items)
    for item in items:
        info = sf.info(item.path)
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert info.frames == int(DURATION * SR)
        pcm, _ = sf.read(item.path, dtype="int16")
        peak = np.abs(pcm.astype(np.int32)).max()
        assert peak < 32767, f"{item.path.name} clips"
        assert peak > 0.1 * 32767, f"{item.path.name} is (nearly) silent"
        # Speech sits inside the clip: the first and last 20 ms are near silence.
        edge = int(0.02 * SR)
        assert np.abs(pcm[:edge]).max() < 0.05 * peak
        assert np.abs(pcm[-edge:]).max() < 0.05 * peak


def test_other_duration_and_sample_rate(tmp_path: Path) -> None:
    wav_dir = generate_synthetic_corpus(tmp_path, 1, 1, duration=1.3, sample_rate=16000)
    infos = [sf.info(p) for p in sorted(wav_dir.glob("*.wav"))]
    assert len(infos) == 7
    assert all(i.frames == int(1.3 * 16000) and i.samplerate == 16000 for i in infos)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_emotion"):
        generate_synthetic_corpus(tmp_path, per_emotion=0)
    with pytest.raises(ValueError, match="n_speakers"):
        generate_synthetic_corpus(tmp_path, n_speakers=100)


def test_deterministic_and_order_independent(tmp_path: Path) -> None:
    first = _hashes(generate_synthetic_corpus(tmp_path / "a", 2, 2, duration=1.0, seed=3))
    again = _hashes(generate_synthetic_corpus(tmp_path / "b", 2, 2, duration=1.0, seed=3))
    assert first == again
    other_seed = _hashes(generate_synthetic_corpus(tmp_path / "c", 2, 2, duration=1.0, seed=4))
    assert other_seed.keys() == first.keys()
    assert all(other_seed[name] != first[name] for name in first)
    # A file depends on its own name only, not on how many others were generated before it.
    fewer = _hashes(generate_synthetic_corpus(tmp_path / "d", 1, 1, duration=1.0, seed=3))
    assert fewer and all(first[name] == digest for name, digest in fewer.items())


def test_ensure_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav_dir = ensure_synthetic_corpus(tmp_path, SMALL)
    assert wav_dir.parent.parent == tmp_path and wav_dir.parent.name.startswith("synthetic-")
    assert len(load_corpus(wav_dir)) == 7
    mtimes = {p: p.stat().st_mtime_ns for p in wav_dir.iterdir()}

    def must_not_run(*args: object, **kwargs: object) -> Path:
        raise AssertionError("regenerated a cached corpus")

    monkeypatch.setattr(synthetic, "generate_synthetic_corpus", must_not_run)
    assert ensure_synthetic_corpus(tmp_path, SMALL) == wav_dir
    assert {p: p.stat().st_mtime_ns for p in wav_dir.iterdir()} == mtimes
    # Other parameters are another corpus.
    monkeypatch.undo()
    other = ensure_synthetic_corpus(tmp_path, CorpusSpec(1, 1, duration=0.5, seed=1))
    assert other != wav_dir and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [wav_dir.parent.name, other.parent.name]
    )


def test_interrupted_generation_leaves_no_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthetic._synthesize
    calls = []

    def dies_midway(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_synthesize", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_corpus(tmp_path, SMALL)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a leftover temp folder

    monkeypatch.undo()
    assert len(list(ensure_synthetic_corpus(tmp_path, SMALL).glob("*.wav"))) == 7


def test_classifier_tells_emotions_apart_across_speakers(
    features: tuple[list[Item], np.ndarray, list[np.ndarray]],
) -> None:
    items, x, _ = features
    labels = np.array([item.emotion for item in items])
    speakers = np.array([item.speaker for item in items])

    def held_out_accuracy(y: np.ndarray) -> float:
        # Each fold holds out one female (odd id) and one male (even id) speaker.
        scores = []
        for held_out in (("01", "02"), ("03", "04"), ("05", "06")):
            test = np.isin(speakers, held_out)
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            model.fit(x[~test], y[~test])
            scores.append(float(np.mean(model.predict(x[test]) == y[test])))
        return float(np.mean(scores))

    with threadpool_limits(limits=1):
        accuracy = held_out_accuracy(labels)
        shuffled = held_out_accuracy(np.random.default_rng(0).permutation(labels))
    # Measured: 0.74 speaker-independent (folds 0.76, 0.76, 0.70; 0.72 with seeds 1 and 2;
    # chance 1/7 = 0.14) and 0.16 with shuffled labels.
    assert accuracy >= 0.5, accuracy
    assert shuffled < 0.3, shuffled


def test_pitch_is_speech_like_and_follows_emotion(
    features: tuple[list[Item], np.ndarray, list[np.ndarray]],
) -> None:
    items, _, f0_tracks = features
    for speaker in sorted({item.speaker for item in items}):

        def mean_f0(emotion: str, speaker: str = speaker) -> float:
            tracks = [
                t
                for t, item in zip(f0_tracks, items, strict=True)
                if item.speaker == speaker and item.emotion == emotion
            ]
            return float(np.mean([np.median(t) for t in tracks]))

        neutral = mean_f0("neutral")
        assert 80.0 < neutral < 320.0, (speaker, neutral)
        # Anger is raised, sadness lowered: at least 4 semitones apart for every speaker.
        assert mean_f0("anger") > 2 ** (4 / 12) * mean_f0("sadness"), speaker


def test_voiced_frames_are_harmonic_not_noise(corpus: Path) -> None:
    noise = np.random.default_rng(0).normal(0.0, 0.1, int(DURATION * SR))
    noise_flatness = float(np.median(librosa.feature.spectral_flatness(y=noise)))
    for path in sorted(corpus.glob("*N?.wav"))[:6]:
        audio, _ = sf.read(path, dtype="float32")
        rms = librosa.feature.rms(y=audio)[0]
        flatness = librosa.feature.spectral_flatness(y=audio)[0]
        voiced = rms > 0.3 * rms.max()
        # Measured ratio about 1e-4: harmonic spectra, far from flat.
        assert np.median(flatness[voiced]) < 0.01 * noise_flatness, path.name
