"""Sweep benchmarks: Tune overhead, ASHA+TPE search efficiency, trial throughput, MLflow cost.

Every comparison is measured side by side in one run of this script, on the embedded synthetic
corpus, with the shipped `quick` space shrunk by `--set`-style overrides (so what is measured is
what the README runs). Nothing in emovae/ or sweeps/ is changed: the instrumentation lives
here. A wrapper around sweeps.trainable.train_trial records, inside each trial's process, its
wall and CPU time, import time, the epochs' own time, time in tune.report and the RSS
high-water mark; benchmark 4 puts it and a timed MlflowTrialLogger subclass in place of the
names in sweeps.driver for the length of its run_sweep call.

    python benchmarks/bench_sweeps.py overhead      # 1. Tune vs a plain sequential loop
    python benchmarks/bench_sweeps.py search        # 2. TPE + ASHA vs random search, full budget
    python benchmarks/bench_sweeps.py throughput    # 3. 2 x 1 thread vs 1 x 2 threads vs 2 x 2
    python benchmarks/bench_sweeps.py mlflow        # 4. MLflow cost per trial, peak RSS per trial
    python benchmarks/bench_sweeps.py all --json results.json

The machine's load average is printed with every result: on a shared machine, compare only
numbers from the same run. Results and the commands behind them: benchmarks/RESULTS_sweeps.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# As in sweeps/run.py: Tune snapshots its state at every trial checkpoint (num_to_keep set) and
# warns about it; the warning is noise in a benchmark's output.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402

import sweeps.driver as driver  # noqa: E402
import sweeps.tracking as tracking  # noqa: E402
from emovae.config import DataConfig, FeatureConfig, TrainConfig, from_dict  # noqa: E402
from emovae.dataset import prepare_data  # noqa: E402
from emovae.train import train  # noqa: E402
from sweeps.results import load_trial_records  # noqa: E402
from sweeps.space import SweepSpec, load_space, to_tune_space, trial_train_config  # noqa: E402
from sweeps.trial_logger import MlflowTrialLogger  # noqa: E402
from sweeps.trials import best_value, epochs_run  # noqa: E402

# The small model and corpus of benchmarks 1-3 (the e2e tests shrink `quick` the same way).
SMALL = [
    "data.synthetic_speakers=6",
    "data.synthetic_per_emotion=2",
    "features.duration=1.0",
    "train.base_channels=8",
]
SMALL_MODEL = "quick space + " + " ".join(SMALL)


# ---------------------------------------------------------------------------------------------
# Machine, load, Ray


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    import mlflow
    import optuna
    import torch

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "mlflow": mlflow.__version__,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def ray_session() -> Iterator[float]:
    """A fresh local Ray instance (never another user's cluster); yields ray.init's seconds."""
    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


def spec_for(cache: Path, extra: list[str], base: list[str] | None = None) -> SweepSpec:
    """The shipped `quick` space with overrides (the corpus cached under `cache`)."""
    overrides = [*(SMALL if base is None else base), f"data.cache_dir={cache}", *extra]
    return load_space("quick", overrides)


def experiment_of(spec: SweepSpec) -> dict[str, Any]:
    return driver._absolute_cache(spec)  # what run_sweep hands every trial


def warm_cache(spec: SweepSpec) -> float:
    """Generate the corpus and extract features once (run_sweep does this before any trial)."""
    started = time.perf_counter()
    experiment = experiment_of(spec)
    prepare_data(DataConfig(**experiment["data"]), spec.experiment.features)
    return time.perf_counter() - started


def lr_grid(n: int) -> list[float]:
    """`n` fixed learning rates, geometric over the quick space's range."""
    if n == 1:
        return [1e-3]
    return [float(f"{3e-4 * (10 ** (i / (n - 1))):.3g}") for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The measuring trainable: sweeps.trainable.train_trial, timed from inside the trial process


def measured_trainable(
    records_dir: str, threads_override: int | None = None, per_epoch: bool = False
) -> Callable[..., None]:
    """A stand-in for sweeps.trainable.train_trial (same signature) that writes one JSON record
    per trial: wall and CPU seconds inside the trial, import time, the epochs' own seconds (the
    trainer's `epoch_seconds`), seconds inside tune.report (checkpoint persisting), ru_maxrss.

    `threads_override` trains with that many torch threads whatever CPUs Ray gave the trial (the
    oversubscription anti-pattern). `per_epoch` rewrites the record at every report, so a trial
    that ASHA stops (its process is ended mid-training) still leaves one behind. Where Tune
    reuses actors, one worker runs several trials and `maxrss_mb` is that worker's high-water
    mark so far, not the trial's alone.
    """

    def trial(config: dict[str, Any], experiment: dict[str, Any], cpus_per_trial: float) -> None:
        import json
        import os
        import resource
        import time
        from pathlib import Path

        entered = time.time()
        import ray.tune

        import sweeps.trainable as trainable

        imported = time.time()
        imported_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        trial_id = ray.tune.get_context().get_trial_id()
        path = Path(records_dir) / f"{trial_id}.json"
        epochs, epoch_s, report_s = 0, 0.0, 0.0

        def write(done: bool) -> None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            record = {
                "trial_id": trial_id,
                "pid": os.getpid(),
                "config": {k: float(v) for k, v in config.items() if isinstance(v, int | float)},
                "entered": entered,
                "imported": imported,
                "now": time.time(),
                "done": done,
                "epochs": epochs,
                "epoch_s": epoch_s,
                "report_s": report_s,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "maxrss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
                "imported_rss_mb": imported_rss_mb,  # the high-water mark before training
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)

        write(False)
        real_report = ray.tune.report

        def report(metrics: dict[str, Any], **kwargs: Any) -> None:
            nonlocal epochs, epoch_s, report_s
            epochs += 1
            epoch_s += metrics.get("epoch_seconds", 0.0)
            if per_epoch:
                write(False)
            begun = time.perf_counter()
            real_report(metrics, **kwargs)
            report_s += time.perf_counter() - begun

        # sweeps.trainable calls `tune.report`, looked up on the module at each call.
        ray.tune.report = report
        cpus = cpus_per_trial if threads_override is None else threads_override
        try:
            trainable.train_trial(config, experiment, cpus)
        finally:
            ray.tune.report = real_report
            write(True)

    return trial


def read_records(records_dir: Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(p.read_text()) for p in records_dir.glob("*.json")),
        key=lambda r: r["entered"],
    )


def tuner_for(
    trainable: Any,
    param_space: dict[str, Any],
    storage: Path,
    name: str,
    *,
    metric: str = "val_recon",
    mode: str = "min",
    num_samples: int = 1,
    search_alg: Any = None,
    max_concurrent: int | None = None,
    reuse_actors: bool = False,
) -> tune.Tuner:
    """A Tuner with the driver's RunConfig (checkpoint num_to_keep=2) and no MLflow callback."""
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=num_samples,
            search_alg=search_alg,
            max_concurrent_trials=max_concurrent,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=0,
        ),
    )


def fit(tuner: tune.Tuner) -> float:
    started = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - started
    if results.errors:
        raise RuntimeError(f"{len(results.errors)} trial(s) failed: {results.errors[0]!r}")
    return seconds


def wrap(fn: Callable[..., None], experiment: dict[str, Any], cpus: float, resources: float):
    """What driver._trainable builds, with `fn` in place of train_trial."""
    return tune.with_resources(
        tune.with_parameters(fn, experiment=experiment, cpus_per_trial=cpus), {"cpu": resources}
    )


# ---------------------------------------------------------------------------------------------
# 1. Ray Tune overhead


def model_overrides(model: str) -> list[str] | None:
    """`small`: the e2e tests' shrunken corpus and model; `quick`: the quick space as shipped."""
    return None if model == "small" else []


def tune_arm(records: list[dict[str, Any]], fit_started: float, fit_s: float) -> dict[str, Any]:
    """Where a Tune run's time went, from the trials' own records (sorted by start)."""
    return {
        "fit_s": fit_s,
        "in_trial_s": [round(r["now"] - r["entered"], 2) for r in records],
        "worker_import_s": [round(r["imported"] - r["entered"], 2) for r in records],
        "epoch_s": [round(r["epoch_s"], 2) for r in records],
        "report_s": [round(r["report_s"], 2) for r in records],
        "first_trial_start_s": records[0]["entered"] - fit_started if records else math.nan,
        # The previous trial's process ends, the next starts (a new Ray worker) and imports.
        "between_trials_s": [
            round(b["entered"] - a["now"], 2) for a, b in zip(records, records[1:], strict=False)
        ],
        "after_last_trial_s": fit_started + fit_s - records[-1]["now"] if records else math.nan,
    }


def bench_overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same fixed trials (grid over lr, no scheduler, one at a time, the trial's CPUs = its
    torch threads) through Tune and through a plain loop calling emovae.train.train in this
    process. The loop runs before and after Tune and its mean is the baseline, so load drift is
    bracketed. A second Tune run with reuse_actors=True shows what the per-trial worker costs."""
    threads = args.threads
    spec = spec_for(
        args.cache_root / args.model,
        [
            f"train.max_epochs={args.epochs}",
            f"train.patience={args.epochs + 1}",
            "sweep.grace_period=1",
        ],
        base=model_overrides(args.model),
    )
    cache_s = warm_cache(spec)
    experiment = experiment_of(spec)
    lrs = lr_grid(args.trials)
    base = from_dict(TrainConfig, experiment["train"])
    features = from_dict(FeatureConfig, experiment["features"])
    fixed = {"latent_dim": 32, "beta": 3e-3, "grad_clip": 1.0}

    def loop(tag: str) -> tuple[list[float], list[float]]:
        seconds, epoch_s = [], []
        for i, lr in enumerate(lrs):
            started = time.perf_counter()
            data = prepare_data(DataConfig(**experiment["data"]), features)  # as a trial does
            config = dataclasses.replace(
                trial_train_config(base, fixed | {"lr": lr}), num_threads=threads
            )
            out = work / f"loop-{tag}-{i}"
            result = train(config, data, out)
            shutil.rmtree(out, ignore_errors=True)
            seconds.append(time.perf_counter() - started)
            epoch_s.append(sum(h["epoch_seconds"] for h in result.history))
        return seconds, epoch_s

    load_before = load()
    loop_a, loop_a_epochs = loop("a")
    arms = {}
    with ray_session() as init_s:
        variants = {"tune": False, "tune_reuse_actors": True} if args.reuse else {"tune": False}
        for name, reuse in variants.items():
            records_dir = work / f"records-{name}"
            records_dir.mkdir()
            trainable = wrap(
                measured_trainable(str(records_dir)), experiment, cpus=threads, resources=threads
            )
            tuner = tuner_for(
                trainable,
                fixed | {"lr": tune.grid_search(lrs)},
                work / "tune",
                name,
                max_concurrent=1,
                reuse_actors=reuse,
            )
            fit_started = time.time()
            fit_s = fit(tuner)
            arms[name] = tune_arm(read_records(records_dir), fit_started, fit_s)
    loop_b, loop_b_epochs = loop("b")

    loop_s = (sum(loop_a) + sum(loop_b)) / 2
    n = len(lrs)
    for arm in arms.values():
        overhead = arm["fit_s"] - loop_s
        arm |= {
            "overhead_beyond_startup_s": overhead,
            "overhead_beyond_startup_pct": 100 * overhead / loop_s,
            "overhead_incl_ray_init_pct": 100 * (overhead + init_s) / loop_s,
            "tune_cost_per_trial_s": overhead / n,
        }
    return {
        "settings": {
            "trials": n,
            "epochs_per_trial": args.epochs,
            "threads": threads,
            "cpus_per_trial": threads,
            "max_concurrent": 1,
            "model": args.model,
            "lrs": lrs,
        },
        "load_before": load_before,
        "load_after": load(),
        "cache_s": cache_s,
        "ray_init_s": init_s,
        "loop_s": loop_s,
        "loop_before_s": sum(loop_a),
        "loop_after_s": sum(loop_b),
        "loop_per_trial_s": [round((a + b) / 2, 2) for a, b in zip(loop_a, loop_b, strict=True)],
        "loop_epoch_s": [
            round((a + b) / 2, 2) for a, b in zip(loop_a_epochs, loop_b_epochs, strict=True)
        ],
        "arms": arms,
        "target_pct": 10.0,
    }


# ---------------------------------------------------------------------------------------------
# 2. Search efficiency: TPE + ASHA (run_sweep, as shipped) vs random search at full budget


def summarise(trials: list, metric: str, mode: str) -> dict[str, Any]:
    """Best objective over every epoch of every trial, the epochs trained in all, the curves."""
    values = [best_value(t, metric, mode) for t in trials]
    values = [v for v in values if v is not None]
    return {
        "best": min(values) if mode == "min" else max(values),
        "epochs": sum(epochs_run(t) for t in trials),
        "epochs_per_trial": [epochs_run(t) for t in trials],
        "statuses": {
            s: sum(t.status == s for t in trials) for s in ("FINISHED", "KILLED_BY_ASHA", "FAILED")
        },
        "curves": [[round(h[metric], 4) for h in t.history if metric in h] for t in trials],
    }


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    for rank, index in enumerate(order):
        result[index] = float(rank)
    return result


def spearman(x: list[float], y: list[float]) -> float:
    if len(x) < 3:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else math.nan


def rung_fidelity(curves: list[list[float]], rungs: list[int], mode: str) -> dict[str, float]:
    """Spearman correlation, over the full-budget trials, between the best objective up to
    each ASHA rung (what ASHA compares there) and the trial's best at full budget: how well a
    rung ranks configurations."""
    out = {}
    best = min if mode == "min" else max
    for rung in rungs:
        pairs = [(best(c[:rung]), best(c)) for c in curves if len(c) >= rung]
        out[str(rung)] = spearman([p[0] for p in pairs], [p[1] for p in pairs])
    return out


def asha_rungs(grace: int, rf: int, max_t: int) -> list[int]:
    rungs, r = [], grace
    while r < max_t:
        rungs.append(r)
        r *= rf
    return rungs


def random_arm_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the random arm's result depends on: equal settings give the same trials (seeded)."""
    return {
        "samples": args.samples,
        "max_epochs": args.epochs,
        "overrides": args.search_set,
        "model": SMALL_MODEL,
        "full_budget": True,
    }


def earlier_random_arms(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """seed -> random arm of the --random-from JSON, which must share random_arm_settings."""
    if args.random_from is None:
        return {}
    search = json.loads(args.random_from.read_text())["search"]
    earlier, needed = search["settings"].get("random_arm"), random_arm_settings(args)
    if earlier != needed:
        raise SystemExit(
            f"{args.random_from}: its random arm ran with {earlier}, this run needs {needed}"
        )
    return {run["seed"]: run["random_full"] for run in search["runs"]}


def run_random_arm(spec: SweepSpec, seed: int, samples: int, out: Path) -> dict[str, Any]:
    """Random search, every trial to max_epochs: no scheduler and no early stopping."""
    full_budget = dataclasses.replace(
        spec.experiment.train, patience=spec.experiment.train.max_epochs
    )
    spec = dataclasses.replace(
        spec, experiment=dataclasses.replace(spec.experiment, train=full_budget)
    )
    load_before = load()
    wall_s = fit(
        tuner_for(
            driver._trainable(spec, experiment_of(spec)),
            to_tune_space(spec.params),
            out,
            "tune",
            metric=spec.sweep.metric,
            mode=spec.sweep.mode,
            num_samples=samples,
            search_alg=BasicVariantGenerator(
                max_concurrent=spec.sweep.max_concurrent, random_state=seed
            ),
        )
    )
    trials = load_trial_records(out / "tune")
    return summarise(trials, spec.sweep.metric, spec.sweep.mode) | {
        "wall_s": wall_s,
        "load_before": load_before,
    }


def synchronous_budget(samples: int, grace: int, rf: int, max_t: int) -> float:
    """Epochs that synchronous successive halving would train: all trials to the first rung,
    1/rf of them on to the next, ..., 1/rf^k to max_t. Asynchronous ASHA trains more, since it
    promotes the first trials to reach a rung before there is anyone to compare them with."""
    epochs, survivors, done = 0.0, float(samples), 0
    for rung in [*asha_rungs(grace, rf, max_t), max_t]:
        epochs += survivors * (rung - done)
        survivors, done = survivors / rf, rung
    return epochs


def bench_search(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs, resources = [], {}
    earlier = earlier_random_arms(args)
    with ray_session():
        for seed in args.seeds:
            spec = spec_for(
                args.cache_root / "small",
                [
                    f"sweep.seed={seed}",
                    f"sweep.num_samples={args.samples}",
                    "sweep.max_concurrent=2",
                    "sweep.cpus_per_trial=1",
                    f"sweep.grace_period={args.grace}",
                    f"sweep.reduction_factor={args.rf}",
                    f"train.max_epochs={args.epochs}",
                    *args.search_set,
                ],
            )
            warm_cache(spec)
            metric, mode = spec.sweep.metric, spec.sweep.mode
            resources = {  # 2 x 1 CPU unless --search-set says otherwise (e.g. on a GPU machine)
                key: getattr(spec.sweep, key)
                for key in ("max_concurrent", "cpus_per_trial", "gpus_per_trial")
            }

            load_a = load()
            started = time.perf_counter()
            result = driver.run_sweep(spec, work / f"asha-tpe-seed{seed}")  # the shipped path
            asha_s = time.perf_counter() - started
            a = summarise(result.trials, metric, mode) | {"wall_s": asha_s, "load_before": load_a}

            if seed in earlier:
                b = earlier[seed] | {"reused_from": str(args.random_from)}
            else:
                b = run_random_arm(spec, seed, args.samples, work / f"random-seed{seed}")
            sign = 1 if mode == "min" else -1
            runs.append(
                {
                    "seed": seed,
                    "asha_tpe": a,
                    "random_full": b,
                    "gap_pct": 100 * sign * (a["best"] - b["best"]) / abs(b["best"]),
                    "rung_fidelity": rung_fidelity(
                        b["curves"], asha_rungs(args.grace, args.rf, args.epochs), mode
                    ),
                    "epoch_ratio": a["epochs"] / b["epochs"],
                }
            )
    return {
        "settings": {
            "samples": args.samples,
            "max_epochs": args.epochs,
            "grace_period": args.grace,
            "reduction_factor": args.rf,
            "synchronous_epoch_ratio": synchronous_budget(
                args.samples, args.grace, args.rf, args.epochs
            )
            / (args.samples * args.epochs),
            **resources,
            "model": SMALL_MODEL,
            "overrides": args.search_set,
            "random_arm": random_arm_settings(args),
        },
        "runs": runs,
        "load_after": load(),
        "target": {"gap_pct_max": 2.0, "epoch_ratio_max": 1 / 3},
    }


# ---------------------------------------------------------------------------------------------
# 3. Trial throughput on 2 cores

ARMS = {
    # name: (concurrent trials, CPUs Ray gives a trial, torch threads)
    "2x1cpu_1thread": (2, 1, 1),
    "1x2cpu_2threads": (1, 2, 2),
    "2x1cpu_2threads_oversubscribed": (2, 1, 2),
}


def bench_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = model_overrides(args.model)
    spec = spec_for(
        args.cache_root / args.model,
        [
            f"train.max_epochs={args.epochs}",
            f"train.patience={args.epochs + 1}",
            "sweep.grace_period=1",
        ],
        base=base,
    )
    warm_cache(spec)
    experiment = experiment_of(spec)
    lrs = lr_grid(args.trials)
    fixed = {"latent_dim": 32, "beta": 3e-3, "grad_clip": 1.0}
    arms = {}
    with ray_session():
        for name in args.arms:
            concurrent, cpus, threads = ARMS[name]
            records_dir = work / f"records-{name}"
            records_dir.mkdir()
            trainable = wrap(
                measured_trainable(str(records_dir), threads_override=threads),
                experiment,
                cpus=cpus,
                resources=cpus,
            )
            load_before = load()
            seconds = fit(
                tuner_for(
                    trainable,
                    fixed | {"lr": tune.grid_search(lrs)},
                    work / "tune",
                    name,
                    max_concurrent=concurrent,
                )
            )
            records = read_records(records_dir)
            inside = [r["now"] - r["imported"] for r in records]
            cpu = [r["cpu_s"] for r in records]
            epochs = len(lrs) * args.epochs
            arms[name] = {
                "concurrent": concurrent,
                "cpus_per_trial": cpus,
                "threads": threads,
                "load_before": load_before,
                "wall_s": seconds,
                "trials_per_min": 60 * len(lrs) / seconds,
                "epochs_per_s": epochs / seconds,
                "trial_s_mean": sum(inside) / len(inside),
                "cpu_s_per_trial": sum(cpu) / len(cpu),
                "cpu_per_wall": sum(cpu) / sum(inside),
            }
    fastest = max(arms, key=lambda k: arms[k]["epochs_per_s"])
    return {
        "settings": {
            "trials": len(lrs),
            "epochs_per_trial": args.epochs,
            "model": args.model,
            "overrides": SMALL if base is None else "quick space as shipped",
            "order": list(args.arms),
        },
        "arms": arms,
        "fastest": fastest,
        "load_after": load(),
    }


# ---------------------------------------------------------------------------------------------
# 4. MLflow logging cost per trial, peak RSS per trial


class TimedMlflowTrialLogger(MlflowTrialLogger):
    """MlflowTrialLogger with a stopwatch around every callback and every flush, by trial
    (driver side). A trial's MLflow time: its start and result hooks (queueing), its end hook
    (which writes its queue) and the timed flushes of its queue from `on_step_end`."""

    timings: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    in_hook: bool = False

    @contextlib.contextmanager
    def _timed(self, key: str, what: str, hook: bool = True) -> Iterator[None]:
        """`hook`: a Tune hook, inside which a trial's flush is its end's, not a timed one."""
        begun = time.perf_counter()
        if hook:
            type(self).in_hook = True
        try:
            yield
        finally:
            if hook:
                type(self).in_hook = False
            self.timings[key][what] += time.perf_counter() - begun
            self.timings[key][f"n_{what}"] += 1

    def setup(self, **info: Any) -> None:
        with self._timed("_sweep", "setup"):
            super().setup(**info)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        flushes_before = self._timed_flush_s()
        begun = time.perf_counter()
        super().on_step_end(iteration, trials, **info)
        # The checks whether a flush is due; the flushes themselves are charged to their trials.
        checks = time.perf_counter() - begun - (self._timed_flush_s() - flushes_before)
        self.timings["_sweep"]["step_end_checks"] += checks

    def _timed_flush_s(self) -> float:
        return sum(tm.get("timed flush", 0.0) for tm in self.timings.values())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.time()
        with self._timed(trial.trial_id, "start"):
            super().on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        with self._timed(trial.trial_id, "result"):
            super().on_trial_result(iteration, trials, trial, result, **info)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with self._timed(trial.trial_id, "complete"):
            super().on_trial_complete(iteration, trials, trial, **info)
        self.ended[trial.trial_id] = time.time()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with self._timed(trial.trial_id, "error"):
            super().on_trial_error(iteration, trials, trial, **info)
        self.ended[trial.trial_id] = time.time()

    def _flush_trial(self, trial_id: str) -> None:
        key = "n/a flush in end hook" if self.in_hook else "timed flush"
        begun = time.perf_counter()
        try:
            super()._flush_trial(trial_id)
        finally:
            self.timings[trial_id][key] += time.perf_counter() - begun
            self.timings[trial_id][f"n_{key}"] += 1

    # The breakdown below happens inside the timings above: its keys start with "n/a" so that
    # they are not added to the per-trial total twice.
    current: str = "_sweep"

    def _log_checkpoint(self, run_id: str, *args: Any, **kwargs: Any) -> None:
        trial_id = next((t for t, r in self._runs.items() if r == run_id), run_id)
        type(self).current = trial_id
        with self._timed(trial_id, "n/a checkpoint", hook=False):
            super()._log_checkpoint(run_id, *args, **kwargs)
        type(self).current = "_sweep"

    @classmethod
    def timed_function(cls, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        """`fn` timed under the trial whose checkpoint is being logged."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            begun = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cls.timings[cls.current][f"n/a {what}"] += time.perf_counter() - begun

        return timed

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        with self._timed("_sweep", "experiment_end"):
            super().on_experiment_end(trials, **info)


@contextlib.contextmanager
def patched(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def bench_mlflow(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The shipped quick space (its model and corpus) through run_sweep, fewer trials/epochs."""
    spec = spec_for(
        args.cache_root / "quick",
        [f"sweep.num_samples={args.samples}", f"train.max_epochs={args.epochs}"],
        base=[],
    )
    warm_cache(spec)
    records_dir = work / "records-mlflow"
    records_dir.mkdir()
    TimedMlflowTrialLogger.timings.clear()
    load_before = load()
    timed = TimedMlflowTrialLogger.timed_function
    with contextlib.ExitStack() as stack:
        stack.enter_context(ray_session())
        stack.enter_context(patched(driver, "MlflowTrialLogger", TimedMlflowTrialLogger))
        trainable = measured_trainable(str(records_dir), per_epoch=True)
        stack.enter_context(patched(driver, "train_trial", trainable))
        # The learning-curve plot that _log_checkpoint draws from last.pt, where it exists.
        for name in ("read_checkpoint", "plot_learning_curves"):
            if hasattr(tracking, name):
                stack.enter_context(patched(tracking, name, timed(getattr(tracking, name), name)))
        # Learning curves are drawn after the sweep, outside the trials' hooks.
        curves_s: list[float] = []
        draw_curves = driver.log_learning_curves

        def timed_curves(*a: Any, **k: Any) -> Any:
            begun = time.perf_counter()
            try:
                return draw_curves(*a, **k)
            finally:
                curves_s.append(time.perf_counter() - begun)

        stack.enter_context(patched(driver, "log_learning_curves", timed_curves))
        started = time.perf_counter()
        result = driver.run_sweep(spec, work / "sweep-mlflow")
        sweep_s = time.perf_counter() - started

    records = {r["trial_id"]: r for r in read_records(records_dir)}
    timings = TimedMlflowTrialLogger.timings
    trials = []
    for t in result.trials:
        tm = timings.get(t.trial_id, {})
        mlflow_s = sum(v for k, v in tm.items() if not k.startswith(("n_", "n/a")))
        start = TimedMlflowTrialLogger.started.get(t.trial_id)
        end = TimedMlflowTrialLogger.ended.get(t.trial_id)
        wall = (end - start) if start and end else math.nan
        rec = records.get(t.trial_id, {})
        n_results = int(tm.get("n_result", 0))
        trials.append(
            {
                "trial_id": t.trial_id,
                "status": t.status,
                "epochs": epochs_run(t),
                "trial_wall_s": wall,
                "mlflow_s": mlflow_s,
                "mlflow_pct": 100 * mlflow_s / wall,
                "queue_ms": 1000 * (tm.get("start", 0.0) + tm.get("result", 0.0)),
                "results": n_results,
                "timed_flushes": int(tm.get("n_timed flush", 0)),
                "timed_flush_ms": 1000 * tm.get("timed flush", 0.0),
                "finish_ms": 1000 * (tm.get("complete", 0.0) + tm.get("error", 0.0)),
                "checkpoint_ms": 1000 * tm.get("n/a checkpoint", 0.0),
                "read_last_pt_ms": 1000 * tm.get("n/a read_checkpoint", 0.0),
                "plot_curves_ms": 1000 * tm.get("n/a plot_learning_curves", 0.0),
                "in_trial_s": rec["now"] - rec["entered"] if rec else math.nan,
                "peak_rss_mb": rec.get("maxrss_mb", math.nan),
                "rss_before_training_mb": rec.get("imported_rss_mb", math.nan),
                "worker_pid": rec.get("pid"),
            }
        )
    sweep_level = dict(timings.get("_sweep", {}))
    import resource

    return {
        "settings": {
            "space": "quick (model and corpus as shipped)",
            "samples": args.samples,
            "max_epochs": args.epochs,
            "store": "sqlite in the sweep folder",
        },
        "load_before": load_before,
        "load_after": load(),
        "sweep_s": sweep_s,
        "trials": trials,
        "mlflow_pct_mean": sum(t["mlflow_pct"] for t in trials) / len(trials),
        "mlflow_pct_max": max(t["mlflow_pct"] for t in trials),
        "mlflow_s_per_trial_mean": sum(t["mlflow_s"] for t in trials) / len(trials),
        "peak_rss_mb_max": max(t["peak_rss_mb"] for t in trials),
        "peak_rss_mb_mean": sum(t["peak_rss_mb"] for t in trials) / len(trials),
        "sweep_level_callbacks_s": {k: v for k, v in sweep_level.items() if not k.startswith("n_")},
        "curves_after_sweep_s": sum(curves_s),
        # Each trial charged its share of the post-sweep curves as well: the all-in cost.
        "mlflow_pct_with_curves_mean": sum(
            100 * (t["mlflow_s"] + sum(curves_s) / len(trials)) / t["trial_wall_s"] for t in trials
        )
        / len(trials),
        "driver_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "target_pct": 1.0,
    }


# ---------------------------------------------------------------------------------------------
# Printing


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def show_overhead(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(
        f"\n== 1. Tune overhead: {s['trials']} trials x {s['epochs_per_trial']} epochs, "
        f"{s['model']} model, {s['threads']} thread(s) = CPUs per trial, 1 at a time"
    )
    print(f"load avg before/after: {r['load_before']} / {r['load_after']}")
    print(f"ray.init                 {_f(r['ray_init_s'])} s")
    print(
        f"plain loop (mean)        {_f(r['loop_s'])} s   "
        f"(before {_f(r['loop_before_s'])}, after {_f(r['loop_after_s'])})"
    )
    print(f"  loop per trial         {r['loop_per_trial_s']}  (epochs alone {r['loop_epoch_s']})")
    for name, a in r["arms"].items():
        print(f"{name:24s} {_f(a['fit_s'])} s")
        print(f"  in trial               {a['in_trial_s']}")
        print(f"    worker imports       {a['worker_import_s']}")
        print(f"    epochs alone         {a['epoch_s']}")
        print(f"    tune.report          {a['report_s']}")
        print(f"  first trial starts     {_f(a['first_trial_start_s'])} s after fit()")
        print(f"  between trials         {a['between_trials_s']}")
        print(f"  after the last trial   {_f(a['after_last_trial_s'])} s")
        print(
            f"  overhead beyond start-up {_f(a['overhead_beyond_startup_s'])} s = "
            f"{_f(a['overhead_beyond_startup_pct'], 1)} % of the loop (target <= {r['target_pct']} %)"
            f"; {_f(a['tune_cost_per_trial_s'])} s per trial; "
            f"with ray.init {_f(a['overhead_incl_ray_init_pct'], 1)} %"
        )


def show_search(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(
        f"\n== 2. Search efficiency: {s['samples']} samples, max_t {s['max_epochs']}, "
        f"grace {s['grace_period']}, rf {s['reduction_factor']}, "
        f"{s['max_concurrent']} x {s['cpus_per_trial']} CPU "
        f"+ {s['gpus_per_trial']} GPU, "
        f"overrides {s.get('overrides') or 'none'}"
    )
    print(
        f"synchronous successive halving would train {_f(s['synchronous_epoch_ratio'], 3)} of "
        "the full budget; the random arm trains every trial to max_t (no early stopping)"
    )
    for run in r["runs"]:
        a, b = run["asha_tpe"], run["random_full"]
        reused = f", reused from {b['reused_from']}" if "reused_from" in b else ""
        print(f"seed {run['seed']} (load {a['load_before']} / {b['load_before']}{reused})")
        print(
            f"  TPE+ASHA   best {a['best']:.5f}  epochs {a['epochs']:4d}  wall {_f(a['wall_s'], 1)} s"
            f"  {a['statuses']}"
        )
        print(
            f"  random     best {b['best']:.5f}  epochs {b['epochs']:4d}  wall {_f(b['wall_s'], 1)} s"
            f"  {b['statuses']}"
        )
        print(
            f"  gap {_f(run['gap_pct'], 2)} % (target <= 2 %), epochs {_f(run['epoch_ratio'], 3)} "
            f"of random's (target <= 0.333)"
        )
        fidelity = ", ".join(f"epoch {k}: {_f(v)}" for k, v in run["rung_fidelity"].items())
        print(f"  rank correlation of a rung with the full-budget best (random arm): {fidelity}")


def show_throughput(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(
        f"\n== 3. Throughput: {s['trials']} trials x {s['epochs_per_trial']} epochs, "
        f"{s['model']} model"
    )
    for name, a in r["arms"].items():
        print(
            f"{name:32s} wall {_f(a['wall_s'], 1):>7s} s  {_f(a['trials_per_min']):>6s} trials/min"
            f"  {_f(a['epochs_per_s'], 3):>6s} epochs/s  trial {_f(a['trial_s_mean'], 1)} s"
            f"  CPU/wall {_f(a['cpu_per_wall'])}  load {a['load_before']}"
        )
    print(f"fastest: {r['fastest']}")


def show_mlflow(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(
        f"\n== 4. MLflow cost and peak RSS: quick space, {s['samples']} trials, max_t {s['max_epochs']}"
    )
    print(
        f"load avg before/after: {r['load_before']} / {r['load_after']}; sweep {_f(r['sweep_s'], 1)} s"
    )
    for t in r["trials"]:
        print(
            f"  {t['trial_id']} {t['status']:15s} {t['epochs']} ep  wall {_f(t['trial_wall_s'], 1)} s"
            f"  mlflow {_f(1000 * t['mlflow_s'], 0)} ms = {_f(t['mlflow_pct'], 2)} %"
            f"  (queueing {t['results']} results {_f(t['queue_ms'], 1)} ms, {t['timed_flushes']}"
            f" timed flushes {_f(t['timed_flush_ms'], 0)} ms, end {_f(t['finish_ms'], 0)} ms of"
            f" which best.pt {_f(t['checkpoint_ms'], 0)} ms)  peak RSS {_f(t['peak_rss_mb'], 0)} MB"
            f" ({_f(t['rss_before_training_mb'], 0)} MB after imports)"
        )
    print(
        f"MLflow per trial: mean {_f(r['mlflow_pct_mean'], 2)} %, max {_f(r['mlflow_pct_max'], 2)} %"
        f" (target <= 1 %); sweep-level callbacks {r['sweep_level_callbacks_s']}"
    )
    print(
        f"learning curves after the sweep: {_f(r['curves_after_sweep_s'], 2)} s for all trials;"
        f" with each trial's share: mean {_f(r['mlflow_pct_with_curves_mean'], 2)} %"
    )
    print(
        f"peak RSS per trial: mean {_f(r['peak_rss_mb_mean'], 0)} MB, max "
        f"{_f(r['peak_rss_mb_max'], 0)} MB; driver {_f(r['driver_maxrss_mb'], 0)} MB"
    )


BENCHES = {
    "overhead": (bench_overhead, show_overhead),
    "search": (bench_search, show_search),
    "throughput": (bench_throughput, show_throughput),
    "mlflow": (bench_mlflow, show_mlflow),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", choices=[*BENCHES, "all"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--model",
        choices=["small", "quick"],
        default="small",
        help="benchmarks 1 and 3: small = the e2e tests' shrunken quick space; quick = as shipped",
    )
    g = parser.add_argument_group("1. overhead")
    g.add_argument(
        "--no-reuse", dest="reuse", action="store_false", help="skip the reuse_actors=True run"
    )
    g.add_argument("--overhead-trials", dest="trials_1", type=int, default=4)
    g.add_argument("--overhead-epochs", dest="epochs_1", type=int, default=4)
    g.add_argument(
        "--overhead-threads",
        dest="threads",
        type=int,
        default=1,
        help="torch threads = CPUs per trial in both arms (1 default: see RESULTS_sweeps.md)",
    )
    g = parser.add_argument_group("2. search")
    g.add_argument("--seeds", type=int, nargs="+", default=[0])
    g.add_argument("--search-samples", dest="samples_2", type=int, default=12)
    g.add_argument("--search-epochs", dest="epochs_2", type=int, default=9)
    g.add_argument("--grace", type=int, default=1)
    g.add_argument("--rf", type=int, default=3)
    g.add_argument(
        "--search-set",
        dest="search_set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="space overrides for both arms (as sweeps/run.py --set), e.g. train.batch_size=8",
    )
    g.add_argument(
        "--random-from",
        dest="random_from",
        type=Path,
        metavar="JSON",
        help="reuse the random arm of an earlier --json with the same seeds and settings "
        "(it is seeded: the same settings give the same trials)",
    )
    g = parser.add_argument_group("3. throughput")
    g.add_argument("--throughput-trials", dest="trials_3", type=int, default=4)
    g.add_argument("--throughput-epochs", dest="epochs_3", type=int, default=2)
    g.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    g = parser.add_argument_group("4. mlflow")
    g.add_argument("--mlflow-samples", dest="samples_4", type=int, default=4)
    g.add_argument("--mlflow-epochs", dest="epochs_4", type=int, default=3)
    args = parser.parse_args(argv)

    names = list(BENCHES) if args.bench == "all" else [args.bench]
    info = machine() | {"date": dt.datetime.now().isoformat(timespec="seconds")}
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(json.dumps(info))
    out: dict[str, Any] = {"machine": info}
    work = Path(tempfile.mkdtemp(prefix="bench-sweeps-"))
    try:
        for name in names:
            bench, show = BENCHES[name]
            local = argparse.Namespace(**vars(args), cache_root=work / "cache")
            for key in ("trials", "epochs", "samples"):
                suffix = {"overhead": "1", "search": "2", "throughput": "3", "mlflow": "4"}[name]
                if hasattr(args, f"{key}_{suffix}"):
                    setattr(local, key, getattr(args, f"{key}_{suffix}"))
            (work / name).mkdir(parents=True)
            started = time.perf_counter()
            result = bench(local, work / name)
            result["bench_wall_s"] = time.perf_counter() - started
            out[name] = result
            show(result)
            print(f"({name}: {_f(result['bench_wall_s'], 1)} s)")
            if args.json:
                args.json.write_text(json.dumps(out, indent=1, default=str))
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
