"""Speaker-independent train/val/test splits: no speaker appears in two splits."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emovae.data.corpus import CorpusError, Item
from emovae.runtime import atomic_write_bytes


@dataclass
class SpeakerSplit:
    train: list[str]
    val: list[str]
    test: list[str]
    seed: int

    def of(self, speaker: str) -> str:
        for name in ("train", "val", "test"):
            if speaker in getattr(self, name):
                return name
        raise KeyError(speaker)


def split_speakers(
    items: list[Item], val_fraction: float, test_fraction: float, seed: int
) -> SpeakerSplit:
    """Deterministic from `seed`: the sorted speakers are shuffled, then cut test | val | train."""
    speakers = sorted({it.speaker for it in items})
    if len(speakers) < 3:
        raise CorpusError(
            f"a speaker-independent split needs at least 3 speakers, the corpus has {len(speakers)}"
        )
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise CorpusError(f"{name}: expected a fraction in (0, 1), got {value}")
    order = [speakers[i] for i in np.random.default_rng(seed).permutation(len(speakers))]
    n_test = max(1, round(test_fraction * len(speakers)))
    n_val = max(1, round(val_fraction * len(speakers)))
    if n_test + n_val >= len(speakers):
        raise CorpusError(
            f"val_fraction + test_fraction leave no training speaker among {len(speakers)}"
        )
    return SpeakerSplit(
        train=sorted(order[n_test + n_val :]),
        val=sorted(order[n_test : n_test + n_val]),
        test=sorted(order[:n_test]),
        seed=seed,
    )


def save_split(split: SpeakerSplit, items: list[Item], directory: Path) -> Path:
    """Write the split (speakers and files per split) as JSON; its name hashes the content."""
    record = asdict(split) | {
        "files": {
            name: [str(it.path) for it in items if it.speaker in getattr(split, name)]
            for name in ("train", "val", "test")
        }
    }
    payload = json.dumps(record, indent=1).encode()
    path = Path(directory) / f"split-{hashlib.sha256(payload).hexdigest()[:12]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        atomic_write_bytes(path, payload)
    return path
