"""Where a shipped sweep's wall time goes, from timestamps: Ray's start-up, the driver's work
before the trials, the trials' own work, the gaps Tune leaves between them, and Ray's shutdown.

`bench_sweeps.py overhead` measures the Tune overhead as one number (the shipped run_sweep
against a process pool of the same trials). This splits arm A's wall into its parts, so the
overhead can be attributed rather than inferred by subtraction: it runs the same sweep (the
`quick` space as shipped unless overridden, a fresh local Ray, features and judge cached by an
unmeasured first sweep) with a wrapper around sweeps.trainable.train_trial that stamps, inside
each trial's process, its entry, trial_setup, every tune.report's entry and return, its exit
and the process's CPU seconds; the machine's busy CPU seconds (/proc/stat) are read before and
after, so what the trial processes did not use is what Ray's processes and the driver used.

    python benchmarks/bench_tune_timeline.py --repeats 2 --json timeline.json [--ray-running]

With `--ray-running` the sweeps join a Ray started once before them, as `sweeps/run.py
--address` joins a running `ray start --head`. Results: benchmarks/RESULTS_sweeps.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_sweeps as bs

import sweeps.driver as driver


def busy_core_seconds() -> float:
    """CPU seconds every core of this machine spent not idle since boot (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / 100  # USER_HZ: 100 on Linux


def stamped_trainable(records_dir: str) -> Callable[..., None]:
    """train_trial (same signature), writing one JSON of timestamps per trial."""

    def trial(config: dict[str, Any], experiment: dict[str, Any], cpus_per_trial: float) -> None:
        import json
        import os
        import resource
        import time
        from pathlib import Path

        import ray.tune

        import sweeps.trainable as trainable

        events: list[list[Any]] = [["enter", time.time()]]
        trial_id = ray.tune.get_context().get_trial_id()
        real_report, real_setup = ray.tune.report, trainable.trial_setup

        def report(metrics: dict[str, Any], **kwargs: Any) -> None:
            events.append(["report_in", time.time(), metrics.get("epoch_seconds", 0.0)])
            real_report(metrics, **kwargs)
            events.append(["report_out", time.time()])

        def setup(*args: Any, **kwargs: Any) -> Any:
            events.append(["setup_in", time.time()])
            try:
                return real_setup(*args, **kwargs)
            finally:
                events.append(["setup_out", time.time()])

        # train_trial looks both names up on their modules at each call.
        ray.tune.report, trainable.trial_setup = report, setup
        try:
            trainable.train_trial(config, experiment, cpus_per_trial)
        finally:
            ray.tune.report, trainable.trial_setup = real_report, real_setup
            usage = resource.getrusage(resource.RUSAGE_SELF)
            events.append(["exit", time.time()])
            record = {"pid": os.getpid(), "cpu_s": usage.ru_utime + usage.ru_stime}
            path = Path(records_dir) / f"{trial_id}.json"
            path.write_text(json.dumps(record | {"trial_id": trial_id, "events": events}))

    return trial


def timed_sweep(spec: Any, out: Path, address: str | None = None) -> dict[str, Any]:
    """One sweep as bench_sweeps' arm A runs it, with the trials stamped; with `address`, on
    the Ray already running there (run_sweep's own ray.init joins it, its shutdown leaves)."""
    records = out.with_name(out.name + "-records")
    records.mkdir(parents=True)
    stages: list[list[Any]] = []
    busy_before, started = busy_core_seconds(), time.time()
    with (
        bs.environment(RAY_AIR_NEW_OUTPUT="0"),
        bs.patched(driver, "train_trial", stamped_trainable(str(records))),
    ):
        with bs.ray_session(address):
            ray_up = time.time()
            driver.run_sweep(
                spec,
                out,
                address=address,
                on_stage=lambda message: stages.append([time.time(), message]),
                progress=io.StringIO(),
            )
            returned = time.time()
    ended, busy = time.time(), busy_core_seconds() - busy_before
    trials = [json.loads(p.read_text()) for p in sorted(records.glob("*.json"))]
    return {
        "started": started,
        "ray_up": ray_up,
        "returned": returned,
        "ended": ended,
        "busy_core_s": busy,
        "stages": stages,
        "trials": trials,
    }


def _times(trial: dict[str, Any], name: str) -> list[float]:
    return [e[1] for e in trial["events"] if e[0] == name]


def decompose(run: dict[str, Any]) -> dict[str, Any]:
    """The sweep's wall split into consecutive parts, and its trials' time in sum."""
    trials = sorted(run["trials"], key=lambda t: t["events"][0][1])
    first_entry = trials[0]["events"][0][1]
    last_exit = max(t["events"][-1][1] for t in trials)
    tune_start = next(
        (t for t, m in run["stages"] if m.startswith(bs.TRIALS_START_STAGE)), run["ray_up"]
    )
    by_actor: dict[int, list[dict[str, Any]]] = {}
    for t in trials:
        by_actor.setdefault(t["pid"], []).append(t)
    between_trials = [
        later["events"][0][1] - earlier["events"][-1][1]
        for runs in by_actor.values()
        for earlier, later in zip(runs, runs[1:], strict=False)
    ]
    in_report = [
        out - into
        for t in trials
        for into, out in zip(_times(t, "report_in"), _times(t, "report_out"), strict=False)
    ]
    setup = [
        out - into
        for t in trials
        for into, out in zip(_times(t, "setup_in"), _times(t, "setup_out"), strict=False)
    ]
    epochs = [e[2] for t in trials for e in t["events"] if e[0] == "report_in"]
    wall = run["ended"] - run["started"]
    trial_cpu = sum(t["cpu_s"] for t in trials if t is by_actor[t["pid"]][-1])  # per process
    return {
        "wall_s": wall,
        "parts_s": {
            "ray_init": run["ray_up"] - run["started"],
            "driver_before_trials": tune_start - run["ray_up"],
            "tune_start_to_first_trial": first_entry - tune_start,
            "trials_first_entry_to_last_exit": last_exit - first_entry,
            "last_exit_to_run_sweep_return": run["returned"] - last_exit,
            "ray_shutdown": run["ended"] - run["returned"],
        },
        "driver_stages_s": [[t - run["ray_up"], m[:60]] for t, m in run["stages"]],
        "actors": len(by_actor),
        "trials": len(trials),
        "between_trials_on_an_actor_s": between_trials,
        "in_tune_report_s": sum(in_report),
        "reports": len(in_report),
        "trial_setup_s": sum(setup),
        "epoch_seconds_s": sum(epochs),
        "busy_core_s": run["busy_core_s"],
        "trial_processes_cpu_s": trial_cpu,
    }


def show(d: dict[str, Any]) -> None:
    print(f"wall {d['wall_s']:.1f} s:")
    for name, seconds in d["parts_s"].items():
        print(f"  {name:34s} {seconds:6.2f} s  ({100 * seconds / d['wall_s']:4.1f} %)")
    print(
        "  driver stages (s after ray.init): "
        + "; ".join(f"{t:.2f} {m}" for t, m in d["driver_stages_s"])
    )
    gaps = d["between_trials_on_an_actor_s"]
    print(
        f"  {d['trials']} trials on {d['actors']} actors; between two trials on one actor: "
        f"{statistics.mean(gaps) if gaps else float('nan'):.3f} s mean, {max(gaps, default=0):.3f} max"
    )
    print(
        f"  inside the trials: {d['reports']} tune.report calls {d['in_tune_report_s']:.2f} s "
        f"in all, trial_setup {d['trial_setup_s']:.2f} s, the epochs' own seconds "
        f"{d['epoch_seconds_s']:.1f} s"
    )
    other = d["busy_core_s"] - d["trial_processes_cpu_s"]
    print(
        f"  machine busy {d['busy_core_s']:.1f} core-s, of which the trial processes "
        f"{d['trial_processes_cpu_s']:.1f} and everything else (driver, Ray's processes) {other:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="space overrides (as sweeps/run.py --set); default: the quick space as shipped",
    )
    parser.add_argument(
        "--ray-running",
        action="store_true",
        help="the sweeps join a Ray started once before them (sweeps/run.py --address)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    info = bs.machine() | {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print(json.dumps(info))
    with (
        tempfile.TemporaryDirectory(prefix="bench-timeline-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        spec = bs.spec_for(work / "cache", args.overrides, base=[])
        bs.warm_cache(spec)
        bs.warm_judge(spec)
        address = stack.enter_context(bs.running_ray(args.ray_running))
        warmup = bs.spec_for(work / "cache", [*args.overrides, *bs.warmup_overrides(spec)], base=[])
        timed_sweep(warmup, work / "warmup", address)
        results = []
        for index in range(args.repeats):
            load_before = bs.load()
            d = decompose(timed_sweep(spec, work / f"sweep-{index}", address)) | {
                "load_before": load_before
            }
            print(f"\nrepeat {index + 1}, load before {d['load_before']}")
            show(d)
            results.append(d)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "repeats": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
