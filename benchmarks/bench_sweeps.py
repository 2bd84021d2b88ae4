"""Sweep benchmarks: Tune overhead, ASHA+TPE search efficiency, trial throughput, MLflow cost.

Every comparison is measured side by side in one run of this script, on the embedded synthetic
corpus, with the shipped `quick` space (shrunk by `--set`-style overrides where a benchmark
says so), so what is measured is what the README runs. Nothing in emovae/ or sweeps/ is
changed: the instrumentation lives here. A wrapper around sweeps.trainable.train_trial records,
inside each trial's process, its wall and CPU time, import time, the epochs' own time, time in
tune.report and the RSS high-water mark; benchmark 4 puts it and a timed MlflowTrialLogger
subclass in place of the names in sweeps.driver for the length of its run_sweep call.
Benchmark 1 runs run_sweep untouched and repeats its trials in benchmarks/pool_arm.py; with
`--space emodb_cpu --overhead-set data.path=...` it runs the real-corpus space as shipped,
with `--ray-running` it joins a Ray started once (as `sweeps/run.py --address` does).

    python benchmarks/bench_sweeps.py overhead      # 1. run_sweep vs a process pool, same trials
    python benchmarks/bench_sweeps.py search        # 2. TPE + ASHA vs random search, full budget
    python benchmarks/bench_sweeps.py throughput    # 3. 2 x 1 thread vs 1 x 2 threads vs 2 x 2
    python benchmarks/bench_sweeps.py mlflow        # 4. MLflow cost per trial, peak RSS per trial
    python benchmarks/bench_sweeps.py all --json results.json

The emotion metrics' cost per epoch: benchmarks/bench_emotion.py.

Benchmark 1's pool arm (pool_arm.py) builds each trial with sweeps.trainable.trial_setup, the
Ray-free half of train_trial, so both arms train exactly the same thing.

The machine's load average is printed with every result: on a shared machine, compare only
numbers from the same run. Results and the commands behind them: benchmarks/RESULTS_sweeps.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

import sweeps.driver as driver
from emovae.config import DataConfig
from emovae.dataset import prepare_data
from emovae.judge import ensure_judge
from sweeps.checkpoint_pruner import CheckpointPruner
from sweeps.results import load_trial_records
from sweeps.space import SweepSpec, load_space, to_tune_space
from sweeps.trainable import judge_cache_dir
from sweeps.trial_logger import MlflowTrialLogger
from sweeps.trials import best_value, epochs_run
from sweeps.tuner import TUNE_SAVE_PERIOD_S

# As sweeps/run.py sets it: how often Tune saves its experiment state.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(TUNE_SAVE_PERIOD_S))

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
def ray_session(address: str | None = None) -> Iterator[float]:
    """A fresh local Ray instance (never another user's cluster); yields ray.init's seconds.
    With `address` (a Ray already running, which run_sweep joins itself) nothing is started
    and NaN is yielded."""
    if address is not None:
        yield math.nan
        return
    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()


def spec_for(
    cache: Path, extra: list[str], base: list[str] | None = None, space: str = "quick"
) -> SweepSpec:
    """A shipped space (`quick` unless named) with overrides (the corpus cached under `cache`)."""
    overrides = [*(SMALL if base is None else base), f"data.cache_dir={cache}", *extra]
    return load_space(space, overrides)


def experiment_of(spec: SweepSpec) -> dict[str, Any]:
    return driver._absolute_cache(spec)  # what run_sweep hands every trial


def reachable_grace(epochs: int, space: str = "quick") -> list[str]:
    """The override that lowers the space's ASHA grace period to a shrunk budget of `epochs`,
    if needed: the space refuses a grace period above train.max_epochs."""
    # emodb_cpu refuses an empty data.path; only the grace period is read here.
    grace = load_space(space, ["data.path=unused"]).sweep.grace_period
    return [f"sweep.grace_period={epochs}"] if epochs < grace else []


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
    """A Tuner with the driver's RunConfig (every checkpoint kept until the pruner deletes it,
    sweeps.checkpoint_pruner) and no MLflow callback."""
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
            callbacks=[CheckpointPruner()],
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
# 1. Tune overhead: the shipped driver (arm A) vs a process pool of the same trials (arm B)

POOL_ARM = Path(__file__).with_name("pool_arm.py")
# The stage run_sweep announces just before Tune starts its trials.
TRIALS_START_STAGE = "Starting the sweep"


def model_overrides(model: str) -> list[str] | None:
    """`small`: the e2e tests' shrunken corpus and model; `quick`: the quick space as shipped."""
    return None if model == "small" else []


def overhead_overrides(args: argparse.Namespace) -> list[str]:
    """The --set-style overrides of benchmark 1: trials and epochs if given, then --overhead-set
    (the space's own values otherwise: as shipped)."""
    sized = [f"sweep.num_samples={args.trials}"] if args.trials else []
    if args.epochs:
        sized += [f"train.max_epochs={args.epochs}", *reachable_grace(args.epochs, args.space)]
    return [*sized, *args.overhead_set]


def overhead_spec(args: argparse.Namespace, extra: list[str] | None = None) -> SweepSpec:
    """Benchmark 1's space. System metrics need an MLflow run to log into, which arm B has
    not: a space that turns them on cannot be compared, so it is refused."""
    overrides = [*overhead_overrides(args), *(extra or [])]
    base = model_overrides(args.model) if args.space == "quick" else []
    spec = spec_for(args.cache_root / f"overhead-{args.space}", overrides, base, args.space)
    if spec.sweep.system_metrics:
        raise SystemExit("overhead: sweep.system_metrics must be off (arm B has no MLflow run)")
    return spec


def warm_judge(spec: SweepSpec) -> float:
    """Train the sweep's emotion judge into the cache before any measured arm, as a sweep does
    once; afterwards both arms only load it."""
    if spec.sweep.emotion_every < 1:
        return 0.0
    started = time.perf_counter()
    experiment = experiment_of(spec)
    data = prepare_data(DataConfig(**experiment["data"]), spec.experiment.features)
    ensure_judge(data, judge_cache_dir(experiment["data"]["cache_dir"]), spec.judge)
    return time.perf_counter() - started


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Environment variables set for the block only."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shipped_sweep(spec: SweepSpec, out: Path, address: str | None = None) -> dict[str, Any]:
    """Arm A: run_sweep exactly as `sweeps/run.py` calls it (compact console, Tune's classic
    output engine), timed from ray.init to ray.shutdown: a fresh local Ray, as run_sweep
    starts when no cluster is given, or with `address` a Ray already running there, which
    run_sweep joins and leaves running (`--address`). The trials' params and epochs are what
    arm B repeats."""
    stages: list[tuple[float, str]] = []
    started = time.perf_counter()
    with environment(RAY_AIR_NEW_OUTPUT="0"), ray_session(address) as init_s:
        result = driver.run_sweep(
            spec,
            out,
            address=address,
            on_stage=lambda message: stages.append((time.perf_counter(), message)),
            progress=io.StringIO(),  # the console's table, which run.py prints, discarded
        )
    wall_s = time.perf_counter() - started
    trials_start = next((t for t, m in stages if m.startswith(TRIALS_START_STAGE)), math.nan)
    ran = [t for t in result.trials if epochs_run(t) > 0]
    return {
        "wall_s": wall_s,
        "ray_init_s": init_s,
        "to_trials_s": trials_start - started,  # ray.init, MLflow store, features, judge
        "trials": [
            {
                "params": t.params,
                "epochs": epochs_run(t),
                "status": str(t.status),
                "epoch_s": sum(h.get("epoch_seconds", 0.0) for h in t.history),
            }
            for t in ran
        ],
    }


def trials_at_once(spec: SweepSpec) -> int:
    """How many trials arm A runs at once: the sweep's limit, or fewer if Ray's CPUs (this
    machine's cores) do not fit that many trials' CPUs."""
    fit = int((os.cpu_count() or 1) // spec.sweep.cpus_per_trial)
    return max(1, min(spec.sweep.max_concurrent, fit))


def pool_of_trials(spec: SweepSpec, trials: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Arm B: arm A's trials, in order, through benchmarks/pool_arm.py's process pool (its own
    process: see its docstring), with what each trial of arm A received from the driver."""
    out.mkdir(parents=True)
    request = {
        "trials": [(t["params"], t["epochs"]) for t in trials],
        # run_sweep's own constants for every trial; `state` only feeds system metrics (off).
        "experiment": driver._trial_experiment(spec, experiment_of(spec), None),
        "cpus_per_trial": spec.sweep.cpus_per_trial,
        "workers": trials_at_once(spec),
    }
    (out / "request.pkl").write_bytes(pickle.dumps(request))
    command = [sys.executable, str(POOL_ARM), str(out / "request.pkl"), str(out / "result.json")]
    subprocess.run(command, check=True)
    result = json.loads((out / "result.json").read_text())
    return result | {"workers": request["workers"]}


def overhead_repeat(
    spec: SweepSpec, work: Path, index: int, address: str | None = None
) -> dict[str, Any]:
    """One A-then-B pair: arm B needs the trials arm A ran, so it follows it."""
    load_a = load()
    a = shipped_sweep(spec, work / f"sweep-{index}", address)
    shutil.rmtree(work / f"sweep-{index}", ignore_errors=True)  # disk, not timed
    load_b = load()
    b = pool_of_trials(spec, a["trials"], work / f"pool-{index}")
    return {
        "load_before_a": load_a,
        "load_before_b": load_b,
        "a": a,
        "b": b,
        "epochs_a": sum(t["epochs"] for t in a["trials"]),
        "epochs_b": sum(t["epochs"] for t in b["trials"]),
        "epoch_s_a": sum(t["epoch_s"] for t in a["trials"]),
        "epoch_s_b": sum(t["epoch_s"] for t in b["trials"]),
        "overhead_pct": 100 * (a["wall_s"] - b["wall_s"]) / b["wall_s"],
        # Without what A spends before its first trial (ray.init, MLflow store, features and
        # judge loaded): how much of the overhead is per sweep rather than per trial.
        "after_setup_pct": 100 * (a["wall_s"] - a["to_trials_s"] - b["wall_s"]) / b["wall_s"],
    }


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (NaN for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
        "min": min(values),
        "max": max(values),
    }


def warmup_overrides(spec: SweepSpec) -> list[str]:
    """`spec` shrunk to the unmeasured 1-trial, 1-epoch sweep that pays this process's one-off
    lazy imports (Optuna, matplotlib) before a measured one; emotion metrics, if on, at that
    epoch (the space refuses a cadence above the grace period)."""
    tiny = ["sweep.num_samples=1", "train.max_epochs=1", "sweep.grace_period=1"]
    return [*tiny, f"sweep.emotion_every={min(spec.sweep.emotion_every, 1)}"]


@contextlib.contextmanager
def running_ray(wanted: bool) -> Iterator[str | None]:
    """With `wanted`, a one-node Ray this process starts (as `ray start --head` would, its
    dashboard off) and removes on exit; its address for run_sweep. Else None."""
    if not wanted:
        yield None
        return
    from ray.cluster_utils import Cluster

    # Cluster's nodes default to 1 CPU; `ray start --head` offers every core.
    head = {"include_dashboard": False, "num_cpus": os.cpu_count()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def bench_overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The shipped driver (Optuna + ASHA + MLflow logger, actor reuse, its checkpointing) vs a
    real process pool running the same trials for the same epochs with the same threads,
    interleaved A, B, A, B, ... `--repeats` times. An unmeasured 1-trial, 1-epoch sweep first
    pays this process's one-off lazy imports (Optuna, matplotlib), so that the first measured
    sweep does not pay them alone."""
    spec = overhead_spec(args)
    cache_s, judge_s = warm_cache(spec), warm_judge(spec)
    with running_ray(args.ray_running) as address:
        warmup_s = math.nan
        if args.warmup:
            started = time.perf_counter()
            shipped_sweep(overhead_spec(args, warmup_overrides(spec)), work / "warmup", address)
            warmup_s = time.perf_counter() - started
        repeats = [overhead_repeat(spec, work, i, address) for i in range(args.repeats)]
    return {
        "settings": {
            "space": args.space,
            "ray": "already running (--address)" if args.ray_running else "started per sweep",
            "model": args.model if args.space == "quick" else "as shipped",
            "overrides": overhead_overrides(args),
            "trials": spec.sweep.num_samples,
            "max_epochs": spec.experiment.train.max_epochs,
            "grace_period": spec.sweep.grace_period,
            "reduction_factor": spec.sweep.reduction_factor,
            "at_once": trials_at_once(spec),
            "cpus_per_trial": spec.sweep.cpus_per_trial,
            "emotion_every": spec.sweep.emotion_every,
            "repeats": args.repeats,
        },
        "cache_s": cache_s,
        "judge_s": judge_s,
        "warmup_s": warmup_s,
        "repeats": repeats,
        "overhead_pct": spread([r["overhead_pct"] for r in repeats]),
        "after_setup_pct": spread([r["after_setup_pct"] for r in repeats]),
        "load_after": load(),
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
    """Random search, every trial to max_epochs: no scheduler and no early stopping. It logs
    nothing to MLflow, so there is no sweep state; driver._trainable reads the state only for
    system metrics (the trial's MLflow run), which are therefore turned off here."""
    full_budget = dataclasses.replace(
        spec.experiment.train, patience=spec.experiment.train.max_epochs
    )
    spec = dataclasses.replace(
        spec,
        experiment=dataclasses.replace(spec.experiment, train=full_budget),
        sweep=dataclasses.replace(spec.sweep, system_metrics=False),
    )
    load_before = load()
    wall_s = fit(
        tuner_for(
            driver._trainable(spec, experiment_of(spec), None),
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
    def _log_checkpoint(self, run_id: str, *args: Any, **kwargs: Any) -> None:
        trial_id = next((t for t, r in self._runs.items() if r == run_id), run_id)
        with self._timed(trial_id, "n/a checkpoint", hook=False):
            super()._log_checkpoint(run_id, *args, **kwargs)

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


def timed_calls(fn: Callable[..., Any], seconds: list[float]) -> Callable[..., Any]:
    """`fn`, appending each call's seconds to `seconds`."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - begun)

    return timed


def mlflow_trial_row(t: Any, record: dict[str, Any]) -> dict[str, Any]:
    """One trial's MLflow seconds (driver side, by hook), its wall and RSS."""
    tm = TimedMlflowTrialLogger.timings.get(t.trial_id, {})
    mlflow_s = sum(v for k, v in tm.items() if not k.startswith(("n_", "n/a")))
    start = TimedMlflowTrialLogger.started.get(t.trial_id)
    end = TimedMlflowTrialLogger.ended.get(t.trial_id)
    wall = (end - start) if start and end else math.nan
    return {
        "trial_id": t.trial_id,
        "status": t.status,
        "epochs": epochs_run(t),
        "trial_wall_s": wall,
        "mlflow_s": mlflow_s,
        "mlflow_pct": 100 * mlflow_s / wall,
        "queue_ms": 1000 * (tm.get("start", 0.0) + tm.get("result", 0.0)),
        "results": int(tm.get("n_result", 0)),
        "timed_flushes": int(tm.get("n_timed flush", 0)),
        "timed_flush_ms": 1000 * tm.get("timed flush", 0.0),
        "finish_ms": 1000 * (tm.get("complete", 0.0) + tm.get("error", 0.0)),
        "checkpoint_ms": 1000 * tm.get("n/a checkpoint", 0.0),
        "in_trial_s": record["now"] - record["entered"] if record else math.nan,
        "peak_rss_mb": record.get("maxrss_mb", math.nan),
        "rss_before_training_mb": record.get("imported_rss_mb", math.nan),
        "worker_pid": record.get("pid"),
    }


def bench_mlflow(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The shipped quick space (its model and corpus) through run_sweep, fewer trials/epochs.
    A trial's MLflow cost: the logger's hooks and flushes attributed to it (no learning-curve
    PNG is drawn any more: MLflow charts the metrics)."""
    spec = spec_for(
        args.cache_root / "quick",
        [
            f"sweep.num_samples={args.samples}",
            f"train.max_epochs={args.epochs}",
            *reachable_grace(args.epochs),
        ],
        base=[],
    )
    warm_cache(spec)
    records_dir = work / "records-mlflow"
    records_dir.mkdir()
    TimedMlflowTrialLogger.timings.clear()
    load_before = load()
    outcome_s: list[float] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(ray_session())
        stack.enter_context(patched(driver, "MlflowTrialLogger", TimedMlflowTrialLogger))
        trainable = measured_trainable(str(records_dir), per_epoch=True)
        stack.enter_context(patched(driver, "train_trial", trainable))
        # trials.csv, tags and the parent run's outcome, after the trials.
        outcome = timed_calls(driver.record_outcome, outcome_s)
        stack.enter_context(patched(driver, "record_outcome", outcome))
        started = time.perf_counter()
        result = driver.run_sweep(spec, work / "sweep-mlflow")
        sweep_s = time.perf_counter() - started

    records = {r["trial_id"]: r for r in read_records(records_dir)}
    trials = [mlflow_trial_row(t, records.get(t.trial_id, {})) for t in result.trials]
    sweep_level = dict(TimedMlflowTrialLogger.timings.get("_sweep", {}))
    import resource

    def mean(key: str) -> float:
        return statistics.fmean(t[key] for t in trials)

    return {
        "settings": {
            "space": "quick (model and corpus as shipped)",
            "samples": args.samples,
            "max_epochs": args.epochs,
            "grace_period": spec.sweep.grace_period,
            "store": "sqlite in the sweep folder",
        },
        "load_before": load_before,
        "load_after": load(),
        "sweep_s": sweep_s,
        "trials": trials,
        "mlflow_pct_mean": mean("mlflow_pct"),
        "mlflow_pct_max": max(t["mlflow_pct"] for t in trials),
        "mlflow_s_per_trial_mean": mean("mlflow_s"),
        "peak_rss_mb_max": max(t["peak_rss_mb"] for t in trials),
        "peak_rss_mb_mean": mean("peak_rss_mb"),
        "sweep_level_callbacks_s": {k: v for k, v in sweep_level.items() if not k.startswith("n_")},
        "record_outcome_s": sum(outcome_s),
        "driver_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "target_pct": 1.0,
    }


# ---------------------------------------------------------------------------------------------
# Printing


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _pct_spread(o: dict[str, float]) -> str:
    sd = "n/a" if math.isnan(o["sd"]) else _f(o["sd"], 1)
    return f"mean {o['mean']:+.1f} % ± {sd} (sd), range {o['min']:+.1f} to {o['max']:+.1f} %"


def show_overhead(r: dict[str, Any]) -> None:
    s = r["settings"]
    print(
        f"\n== 1. Tune overhead: run_sweep as shipped (A) vs a process pool of the same trials "
        f"(B), interleaved, {s['repeats']} repeat(s)"
    )
    print(
        f"{s['space']} space, {s['model']} model, overrides {s['overrides'] or 'none'}: "
        f"{s['trials']} trials, max_t {s['max_epochs']}, ASHA grace {s['grace_period']} rf "
        f"{s['reduction_factor']}, {s['at_once']} at once x {s['cpus_per_trial']} CPU = torch "
        f"threads, emotion metrics every {s['emotion_every']} (0: off); Ray {s['ray']}"
    )
    warmup = "skipped" if math.isnan(r["warmup_s"]) else f"{_f(r['warmup_s'], 1)} s"
    print(
        f"before the arms: cache {_f(r['cache_s'])} s, judge {_f(r['judge_s'])} s, unmeasured "
        f"warm-up sweep {warmup}"
    )
    for i, rep in enumerate(r["repeats"], 1):
        a, b = rep["a"], rep["b"]
        print(
            f"repeat {i}: A {_f(a['wall_s'], 1)} s (load {rep['load_before_a']}; ray.init "
            f"{_f(a['ray_init_s'], 1)} s, to first trials {_f(a['to_trials_s'], 1)} s)  "
            f"B {_f(b['wall_s'], 1)} s (load {rep['load_before_b']}; {b['workers']} workers)  "
            f"overhead {rep['overhead_pct']:+.1f} %"
        )
        print(
            f"  {len(a['trials'])} trials, epochs A/B {rep['epochs_a']}/{rep['epochs_b']}, "
            f"the epochs' own seconds A/B {_f(rep['epoch_s_a'], 1)}/{_f(rep['epoch_s_b'], 1)}, "
            f"statuses {dict(Counter(t['status'] for t in a['trials']))}"
        )
    print(
        f"overhead (A - B) / B: {_pct_spread(r['overhead_pct'])} (target <= "
        f"{r['target_pct']} %); load after {r['load_after']}"
    )
    print(f"  without A's time before its first trial: {_pct_spread(r['after_setup_pct'])}")


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
        f"MLflow per trial: mean {_f(r['mlflow_pct_mean'], 2)} %, max "
        f"{_f(r['mlflow_pct_max'], 2)} % (target <= 1 %)"
    )
    print(
        f"after the trials: record_outcome {_f(r['record_outcome_s'], 2)} s; sweep-level callbacks "
        f"{ {k: round(v, 3) for k, v in r['sweep_level_callbacks_s'].items()} }"
    )
    print(
        f"peak RSS per trial: mean {_f(r['peak_rss_mb_mean'], 0)} MB, max "
        f"{_f(r['peak_rss_mb_max'], 0)} MB; driver {_f(r['driver_maxrss_mb'], 0)} MB"
    )


# Benchmark 1 measures what ships; benchmark 3 compares layouts, on the smaller model by default.
DEFAULT_MODEL = {"overhead": "quick", "throughput": "small"}

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
        help="benchmarks 1 and 3: small = the e2e tests' shrunken quick space; quick = as "
        "shipped (default: quick for 1, small for 3)",
    )
    g = parser.add_argument_group("1. overhead")
    g.add_argument("--repeats", type=int, default=3, help="A, B pairs, interleaved")
    g.add_argument(
        "--space",
        choices=["quick", "emodb_cpu"],
        default="quick",
        help="the shipped space both arms run (emodb_cpu: as shipped, needs "
        "--overhead-set data.path=...; --model applies to quick only)",
    )
    g.add_argument(
        "--overhead-trials", dest="trials_1", type=int, help="sweep.num_samples (the space's)"
    )
    g.add_argument(
        "--overhead-epochs", dest="epochs_1", type=int, help="train.max_epochs (the space's)"
    )
    g.add_argument(
        "--overhead-set",
        dest="overhead_set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="space overrides for both arms (as sweeps/run.py --set), e.g. sweep.grace_period=1",
    )
    g.add_argument(
        "--ray-running",
        action="store_true",
        help="arm A joins a Ray started once before the repeats (sweeps/run.py --address) "
        "instead of starting and stopping its own",
    )
    g.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the unmeasured 1-trial sweep that pays the driver's one-off imports",
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
            local.model = args.model or DEFAULT_MODEL.get(name)
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
