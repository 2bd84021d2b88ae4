"""The independent judges on real EmoDB: the eGeMAPS emotion judge and DNSMOS, with their costs.

On the shared six emotions (454 clips):

- eGeMAPS judge: trained on the training speakers of `split_speakers(items, 0.15, 0.2, seed)`
  and scored on its test speakers; then every leave-one-speaker-out fold (trained on 9
  speakers, scored on the 10th): accuracy and UAR per fold, mean and spread, pooled, and which
  classifier the inner LOSO picked;
- the Frechet distance between two disjoint random sets of N real clips in the judge's space, to
  show its small-sample bias;
- DNSMOS (ovrl, sig, bak, p808) of all real clips, reported for the test speakers (the ceiling
  for generated audio), per speaker and over all;
- time per clip of eGeMAPS extraction (no cache) and of DNSMOS, with speechmos's own `run` and
  DnsMos thread/batch settings compared on a subset.

Writes benchmarks/RESULTS_judges.md and a JSON record (--json).

    python benchmarks/bench_judges.py [--emodb ../shared/data/emodb/wav] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import opensmile
import sklearn
import soundfile as sf

from emovae.data.corpus import load_corpus
from emovae.data.splits import split_speakers
from emovae.evaluation.audio_quality import (
    DNSMOS_KEYS,
    DNSMOS_RATE,
    DnsMos,
    resample,
)
from emovae.evaluation.smile_judge import (
    SmileJudge,
    egemaps_of_files,
    judge_frechet_distance,
    judge_scores,
    train_smile_judge,
)

FD_SIZES = (10, 25, 50, 100, 200)
# (threads, windows per session call) compared on the timing subset; the first is the default.
DNSMOS_SETTINGS = ((1, 1), (1, 8), (2, 1))


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def _loso(
    features: np.ndarray,
    labels: np.ndarray,
    speakers: np.ndarray,
    names: list[str],
    seed: int,
) -> dict[str, Any]:
    """Every leave-one-speaker-out fold of the whole corpus, and the pooled predictions."""
    folds, pooled_true, pooled_pred = [], [], []
    for held_out in sorted(set(speakers)):
        train, test = speakers != held_out, speakers == held_out
        started = time.perf_counter()
        judge = train_smile_judge(features[train], labels[train], speakers[train], names, seed)
        seconds = time.perf_counter() - started
        scores = judge_scores(judge, features[test], labels[test])
        folds.append(
            {
                "speaker": held_out,
                "n": scores["n"],
                "accuracy": scores["accuracy"],
                "uar": scores["uar"],
                "classifier": f"{judge.classifier} C={judge.params['C']:g}",
                "train_seconds": seconds,
            }
        )
        pooled_true.append(labels[test])
        pooled_pred.append(judge.predict(features[test]))
    truth, predicted = np.concatenate(pooled_true), np.concatenate(pooled_pred)
    recalls = [(predicted[truth == c] == c).mean() for c in np.unique(truth)]
    return {
        "folds": folds,
        "accuracy": _spread([f["accuracy"] for f in folds]),
        "uar": _spread([f["uar"] for f in folds]),
        "pooled_accuracy": float((truth == predicted).mean()),
        "pooled_uar": float(np.mean(recalls)),
        "picked": dict(Counter(f["classifier"] for f in folds)),
        "train_seconds": statistics.fmean(f["train_seconds"] for f in folds),
    }


def _fd_bias(judge: SmileJudge, features: np.ndarray, seed: int) -> dict[int, float]:
    """FD between two disjoint random sets of n real clips (all speakers): 0 in the limit."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in FD_SIZES:
        order = rng.permutation(len(features))
        out[n] = judge_frechet_distance(judge, features[order[:n]], features[order[n : 2 * n]])
    return out


def _time_dnsmos(clips16: list[np.ndarray], n_timing: int) -> dict[str, float]:
    """Seconds per clip of speechmos's `run` and of DnsMos settings on the first clips."""
    from speechmos import dnsmos as speechmos_dnsmos

    subset = clips16[:n_timing]
    speechmos_dnsmos.run(subset[0], DNSMOS_RATE)  # loads its sessions: not timed
    started = time.perf_counter()
    for clip in subset:
        speechmos_dnsmos.run(clip, DNSMOS_RATE)
    timings = {"speechmos.run": (time.perf_counter() - started) / len(subset)}
    for threads, batch in DNSMOS_SETTINGS:
        scorer = DnsMos(num_threads=threads, batch_windows=batch)
        scorer.score_16k(subset[:1])  # warm-up
        started = time.perf_counter()
        scorer.score_16k(subset)
        timings[f"DnsMos threads={threads} batch={batch}"] = (time.perf_counter() - started) / len(
            subset
        )
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_emodb = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb" / "wav"
    parser.add_argument("--emodb", default=str(default_emodb), help="EmoDB WAV folder")
    parser.add_argument("--seed", type=int, default=0, help="speaker split and classifier seed")
    parser.add_argument("--n-timing", type=int, default=12, help="clips for the DNSMOS timings")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_judges.md")))
    parser.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "bench_judges.json"))
    args = parser.parse_args()
    if not Path(args.emodb).is_dir():
        print(f"--emodb: {args.emodb} is not a folder (expected the EmoDB wav/ folder)")
        return 2

    load_before = os.getloadavg()
    items = load_corpus(args.emodb, "auto", "shared6")
    names = sorted({it.emotion for it in items})
    labels = np.array([names.index(it.emotion) for it in items])
    speakers = np.array([it.speaker for it in items])
    split = split_speakers(items, 0.15, 0.2, args.seed)
    print(f"{len(items)} clips, emotions {names}, split {split}", flush=True)

    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the extraction is timed
        started = time.perf_counter()
        features = egemaps_of_files([it.path for it in items], cache)
        egemaps_seconds = (time.perf_counter() - started) / len(items)
    print(f"eGeMAPS: {egemaps_seconds * 1000:.1f} ms per clip", flush=True)

    train, test = np.isin(speakers, split.train), np.isin(speakers, split.test)
    started = time.perf_counter()
    judge = train_smile_judge(features[train], labels[train], speakers[train], names, args.seed)
    train_seconds = time.perf_counter() - started
    split_scores = judge_scores(judge, features[test], labels[test])
    print(
        f"split {args.seed}: {judge.classifier} {judge.params}, test acc "
        f"{split_scores['accuracy']:.3f} UAR {split_scores['uar']:.3f}",
        flush=True,
    )
    fd_bias = _fd_bias(judge, features, args.seed)
    fd_train_test = judge_frechet_distance(judge, features[train], features[test])
    loso = _loso(features, labels, speakers, names, args.seed)
    print(f"LOSO: acc {loso['accuracy']['mean']:.3f} UAR {loso['uar']['mean']:.3f}", flush=True)

    clips16 = []
    for it in items:
        audio, rate = sf.read(it.path, dtype="float32")
        clips16.append(np.clip(resample(audio, rate, DNSMOS_RATE), -1.0, 1.0))
    timings = _time_dnsmos([clips16[i] for i in np.flatnonzero(test)], args.n_timing)
    scorer = DnsMos()
    started = time.perf_counter()
    mos = scorer.score_16k(clips16)
    dnsmos_seconds = (time.perf_counter() - started) / len(clips16)
    print(f"DNSMOS: {dnsmos_seconds:.2f} s per clip", flush=True)
    test_mos = {key: mos[key][test] for key in DNSMOS_KEYS}
    mos_by_emotion = {
        name: float(test_mos["ovrl"][labels[test] == c].mean()) for c, name in enumerate(names)
    }
    mos_by_speaker = {s: float(mos["ovrl"][speakers == s].mean()) for s in sorted(set(speakers))}
    per_clip = {it.path.name: float(v) for it, v in zip(items, mos["ovrl"], strict=True)}
    lowest = sorted(per_clip.items(), key=lambda kv: kv[1])[:5]
    load_after = os.getloadavg()

    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_judges.py", *sys.argv[1:]]),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, no GPU",
        "versions": {
            "opensmile": opensmile.__version__,
            "onnxruntime": onnxruntime.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "load_before": load_before,
        "load_after": load_after,
        "n_clips": len(items),
        "label_names": names,
        "split": {"seed": args.seed, "train": split.train, "val": split.val, "test": split.test},
        "egemaps_seconds_per_clip": egemaps_seconds,
        "split_judge": {
            "classifier": judge.classifier,
            "params": judge.params,
            "cv_accuracy": judge.cv_accuracy,
            "cv_uar": judge.cv_uar,
            "candidates": judge.candidates,
            "train_seconds": train_seconds,
            "test_accuracy": split_scores["accuracy"],
            "test_uar": split_scores["uar"],
            "test_n": split_scores["n"],
            "test_confusion": split_scores["confusion"].tolist(),
            "fd_train_vs_test": fd_train_test,
        },
        "fd_random_halves": fd_bias,
        "loso": loso,
        "dnsmos_test_speakers": {
            "n": int(test.sum()),
            **{key: _spread(test_mos[key].tolist()) for key in DNSMOS_KEYS},
            "ovrl_by_emotion": mos_by_emotion,
        },
        "dnsmos_all_clips": {
            "n": len(clips16),
            **{key: _spread(mos[key].tolist()) for key in DNSMOS_KEYS},
            "ovrl_by_speaker": mos_by_speaker,
            "ovrl_lowest": lowest,
            "ovrl_per_clip": per_clip,
        },
        "dnsmos_seconds_per_clip": dnsmos_seconds,
        "dnsmos_timings_per_clip": timings,
        "dnsmos_timing_clips": args.n_timing,
    }
    Path(args.json).write_text(json.dumps(record, indent=1))
    report = _markdown(record)
    Path(args.out).write_text(report)
    print(report)
    print(f"wrote {args.out} and {args.json}")
    return 0


def _markdown(r: dict[str, Any]) -> str:
    sj, loso = r["split_judge"], r["loso"]
    mos, mos_all = r["dnsmos_test_speakers"], r["dnsmos_all_clips"]
    split = r["split"]
    fold_rows = "\n".join(
        f"| {f['speaker']} | {f['n']} | {f['accuracy']:.3f} | {f['uar']:.3f} | {f['classifier']} |"
        for f in loso["folds"]
    )
    candidate_rows = "\n".join(
        f"| {c['classifier']} C={c['params']['C']:g} | {c['cv_accuracy']:.3f} | {c['cv_uar']:.3f} |"
        for c in sj["candidates"]
    )
    timing_rows = "\n".join(
        f"| {name} | {seconds:.3f} |" for name, seconds in r["dnsmos_timings_per_clip"].items()
    )
    fd_row = " | ".join(f"{v:.1f}" for v in r["fd_random_halves"].values())
    fd_head = " | ".join(f"N={n}" for n in r["fd_random_halves"])
    by_emotion = ", ".join(f"{k} {v:.2f}" for k, v in mos["ovrl_by_emotion"].items())
    by_speaker = ", ".join(f"{k} {v:.2f}" for k, v in mos_all["ovrl_by_speaker"].items())
    lowest = ", ".join(f"{name} {v:.2f}" for name, v in mos_all["ovrl_lowest"])
    lb, la = r["load_before"], r["load_after"]

    def stats(key: str, of: dict[str, Any]) -> str:
        s = of[key]
        return f"{s['mean']:.2f} +- {s['std']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    return f"""# Independent judges on real EmoDB: eGeMAPS emotion judge and DNSMOS

Command: `{r["command"]}`

- date: {r["date"]}
- machine: {r["machine"]}; opensmile {r["versions"]["opensmile"]}, onnxruntime {r["versions"]["onnxruntime"]}, scikit-learn {r["versions"]["scikit-learn"]}
- load average (1/5/15 min) before: {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f}; after: {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (other jobs shared the 2 cores: timings are upper bounds)
- data: EmoDB shared six emotions, {r["n_clips"]} clips ({", ".join(r["label_names"])}), 22,050 Hz, 2.0 s

## eGeMAPS judge (emovae.evaluation.smile_judge)

Split seed {split["seed"]}: train speakers {", ".join(split["train"])}; test {", ".join(split["test"])} (val {", ".join(split["val"])} unused). Chance: 1/6 = 0.167.

| | accuracy | UAR |
|---|---|---|
| LOSO on the 6 training speakers (chosen: {sj["classifier"]} C={sj["params"]["C"]:g}) | {sj["cv_accuracy"]:.3f} | {sj["cv_uar"]:.3f} |
| **test speakers ({sj["test_n"]} clips)** | **{sj["test_accuracy"]:.3f}** | **{sj["test_uar"]:.3f}** |
| LOSO, all 10 folds (9 train speakers each): mean +- std over folds | {loso["accuracy"]["mean"]:.3f} +- {loso["accuracy"]["std"]:.3f} | {loso["uar"]["mean"]:.3f} +- {loso["uar"]["std"]:.3f} |
| LOSO, all 10 folds: min-max over folds | {loso["accuracy"]["min"]:.3f}-{loso["accuracy"]["max"]:.3f} | {loso["uar"]["min"]:.3f}-{loso["uar"]["max"]:.3f} |
| LOSO, all 10 folds: pooled predictions | {loso["pooled_accuracy"]:.3f} | {loso["pooled_uar"]:.3f} |

Lead's earlier figure for a classical judge, LOSO accuracy 0.68: this one pools to {loso["pooled_accuracy"]:.2f}.

Candidates on the split's training speakers (inner LOSO, pooled out-of-fold predictions):

| classifier | accuracy | UAR |
|---|---|---|
{candidate_rows}

Per fold of the 10-fold LOSO (classifier chosen by the inner LOSO on the other 9 speakers;
picked: {", ".join(f"{k} x{v}" for k, v in loso["picked"].items())}):

| held-out speaker | clips | accuracy | UAR | chosen |
|---|---|---|---|---|
{fold_rows}

Training (5 candidates x inner LOSO + final fit): {sj["train_seconds"]:.1f} s on 6 speakers, {loso["train_seconds"]:.1f} s on 9.

Frechet distance in the judge's space (standardised, clipped eGeMAPS) between two disjoint
random sets of N real clips of all speakers: the small-sample bias (0 in the limit). Compare only
values from equal N. Real train vs test speakers (256 vs 98 clips): {sj["fd_train_vs_test"]:.1f}.

| {fd_head} |
|{"---|" * len(r["fd_random_halves"])}
| {fd_row} |

## DNSMOS of the real clips (test speakers: the ceiling for generated audio)

Resampled to 16 kHz (soxr); mean +- std (min-max):

| clips | ovrl | sig | bak | p808 |
|---|---|---|---|---|
| **test speakers ({", ".join(split["test"])}), {mos["n"]}** | **{stats("ovrl", mos)}** | {stats("sig", mos)} | {stats("bak", mos)} | {stats("p808", mos)} |
| all speakers, {mos_all["n"]} | {stats("ovrl", mos_all)} | {stats("sig", mos_all)} | {stats("bak", mos_all)} | {stats("p808", mos_all)} |

Test speakers' ovrl by emotion: {by_emotion}.
ovrl by speaker (all clips): {by_speaker}.
Lowest ovrl (all clips): {lowest}; per-clip values are in the JSON record.
Lead's earlier figure for real EmoDB: 2.82.

## Cost per clip (2.0 s clips, 2-core CPU)

- eGeMAPS extraction (read, resample to 16 kHz, openSMILE), no cache: **{r["egemaps_seconds_per_clip"] * 1000:.0f} ms**; from the cache it is a file read.
- DNSMOS, default `DnsMos()` (1 thread, 1 window per call), all {mos_all["n"]} clips: **{r["dnsmos_seconds_per_clip"]:.2f} s**.

DNSMOS settings on the first {r["dnsmos_timing_clips"]} test clips (same clips, seconds per clip; a 2 s clip is 7 windows for
speechmos and 2 distinct windows for DnsMos):

| scorer | s / clip |
|---|---|
{timing_rows}
"""


if __name__ == "__main__":
    sys.exit(main())
