"""Where a sweep's CPU seconds go: the driver, Ray's own processes, trial workers, MLflow.

Runs one command (by default the quick sweep as a new user runs it) and samples every process
it starts, directly or through Ray, every `--interval` seconds with psutil; each process's CPU
time is its last sample (a process that lives less than one interval is missed, which the
total beside the command's own rusage shows). Prints CPU seconds per group and writes them
with the wall time to `--json`.

    python benchmarks/cpu_by_process.py --json benchmarks/results/sweeps/cpu_by_process.json

Groups come from the process name and command line (Ray names its workers `ray::<actor>`).
Numbers and commands: benchmarks/RESULTS_sweeps.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil

GROUPS = (  # first match wins: (group, substrings of the name or command line)
    ("trial workers", ("ray::ImplicitFunc", "ray::_Inner", "ray::TrainableActor", "trainable")),
    ("idle Ray workers", ("ray::IDLE", "default_worker.py")),
    ("Ray core (GCS, raylet)", ("gcs_server", "raylet")),
    ("Ray dashboard", ("dashboard.py", "DashboardAgent")),
    ("Ray agents and monitors", ("agent", "Agent", "log_monitor", "monitor.py", "ray")),
    ("MLflow", ("mlflow",)),
)

DRIVER = "driver (sweeps/run.py)"
RANK = {group: rank for rank, group in enumerate([DRIVER, *dict(GROUPS), "other"])}


def group_of(process: psutil.Process, driver: int) -> str:
    if process.pid == driver:
        return DRIVER
    try:
        text = process.name() + " " + " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    for group, needles in GROUPS:
        if any(needle in text for needle in needles):
            return group
    return "other"


def sample(driver: int, seen: dict[int, tuple[str, float]]) -> None:
    """Record the CPU seconds of the driver and every descendant it has now."""
    try:
        root = psutil.Process(driver)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            times = process.cpu_times()
            cpu = times.user + times.system
            # A Ray worker starts as ray::IDLE, becomes a trial's, and is renamed again when it
            # ends: it keeps the first-listed group it was ever seen in.
            group = group_of(process, driver)
            if process.pid in seen:
                group = min(group, seen[process.pid][0], key=RANK.get)
            seen[process.pid] = (group, cpu)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs="*", help="default: the quick sweep into a temp folder")
    args = parser.parse_args()
    command = args.command or [
        sys.executable,
        "sweeps/run.py",
        "--space",
        "quick",
        "--out",
        f"/tmp/cpu_by_process_{int(time.time())}",
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    seen: dict[int, tuple[str, float]] = {}
    while child.poll() is None:
        sample(child.pid, seen)
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    groups: dict[str, float] = {}
    for group, cpu in seen.values():
        groups[group] = groups.get(group, 0.0) + cpu
    total = sum(groups.values())
    for group, cpu in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"{group:28s} {cpu:8.1f} s  {100 * cpu / total:5.1f} %")
    print(f"{'sampled total':28s} {total:8.1f} s over {wall:.1f} s wall (exit {child.returncode})")
    print(f"{'rusage of waited children':28s} {usage.ru_utime + usage.ru_stime:8.1f} s")
    if args.json:
        record = {
            "command": command,
            "wall_s": wall,
            "cpu_s_by_group": groups,
            "sampled_total_s": total,
            "children_rusage_s": usage.ru_utime + usage.ru_stime,
            "processes": len(seen),
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
