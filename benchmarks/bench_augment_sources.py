"""Where the eGeMAPS judge's augmentation loss comes from: augmentation sets built from one
trained model, each added to the real training clips, scored by both judges.

Sets (written as WAVs and read back, as the finaliser's exports are; 20 per emotion):

- `samples`: the model's prior samples, the finaliser's export (`bench_quality.py run`'s
  work folder);
- `copy`: HiFi-GAN copy synthesis of real training clips, no model: the vocoder alone;
- `recon`: the model's reconstructions of real training clips (label withheld): model and
  vocoder, no prior;
- `conv`: real training clips converted to another emotion (the prior's SDEdit at the
  finaliser's strength), the emotion asked for as label.

`copy` and `recon` repeat utterances the judges already train on, so they add no emotion
information: a loss there is the audio's domain (the vocoder's or the model's traces in the
features), not its emotion. For each set the record holds both judges' UAR gains over judge
seeds and the eGeMAPS functionals that move most against the real training clips
(standardised mean difference). Test data is the real test speakers' WAVs throughout.

    python benchmarks/bench_augment_sources.py --name aug_domain --seed 0 \\
        --set data.path=../shared/data/emodb/wav --judge-seeds 0 1 2 3 4

Record: benchmarks/results/quality/<name>/augment_sources_seed<N>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emovae.audio.export import finish_set, read_manifest, start_set, write_clips
from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.checkpoint import LoadedModel, load_model
from emovae.dataset import prepare_data
from emovae.emotion import convert_emotion
from emovae.evaluate import honest_label_mode, reconstruct
from emovae.evaluation.exported_audio import (
    AudioJudges,
    WavSet,
    augmentation_gain,
    prepare_audio_judges,
    wav_set,
)
from emovae.generate import vocode
from emovae.runtime import select_device
from sweeps.finaliser import final_judge
from sweeps.space import load_space

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
PER_EMOTION = 20
TOP_FEATURES = 8


def balanced_rows(labels: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Up to PER_EMOTION row indices per class, drawn without replacement."""
    rows = [
        rng.choice(np.flatnonzero(labels == c), min(PER_EMOTION, int((labels == c).sum())), False)
        for c in range(n_classes)
    ]
    return np.sort(np.concatenate(rows))


def conversion_pairs(
    labels: np.ndarray, n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """PER_EMOTION (row, target) pairs per target emotion, each row a clip of another emotion."""
    rows, targets = [], []
    for target in range(n_classes):
        others = np.flatnonzero(labels != target)
        rows.append(rng.choice(others, PER_EMOTION, replace=False))
        targets.append(np.full(PER_EMOTION, target))
    return np.concatenate(rows), np.concatenate(targets)


def write_set(
    judges: AudioJudges,
    name: str,
    decoded: torch.Tensor,
    labels: np.ndarray,
    loaded: LoadedModel,
    synthesize: Vocoder,
    out_dir: Path,
) -> WavSet:
    """Decoded z-scored log-mels -> WAVs under `out_dir` -> read back by both judges."""
    out_dir = start_set(out_dir)
    names = [f"{name}_{i:04d}.wav" for i in range(len(decoded))]
    for start in range(0, len(names), 25):
        audio = vocode(decoded[start : start + 25], loaded.normalizer, synthesize)
        write_clips(out_dir, names[start : start + 25], audio, synthesize.features.sample_rate)
    finish_set(
        out_dir, ("file", "emotion"), [[n, int(y)] for n, y in zip(names, labels, strict=True)]
    )
    set_name = {"copy": "recon", "recon": "recon", "conv": "conv"}[name]
    return wav_set(judges, set_name, [out_dir / n for n in names], labels)


def feature_shift(
    judges: AudioJudges, features: np.ndarray, names: list[str]
) -> list[dict[str, float]]:
    """The eGeMAPS functionals whose set mean lies furthest from the training clips', in
    the training clips' standard deviations."""
    shift = _shift_sd(judges, features)
    order = np.argsort(-np.abs(shift))[:TOP_FEATURES]
    return [{"feature": names[i], "shift_sd": round(float(shift[i]), 3)} for i in order]


def named_shift(
    judges: AudioJudges, features: np.ndarray, names: list[str], chosen: Sequence[str]
) -> dict[str, float]:
    """`feature_shift` of the `chosen` functionals, whether or not they moved most."""
    shift = _shift_sd(judges, features)
    return {name: round(float(shift[names.index(name)]), 3) for name in chosen}


def _shift_sd(judges: AudioJudges, features: np.ndarray) -> np.ndarray:
    train = judges.train_smile_features
    return (features.mean(0) - train.mean(0)) / train.std(0).clip(1e-9)


def egemaps_names() -> list[str]:
    """The names of the 88 eGeMAPS functionals, in the order `egemaps` returns them."""
    import opensmile

    return list(
        opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02,
            feature_level=opensmile.FeatureLevel.Functionals,
        ).feature_names
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="emodb_cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", required=True, help="a bench_quality.py run's arm")
    parser.add_argument("--seed", type=int, default=0, help="the model's training seed")
    parser.add_argument("--work", default="runs/bench_quality")
    parser.add_argument("--judge-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sets", nargs="+", default=["samples", "copy", "recon", "conv"])
    parser.add_argument("--no-cnn", action="store_true", help="the eGeMAPS judge only")
    args = parser.parse_args()

    spec = load_space(args.space, args.overrides)
    settings = spec.finalise
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    work = Path(args.work) / args.name / f"seed{args.seed}"
    record = json.loads((RESULTS / args.name / f"seed{args.seed}.json").read_text())
    loaded = load_model(Path(record["checkpoint"]), select_device("cpu"))
    synthesize = load_vocoder(settings.vocoder, loaded.features, "cpu", seed=args.seed)
    cache_dir = spec.experiment.data.cache_dir
    cnn = None if args.no_cnn else final_judge(data, spec.judge, cache_dir, "cpu")
    judges = prepare_audio_judges(data, cnn, spec.experiment.data.cache_dir)
    real = wav_set(
        judges, "real", data.test.paths, data.test.labels.numpy(), spec.experiment.data.cache_dir
    )
    feature_names = egemaps_names()
    rng = np.random.default_rng(args.seed)
    train_labels = data.train.labels.numpy()
    n_classes = len(data.label_names)
    sets: dict[str, WavSet] = {}
    started = time.perf_counter()
    for name in args.sets:
        if name == "samples":
            rows = read_manifest(work / "samples" / "manifest.csv")
            sets[name] = wav_set(
                judges,
                "gen",
                [work / "samples" / r["file"] for r in rows],
                [data.label_names.index(r["emotion"]) for r in rows],
            )
            continue
        if name == "conv":
            chosen, labels = conversion_pairs(train_labels, n_classes, rng)
            decoded = convert_emotion(
                loaded.model,
                data.train.features[chosen],
                data.train.labels[chosen],
                torch.from_numpy(labels),
                args.seed,
                settings.conversion_strength,
            )
        else:
            chosen = balanced_rows(train_labels, n_classes, rng)
            labels = train_labels[chosen]
            split = type(data.train)(
                data.train.features[chosen],
                data.train.labels[chosen],
                [data.train.speakers[i] for i in chosen],
                [data.train.paths[i] for i in chosen],
            )
            if name == "copy":
                decoded = split.features
            else:
                mode = honest_label_mode(loaded.model)
                decoded, _ = reconstruct(loaded.model, split, label_mode=mode)
        sets[name] = write_set(
            judges, name, decoded, labels, loaded, synthesize, work / f"aug_{name}"
        )
        print(f"{name}: {len(sets[name])} clips written and read back", flush=True)

    results = {}
    for name, clips in sets.items():
        draws = [
            {"judge_seed": s} | augmentation_gain(judges, data, clips, real, seed=s)
            for s in (args.judge_seeds if cnn is not None else args.judge_seeds[:1])
        ]
        results[name] = {
            "n_clips": len(clips),
            "draws": draws,
            "feature_shift": feature_shift(judges, clips.smile_features, feature_names),
        }
        gains = {k: [round(d[k], 4) for d in draws] for k in draws[0] if k.endswith("uar_gain")}
        print(name, gains, results[name]["feature_shift"][:4], flush=True)
    out = RESULTS / args.name / f"augment_sources_seed{args.seed}.json"
    out.write_text(
        json.dumps(
            {
                "model": record["checkpoint"],
                "sets": results,
                "seconds": time.perf_counter() - started,
                "command": " ".join(sys.argv),
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
