"""Ray's fixed cost per sweep: `ray.init` with the driver's options, the first two 1-CPU tasks,
`ray.shutdown`, in seconds, as one JSON line. Extra `ray.init` keyword arguments as JSON;
environment settings (RAY_*) are read as Ray reads them.

    python benchmarks/ray_startup.py
    python benchmarks/ray_startup.py '{"object_store_memory": 100000000}'
    RAY_enable_metrics_collection=0 python benchmarks/ray_startup.py

Numbers: benchmarks/RESULTS_sweeps.md ("Which of the driver's 15.9 s is Tune's loop").
"""

from __future__ import annotations

import json
import os
import sys
import time

import ray

from sweeps.cluster import RAY_INIT_OPTIONS


@ray.remote(num_cpus=1)
def _nothing() -> int:
    return 1


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    started = time.perf_counter()
    ray.init(log_to_driver=False, **(RAY_INIT_OPTIONS | options))
    up = time.perf_counter()
    ray.get([_nothing.remote(), _nothing.remote()])
    ran = time.perf_counter()
    ray.shutdown()
    seconds = {"init": up - started, "first_tasks": ran - up, "shutdown": time.perf_counter() - ran}
    settings = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    print(
        json.dumps(
            {"options": options, "env": settings} | {k: round(v, 2) for k, v in seconds.items()}
        )
    )


if __name__ == "__main__":
    main()
