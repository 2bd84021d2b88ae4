"""MLflow system metrics (CPU, memory, disk, network; GPU where one is there) for a trial's
run, sampled on the node the trial runs on (`sweep.system_metrics: true`).

The driver's MLflow logger creates the trial's run when the trial starts; the trial finds it
by its tags and runs MLflow's SystemMetricsMonitor beside its training. MLflow being slow or
down never stops the trial: the monitor starts once the run is found, or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

LOG = logging.getLogger(__name__)
FIND_EVERY_S = 2.0
FIND_FOR_S = 300.0


def monitor_settings(
    tracking_uri: str, experiment_id: str, parent_run_id: str, sampling_interval_s: float
) -> dict[str, Any]:
    """The experiment entry that switches a trial's system metrics on (plain data for Ray)."""
    return {
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "sampling_interval_s": sampling_interval_s,
    }


@contextlib.contextmanager
def system_metrics(settings: dict[str, Any] | None, trial_id: str) -> Iterator[None]:
    """Sample system metrics into the trial's run while the block runs (None: off)."""
    if not settings:
        yield
        return
    stop = threading.Event()
    monitor: list[Any] = []
    finder = threading.Thread(
        target=_find_and_start, args=(settings, trial_id, stop, monitor), daemon=True
    )
    finder.start()
    try:
        yield
    finally:
        stop.set()
        finder.join(timeout=10)
        for started in monitor:
            started.finish()


def _find_and_start(
    settings: dict[str, Any], trial_id: str, stop: threading.Event, monitor: list[Any]
) -> None:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from sweeps.tracking import TAG_TRIAL_ID, resolved_uri, tracking_client

    client = tracking_client(settings["tracking_uri"])
    query = (
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{settings['parent_run_id']}' "
        f"and tags.`{TAG_TRIAL_ID}` = '{trial_id}'"
    )
    waited = 0.0
    while not stop.is_set() and waited < FIND_FOR_S:
        try:
            runs = client.search_runs([settings["experiment_id"]], filter_string=query)
        except Exception as exc:  # MLflow down: try again, the trial goes on regardless
            LOG.debug("system metrics: looking up trial %s's run: %s", trial_id, exc)
            runs = []
        if runs:
            started = SystemMetricsMonitor(
                runs[0].info.run_id,
                sampling_interval=settings["sampling_interval_s"],
                resume_logging=True,  # a resumed trial continues its run's metric steps
                tracking_uri=resolved_uri(settings["tracking_uri"]),
            )
            started.start()
            monitor.append(started)
            return
        stop.wait(FIND_EVERY_S)
        waited += FIND_EVERY_S
    LOG.warning("system metrics: no MLflow run of trial %s found; none are logged", trial_id)
