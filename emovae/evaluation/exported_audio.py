"""What a user gets, judged: sets of exported WAVs read back from disk and scored by two
independent emotion judges and a no-reference quality model, beside the real test clips.

For each set (`real` test clips, `recon`structions, `gen`erated samples, `conv`ersions; a
`copy` set, vocoded copies of real training clips, is only the augmentation test's control):

- `wav_<set>_cnn_acc` / `_uar`: the project's CNN judge (emovae.judge) on log-mels extracted
  again from the WAVs (the data's feature settings, z-scored with the training statistics);
- `wav_<set>_smile_acc` / `_uar`: the eGeMAPS judge (emovae.evaluation.smile_judge), a
  classical model that never saw a spectrogram: what blur augmentation taught the CNN judge to
  forgive, it does not;
- `wav_<set>_dnsmos` (overall), `_dnsmos_sig`, `_dnsmos_bak`: DNSMOS P.835, on every clip or
  on `dnsmos_clips` of them spread evenly over the set (`_dnsmos_n` says how many);
  `wav_<set>_dnsmos_<emotion>`: the overall score of the scored clips of each emotion (on
  EmoDB the samples' gap to the target lies in some emotions, not all);
- `wav_<set>_fd_cnn` / `_fd_smile`: Frechet distance to the real test clips in each judge's
  space (compare only between sets of equal size, see `frechet_distance`);
- `wav_recon_stoi`: STOI of each reconstruction against its original.

Both judges learn from the real training speakers only, and `real`'s scores are the ceiling.
Without a CNN judge (a sweep with no emotion metrics) its keys are left out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone

from emovae.config import FeatureConfig
from emovae.dataset import PreparedData
from emovae.emotion import frechet_distance
from emovae.evaluation.audio_quality import DnsMos, stoi
from emovae.evaluation.smile_judge import (
    SmileJudge,
    egemaps,
    egemaps_cache,
    egemaps_of_files,
    judge_frechet_distance,
    train_smile_judge,
)
from emovae.features import Normalizer, load_audio, log_mel
from emovae.judge import (
    JudgeOutputs,
    TrainedJudge,
    accuracy_and_uar,
    judge_outputs,
    train_judge,
)

SETS = ("real", "recon", "gen", "conv", "copy")


@dataclass
class AudioJudges:
    """The judges of exported audio and what they need to read a WAV."""

    cnn: TrainedJudge | None
    smile: SmileJudge
    dnsmos: DnsMos
    features: FeatureConfig
    normalizer: Normalizer
    label_names: list[str]
    train_smile_features: np.ndarray  # (N, 88) eGeMAPS of the real training clips
    # DNSMOS costs about 0.5 s per 9 s window on a CPU core: at most this many clips per set
    # are scored, spread evenly over it (sets are written emotion by emotion); 0 = all.
    dnsmos_clips: int = 0


def prepare_audio_judges(
    data: PreparedData,
    cnn: TrainedJudge | None,
    cache_dir: str | Path,
    seed: int = 0,
    workers: int = 1,
    dnsmos_clips: int = 0,
) -> AudioJudges:
    """The CNN judge as given, and an eGeMAPS judge trained on `data.train`'s WAVs (their
    eGeMAPS are cached under `cache_dir`/egemaps, keyed by content); DNSMOS runs `workers`
    windows at once."""
    train_features = egemaps_of_files(data.train.paths, egemaps_cache(cache_dir))
    smile = train_smile_judge(
        train_features,
        data.train.labels.numpy(),
        data.train.speakers,
        data.label_names,
        seed=seed,
    )
    if dnsmos_clips < 0:
        raise ValueError(f"dnsmos_clips: expected 0 (all) or a number of clips, got {dnsmos_clips}")
    return AudioJudges(
        cnn,
        smile,
        DnsMos(workers=workers),
        data.features,
        data.normalizer,
        data.label_names,
        train_features,
        dnsmos_clips,
    )


@dataclass
class WavSet:
    """Clips (mono float at the features' rate, cropped or padded to their duration), the
    emotion each should carry (true, or asked for; None for an unconditional model's samples),
    and both judges' view of them."""

    name: str
    clips: list[np.ndarray]
    labels: np.ndarray | None
    smile_features: np.ndarray  # (N, 88) eGeMAPS
    cnn: JudgeOutputs | None  # None without a CNN judge
    log_mels: torch.Tensor  # (N, 1, n_mels, frames) z-scored, what the CNN judge read

    def __len__(self) -> int:
        return len(self.clips)


def read_clips(paths: Sequence[str | Path], features: FeatureConfig) -> list[np.ndarray]:
    """WAVs as the judges hear them: mono, the features' rate, the features' duration."""
    return [load_audio(Path(p), features) for p in paths]


def judge_input(judges: AudioJudges, clips: Sequence[np.ndarray]) -> torch.Tensor:
    """Log-mels extracted from `clips` and z-scored like the CNN judge's training data."""
    log_mels = np.stack([log_mel(c, judges.features) for c in clips])
    return torch.from_numpy(judges.normalizer.normalize(log_mels)).unsqueeze(1)


def wav_set(
    judges: AudioJudges,
    name: str,
    paths: Sequence[str | Path],
    labels: Sequence[int] | np.ndarray | None,
    cache_dir: str | Path | None = None,
) -> WavSet:
    """Read the WAVs at `paths` and let both judges look at them; `cache_dir` caches their
    eGeMAPS by content (worth it for real clips, which every evaluation reads again)."""
    _check_set(name, len(paths), labels)
    clips = read_clips(paths, judges.features)
    cached = None
    if cache_dir is not None:
        cached = egemaps_of_files(paths, egemaps_cache(cache_dir))
    return clip_set(judges, name, clips, labels, cached)


def clip_set(
    judges: AudioJudges,
    name: str,
    clips: list[np.ndarray],
    labels: Sequence[int] | np.ndarray | None,
    smile_features: np.ndarray | None = None,
) -> WavSet:
    """Clips already in memory, as `read_clips` gives them, and both judges' view of them;
    their eGeMAPS are extracted unless `smile_features` holds them."""
    _check_set(name, len(clips), labels)
    if smile_features is None:
        smile_features = egemaps(clips, judges.features.sample_rate)
    x = judge_input(judges, clips)
    truth = None if labels is None else np.asarray(labels, np.int64)
    seen = judge_outputs(judges.cnn, x) if judges.cnn is not None else None
    return WavSet(name, clips, truth, smile_features, seen, x)


def _check_set(name: str, n_clips: int, labels: Sequence[int] | np.ndarray | None) -> None:
    if name not in SETS:
        raise ValueError(f"name: expected one of {', '.join(SETS)}, got {name!r}")
    if not n_clips or (labels is not None and n_clips != len(labels)):
        raise ValueError(f"{name}: expected at least one WAV and one label per WAV")


def dnsmos_subset(n: int, at_most: int) -> np.ndarray:
    """Indices of the clips DNSMOS scores: all `n`, or `at_most` spread evenly over them."""
    if at_most == 0 or at_most >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(np.int64))


def score_set(
    judges: AudioJudges,
    clips: WavSet,
    real: WavSet | None = None,
    references: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """`wav_<set>_*` metrics of one set (see the module docstring); Frechet distances when
    `real` is given, STOI when `references` (the originals, in order) are."""
    prefix = f"wav_{clips.name}"
    metrics = {}
    if clips.labels is not None:
        smile_pred = judges.smile.predict(clips.smile_features)
        smile_acc, smile_uar = accuracy_and_uar(smile_pred, clips.labels)
        metrics |= {f"{prefix}_smile_acc": smile_acc, f"{prefix}_smile_uar": smile_uar}
        if clips.cnn is not None:
            cnn_acc, cnn_uar = accuracy_and_uar(clips.cnn.pred, clips.labels)
            metrics |= {f"{prefix}_cnn_acc": cnn_acc, f"{prefix}_cnn_uar": cnn_uar}
    scored = dnsmos_subset(len(clips), judges.dnsmos_clips)
    quality = judges.dnsmos.score([clips.clips[i] for i in scored], judges.features.sample_rate)
    metrics |= {
        f"{prefix}_dnsmos_n": float(len(scored)),
        f"{prefix}_dnsmos": float(np.mean(quality["ovrl"])),
        f"{prefix}_dnsmos_sig": float(np.mean(quality["sig"])),
        f"{prefix}_dnsmos_bak": float(np.mean(quality["bak"])),
    }
    if clips.labels is not None:
        metrics |= _dnsmos_by_emotion(
            prefix, np.asarray(quality["ovrl"]), clips.labels[scored], judges.label_names
        )
    if real is not None and clips is not real:
        if clips.cnn is not None and real.cnn is not None:
            metrics[f"{prefix}_fd_cnn"] = frechet_distance(clips.cnn.emb, real.cnn.emb)
        metrics[f"{prefix}_fd_smile"] = judge_frechet_distance(
            judges.smile, clips.smile_features, real.smile_features
        )
    if references is not None:
        values = stoi(references, clips.clips, judges.features.sample_rate)
        metrics[f"{prefix}_stoi"] = (
            float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        )
    return metrics


def _dnsmos_by_emotion(
    prefix: str, overall: np.ndarray, labels: np.ndarray, label_names: list[str]
) -> dict[str, float]:
    """`<prefix>_dnsmos_<emotion>`: mean overall score of each emotion's scored clips."""
    return {
        f"{prefix}_dnsmos_{name}": float(overall[labels == index].mean())
        for index, name in enumerate(label_names)
        if (labels == index).any()
    }


def augmentation_control_rows(
    train_labels: np.ndarray, generated_labels: np.ndarray, seed: int
) -> np.ndarray:
    """Rows of the real training clips for the augmentation test's control set: per emotion as
    many as the generated set holds (all of that emotion's clips where it has fewer), drawn
    without replacement from `seed`, in ascending order."""
    rng = np.random.default_rng(seed)
    rows = []
    for emotion in np.unique(generated_labels):
        wanted = int((generated_labels == emotion).sum())
        candidates = np.flatnonzero(train_labels == emotion)
        rows.append(rng.choice(candidates, min(wanted, len(candidates)), replace=False))
    return np.sort(np.concatenate(rows)) if rows else np.empty(0, np.int64)


def augmentation_gain(
    judges: AudioJudges,
    data: PreparedData,
    generated: WavSet,
    real_test: WavSet,
    seed: int = 0,
    control: WavSet | None = None,
) -> dict[str, float]:
    """Speech emotion recognition trained on the real training speakers plus `generated`
    (exported WAVs, features re-extracted) against the real training speakers alone, tested
    on the real test speakers only (never on generated audio), through both judges.

    CNN: a judge trained with `generated` added, against the sweep's judge (same settings,
    same seed). eGeMAPS: the classifier leave-one-speaker-out chose on real clips, refitted
    on both training sets, so only the data differs. Keys `wav_aug_<judge>_uar_real_only`,
    `_real_plus_generated` and `_gain`, the same for `_acc`. One draw: on ~100 test clips
    judges that differ only in their seed differ by several points, so compare over seeds
    (benchmarks/bench_quality.py) before reading a gain into one number.

    `control`: vocoded copies of real training clips (`augmentation_control_rows`), added
    instead of `generated`. On EmoDB such copies, which carry no utterance or emotion the
    judges lack, lift the CNN judge by most of what the samples do (benchmarks/RESULTS_quality.md,
    "What the augmentation gain measures"): `_real_plus_control` and `_uar_gain_over_control`
    (generated against control) say what the samples add beyond more, vocoded, data.
    """
    if generated.labels is None:
        raise ValueError("augmentation needs generated clips with the emotion asked for")
    extras = {"generated": generated} | ({"control": control} if control is not None else {})
    scores = {"smile": _smile_scores(judges, data, extras, real_test, seed)}
    if judges.cnn is not None:
        scores["cnn"] = _cnn_scores(judges, data, extras, seed)
    metrics = {}
    for judge, by_set in scores.items():
        metrics |= _gain(judge, *by_set["real_only"], *by_set["generated"])
        if control is not None:
            prefix = f"wav_aug_{judge}"
            acc, uar = by_set["control"]
            metrics |= {
                f"{prefix}_acc_real_plus_control": acc,
                f"{prefix}_uar_real_plus_control": uar,
                f"{prefix}_uar_gain_over_control": by_set["generated"][1] - uar,
            }
    return metrics


def _smile_scores(
    judges: AudioJudges,
    data: PreparedData,
    extras: dict[str, WavSet],
    real_test: WavSet,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """(accuracy, UAR) on `real_test` of the eGeMAPS classifier refitted on the training
    clips alone ("real_only") and with each of `extras` added."""
    train_features = judges.train_smile_features
    train_labels = data.train.labels.numpy()
    scores = {}
    for name, extra in {"real_only": None, **extras}.items():
        model = clone(judges.smile.pipeline).set_params(classify__random_state=seed)
        if extra is None:
            model.fit(train_features, train_labels)
        else:
            model.fit(
                np.concatenate([train_features, extra.smile_features]),
                np.concatenate([train_labels, extra.labels]),
            )
        scores[name] = accuracy_and_uar(model.predict(real_test.smile_features), real_test.labels)
    return scores


def _cnn_scores(
    judges: AudioJudges, data: PreparedData, extras: dict[str, WavSet], seed: int
) -> dict[str, tuple[float, float]]:
    """(accuracy, UAR) on the test split of a CNN judge with the sweep judge's settings and
    `seed`, trained on the training clips alone (the sweep's judge where its seed is `seed`)
    and with each of `extras` added."""
    config = dataclasses.replace(judges.cnn.config, seed=seed)
    baseline = judges.cnn if judges.cnn.config.seed == seed else train_judge(data, config)
    scores = {"real_only": (baseline.test_accuracy, baseline.test_uar)}
    for name, extra in extras.items():
        trained = train_judge(
            data, config, extra_train=(extra.log_mels, torch.from_numpy(extra.labels))
        )
        scores[name] = (trained.test_accuracy, trained.test_uar)
    return scores


def _gain(judge: str, acc: float, uar: float, acc_aug: float, uar_aug: float) -> dict[str, float]:
    prefix = f"wav_aug_{judge}"
    return {
        f"{prefix}_acc_real_only": acc,
        f"{prefix}_acc_real_plus_generated": acc_aug,
        f"{prefix}_acc_gain": acc_aug - acc,
        f"{prefix}_uar_real_only": uar,
        f"{prefix}_uar_real_plus_generated": uar_aug,
        f"{prefix}_uar_gain": uar_aug - uar,
    }
