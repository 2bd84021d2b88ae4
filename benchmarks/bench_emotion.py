"""Cost of the emotion metrics in a sweep's trial: epochs with and without them, interleaved.

One trial of a shipped space (quick by default), trained as a sweep trains it (the space's model, corpus
and trainer settings through `trial_train_config`, at the centre of the searched ranges; torch
threads from `sweep.cpus_per_trial`; the prior's fine-tuning off, as in trials), with the
space's own judge settings and the trials' own callback, `sweeps.trainable.emotion_epoch_metrics`,
switched on and off by epoch. Epoch 1 is left out (it is cold, and a trial's first epoch always
computes the metrics); after it, blocks of four epochs run with, without, without, with the
metrics (ABBA: a drift in speed weighs on both alike). An epoch's wall time runs from one
`on_epoch` call to the next: training, validation, the metrics when on, the checkpoints.

Printed: the seconds that an epoch computing the metrics adds (with minus without, per block),
the metric call's own seconds and its parts (reconstruction; sampling, judging the samples and,
where the space's objective names it, the samples as audio: vocoded and measured with eGeMAPS,
`val_wav_gen_fd_smile`, computed on every planned epoch here); the added cost per
epoch at the space's cadence (`sweep.emotion_every`; a trial's first epoch and its last also
compute them, as `sweeps.trainable.emotion_metrics_due` says), for a trial that runs the full
budget and for one that ASHA stops at its first rung; and the one-off costs: the judge (trained
once per sweep, or loaded from the cache) and a trial's set-up of the callback.

    python benchmarks/bench_emotion.py [--space quick] [--blocks 3] [--cache-dir DIR]
        [--set KEY=VALUE ...] [--json out.json]
    python benchmarks/bench_emotion.py --space emodb_cpu --set data.path=../shared/data/emodb/wav

Run it on a quiet machine; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sweeps.trainable as trainable
from emovae.dataset import prepare_data
from emovae.judge import ensure_judge, judge_path
from emovae.train import train
from sweeps.space import SweepSpec, load_space, sample_audio_vocoder, trial_train_config

TARGET = 0.15  # the limit: emotion metrics add at most 15% to a trial's time
# The parts of a metric call that sweeps.trainable looks up at each call, timed by name.
PARTS = {
    "reconstruction_emotion_metrics": "reconstruction",
    "sample_per_emotion": "sampling",
    "judge_samples": "judging the samples",
    "sample_audio_metrics": "the samples as audio",
}
AUDIO_PART = PARTS["sample_audio_metrics"]
WITH, WITHOUT = True, False
BLOCK = (WITH, WITHOUT, WITHOUT, WITH)  # ABBA


def load() -> list[float]:
    """The 1, 5 and 15-minute load averages: other work on the machine skews every number."""
    return [round(x, 2) for x in os.getloadavg()]


def central_params(spec: SweepSpec) -> dict[str, Any]:
    """One trial's values at the centre of each searched range (a choice's middle value; the
    geometric mean of a log range): the model's cost does not hang on an extreme draw."""
    values = {}
    for name, dist in spec.params.items():
        if not isinstance(dist, dict):
            values[name] = dist  # a constant
            continue
        kind, arg = next(iter(dist.items()))
        if kind == "choice":
            values[name] = arg[len(arg) // 2]
        elif kind.startswith("log"):
            values[name] = math.sqrt(arg[0] * arg[1])
        else:
            values[name] = (arg[0] + arg[1]) / 2
        if kind in ("int", "logint"):
            values[name] = round(values[name])
    return values


def epoch_plan(blocks: int) -> list[bool]:
    """Per epoch, whether it computes the metrics: epoch 1 (left out), then ABBA blocks."""
    return [WITH, *(BLOCK * blocks)]


def metric_epochs(epochs: int, every: int, max_epochs: int) -> tuple[int, int]:
    """Of a trial's first `epochs` epochs at the shipped cadence: how many compute the metrics
    because emotion_metrics_due names them (the last only at the full budget, since a trial
    that ASHA stops does not know its epoch is its last), and how many only because they are
    the trial's first (0 or 1; such an epoch skips the samples' audio metric)."""
    due = sum(
        trainable.emotion_metrics_due(epoch, every, epoch == max_epochs)
        for epoch in range(1, epochs + 1)
    )
    first_only = int(epochs >= 1 and not trainable.emotion_metrics_due(1, every, max_epochs == 1))
    return due, first_only


@contextlib.contextmanager
def timed_names(module: Any, names: list[str], seconds: dict[str, list[float]]) -> Iterator[None]:
    """Each of `module`'s functions `names`, timed into `seconds[name]`, for the block only
    (sweeps.trainable looks them up at each call)."""
    originals = {name: getattr(module, name) for name in names}

    def timer(name: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                seconds[name].append(time.perf_counter() - begun)

        return timed

    for name in names:
        setattr(module, name, timer(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def trial_config(spec: SweepSpec, epochs: int) -> Any:
    """The TrainConfig a quick trial trains (sweeps.trainable.train_trial), for `epochs` epochs
    with early stopping out of reach so that every planned epoch runs."""
    return dataclasses.replace(
        trial_train_config(spec.experiment.train, central_params(spec)),
        num_threads=trainable.threads_for(spec.sweep.cpus_per_trial),
        prior_finetune_steps=0,
        max_epochs=epochs,
        patience=epochs + 1,
    )


def one_off_costs(spec: SweepSpec, data: Any, config: Any) -> dict[str, Any]:
    """The judge (trained into the cache once per sweep, or loaded), then a trial's set-up of
    the metric callback (loading the judge, judging the real validation clips)."""
    cache = trainable.judge_cache_dir(spec.experiment.data.cache_dir)
    cached = judge_path(cache, data.fingerprint, spec.judge).exists()
    started = time.perf_counter()
    ensure_judge(data, cache, spec.judge)
    judge_s = time.perf_counter() - started
    judge = trainable.judge_beside_vae(spec.judge, config.device, config.num_threads)
    started = time.perf_counter()
    # every=1: the callback computes the metrics whenever it is called; the plan decides when.
    vocoder = sample_audio_vocoder(spec.sweep, spec.finalise)
    metrics = trainable.emotion_epoch_metrics(
        data, 1, judge, spec.experiment.data.cache_dir, vocoder
    )
    setup_s = time.perf_counter() - started
    return {"judge_cached": cached, "judge_s": judge_s, "setup_s": setup_s, "callback": metrics}


def run_plan(data: Any, config: Any, plan: list[bool], metrics: Any) -> dict[str, Any]:
    """Train with the metrics on the planned epochs: each epoch's wall seconds, the metric
    call's seconds and its two parts' (reconstruction, generation) on each epoch with them."""
    marks: list[float] = []
    call_s: list[float] = []

    def planned(model: Any, epoch: int, is_last: bool) -> dict[str, float]:
        if not plan[epoch - 1]:
            return {}
        begun = time.perf_counter()
        values = metrics(model, epoch, is_last)
        call_s.append(time.perf_counter() - begun)
        return values

    names: dict[str, list[float]] = {name: [] for name in PARTS}
    with tempfile.TemporaryDirectory(prefix="bench-emotion-") as work:
        with timed_names(trainable, list(names), names):
            marks.append(time.perf_counter())
            train(
                config,
                data,
                work,
                on_epoch=lambda m, folder: marks.append(time.perf_counter()),
                epoch_metrics=planned,
            )
    return {
        "walls": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "call_s": call_s,
        "parts": {PARTS[name]: seconds for name, seconds in names.items()},
    }


def block_costs(walls: list[float]) -> list[float]:
    """Per ABBA block after epoch 1: mean of its two with-epochs minus its two without."""
    rest = walls[1:]
    costs = []
    for start in range(0, len(rest) - len(BLOCK) + 1, len(BLOCK)):
        block = rest[start : start + len(BLOCK)]
        on = [w for w, flag in zip(block, BLOCK, strict=True) if flag]
        off = [w for w, flag in zip(block, BLOCK, strict=True) if not flag]
        costs.append(statistics.fmean(on) - statistics.fmean(off))
    return costs


def cadence_costs(
    spec: SweepSpec, added_s: float, epoch_s: float, audio_s: float
) -> dict[str, dict]:
    """The added cost per epoch at the space's cadence, for a full-budget trial and for a
    trial stopped at ASHA's first rung: `added_s` on each due epoch, `added_s - audio_s` on a
    first epoch that is not due (`audio_s`: the samples' audio metric, 0 when off)."""
    every, max_epochs = spec.sweep.emotion_every, spec.experiment.train.max_epochs
    out = {}
    for name, epochs in (("full budget", max_epochs), ("first rung", spec.sweep.grace_period)):
        due, first_only = metric_epochs(epochs, every, max_epochs)
        per_epoch = (added_s * due + (added_s - audio_s) * first_only) / epochs
        out[name] = {
            "epochs": epochs,
            "metric_epochs": due + first_only,
            "added_s_per_epoch": per_epoch,
            "share": per_epoch / epoch_s,
        }
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    overrides = [f"data.cache_dir={args.cache_dir}"] if args.cache_dir else []
    spec = load_space(args.space, [*overrides, *args.overrides])
    if spec.sweep.emotion_every < 1:
        raise SystemExit(f"{args.space}: sweep.emotion_every is 0: its trials compute no metrics")
    load_before = load()
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    plan = epoch_plan(args.blocks)
    config = trial_config(spec, len(plan))
    once = one_off_costs(spec, data, config)
    run = run_plan(data, config, plan, once.pop("callback"))
    on = [w for w, flag in zip(run["walls"][1:], plan[1:], strict=True) if flag]
    off = [w for w, flag in zip(run["walls"][1:], plan[1:], strict=True) if not flag]
    blocks = block_costs(run["walls"])
    added_s = statistics.fmean(blocks)
    epoch_s = statistics.fmean(off)
    parts_s = {k: statistics.fmean(v[1:] or v) for k, v in run["parts"].items() if v}
    return {
        "space": args.space,
        "overrides": args.overrides,
        "params": central_params(spec),
        "threads": config.num_threads,
        "judge": dataclasses.asdict(spec.judge),
        "gen_per_emotion": trainable.GEN_PER_EMOTION,
        "emotion_every": spec.sweep.emotion_every,
        "clips": {"train": len(data.train), "val": len(data.val)},
        "load_before": load_before,
        "load_after": load(),
        "plan": plan,
        "walls": run["walls"],
        "epoch_s_without": epoch_s,
        "epoch_s_with": statistics.fmean(on),
        "block_added_s": blocks,
        "added_s": added_s,
        "added_sd": statistics.stdev(blocks) if len(blocks) > 1 else math.nan,
        "call_s": statistics.fmean(run["call_s"][1:] or run["call_s"]),
        "parts_s": parts_s,
        "cadence": cadence_costs(spec, added_s, epoch_s, parts_s.get(AUDIO_PART, 0.0)),
        **once,
    }


def show(r: dict[str, Any]) -> None:
    print(
        f"{r['space']} trial: params {r['params']}, {r['threads']} torch thread(s), "
        f"train/val {r['clips']['train']}/{r['clips']['val']} clips, judge epochs "
        f"{r['judge']['epochs']}, {r['gen_per_emotion']} samples per emotion; overrides "
        f"{r['overrides'] or 'none'}"
    )
    print(f"load average before {r['load_before']}, after {r['load_after']}")
    state = "loaded from the cache" if r["judge_cached"] else "trained (once per sweep)"
    print(
        f"judge {state}: {r['judge_s']:.1f} s; a trial's set-up of the metrics {r['setup_s']:.2f} s"
    )
    print(
        "epoch walls (s, * = with metrics): "
        + ", ".join(
            f"{w:.2f}{'*' if flag else ''}" for w, flag in zip(r["walls"], r["plan"], strict=True)
        )
    )
    print(
        f"epoch without metrics {r['epoch_s_without']:.2f} s, with {r['epoch_s_with']:.2f} s "
        f"(epoch 1 left out)"
    )
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in r["parts_s"].items())
    sd = "n/a" if math.isnan(r["added_sd"]) else f"{r['added_sd']:.2f}"
    print(
        f"added per metric-epoch: {r['added_s']:.2f} s ± {sd} (sd over "
        f"{len(r['block_added_s'])} ABBA blocks) = {100 * r['added_s'] / r['epoch_s_without']:.0f}"
        f" % of an epoch; the metric call itself {r['call_s']:.2f} s ({parts})"
    )
    for name, c in r["cadence"].items():
        print(
            f"at the shipped cadence (every {r['emotion_every']}), {name} ({c['epochs']} epochs, "
            f"{c['metric_epochs']} with metrics): +{c['added_s_per_epoch']:.2f} s per epoch = "
            f"{100 * c['share']:.1f} % (target <= {100 * TARGET:.0f} %)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="quick")
    parser.add_argument("--blocks", type=int, default=3, help="ABBA blocks of 4 epochs")
    parser.add_argument("--cache-dir", help="features and judge cache (the space's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{' '.join([Path(sys.executable).name, *sys.argv])}",
        flush=True,
    )
    result = measure(args)
    show(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
