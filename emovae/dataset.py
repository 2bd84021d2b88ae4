"""Corpus + features + split -> normalised tensors ready for training (`PreparedData`).

The whole corpus fits in memory (535 EmoDB clips at 3 s are about 70 MB), so batches are index
slices of one tensor: no DataLoader workers, no per-batch Python collation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from emovae.config import DataConfig, FeatureConfig
from emovae.data.corpus import Item, load_corpus
from emovae.data.labels import label_names as encode_labels
from emovae.data.splits import SpeakerSplit, save_split, split_speakers
from emovae.features import Normalizer, extract_features
from emovae.runtime import content_key


@dataclass
class Split:
    features: torch.Tensor  # (N, 1, n_mels, frames) float32, z-scored
    labels: torch.Tensor  # (N,) int64 indices into PreparedData.label_names
    speakers: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return self.features.shape[0]


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    label_names: list[str]
    normalizer: Normalizer
    features: FeatureConfig
    speaker_split: SpeakerSplit
    corpus_path: str
    fingerprint: str  # identifies corpus content + feature settings + split (logged to MLflow)
    split_file: Path
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def resolve_corpus(data: DataConfig, features: FeatureConfig, progress: bool = False) -> Path:
    """The corpus folder; 'synthetic' generates (once) the embedded synthetic corpus."""
    if data.path != "synthetic":
        return Path(data.path)
    from emovae.data.synthetic import CorpusSpec, ensure_synthetic_corpus

    spec = CorpusSpec(
        n_speakers=data.synthetic_speakers,
        per_emotion=data.synthetic_per_emotion,
        duration=features.duration,
        sample_rate=features.sample_rate,
        seed=data.split_seed,
    )
    return ensure_synthetic_corpus(Path(data.cache_dir), spec, progress=progress)


def _split_tensors(
    items: list[Item], log_mels: np.ndarray, normalizer: Normalizer, label_index: dict[str, int]
) -> Split:
    normalised = normalizer.normalize(log_mels) if len(items) else log_mels
    return Split(
        features=torch.from_numpy(normalised).unsqueeze(1),
        labels=torch.tensor([label_index[it.emotion] for it in items], dtype=torch.int64),
        speakers=[it.speaker for it in items],
        paths=[str(it.path) for it in items],
    )


def prepare_data(data: DataConfig, features: FeatureConfig, progress: bool = False) -> PreparedData:
    """Load the corpus, extract (or read cached) log-mels, split by speaker and z-score."""
    corpus = resolve_corpus(data, features, progress)
    items = load_corpus(corpus, data.format, data.label_set)
    cache_dir = Path(data.cache_dir) / "features"
    extracted = extract_features(
        [it.path for it in items], features, cache_dir, data.skip_bad_files, progress
    )
    by_path = {it.path: it for it in items}
    kept = [by_path[p] for p in extracted.paths]
    speaker_split = split_speakers(kept, data.val_fraction, data.test_fraction, data.split_seed)
    split_file = save_split(speaker_split, kept, cache_dir)
    names = encode_labels([it.emotion for it in kept])
    label_index = {name: i for i, name in enumerate(names)}

    membership = np.array([speaker_split.of(it.speaker) for it in kept])
    parts = {}
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(membership == name)
        parts[name] = ([kept[i] for i in rows], extracted.log_mels[rows])
    normalizer = Normalizer.fit(parts["train"][1])
    splits = {
        name: _split_tensors(part_items, part_mels, normalizer, label_index)
        for name, (part_items, part_mels) in parts.items()
    }
    # The feature cache key covers every file's content and every feature parameter.
    fingerprint = content_key([extracted.key, split_file.name, data.label_set], 16)
    return PreparedData(
        **splits,
        label_names=names,
        normalizer=normalizer,
        features=features,
        speaker_split=speaker_split,
        corpus_path=str(corpus),
        fingerprint=fingerprint,
        split_file=split_file,
        bad_files=extracted.bad_files,
    )
