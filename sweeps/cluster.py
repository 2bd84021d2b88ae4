"""The sweep's Ray cluster: reached before anything is written, and checked for a node that
can run one trial (a shape no node offers is an error here, or a bounded wait for an
autoscaler on a cluster); how many trials really run at once."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import tune

from sweeps.space import SweepSpec


class ClusterError(RuntimeError):
    """Ray cannot be reached, or no node of it can ever run one trial."""


# Ray's dashboard is not needed (Tune's console and MLflow show the sweep), and the project's
# logging stays the project's. benchmarks/ray_startup.py times ray.init with these.
RAY_INIT_OPTIONS = {"include_dashboard": False, "configure_logging": False}


def connect_ray(address: str | None, log_to_driver: bool = True) -> bool:
    """Join the cluster at `address`, or start a local Ray: first, so that an unreachable
    cluster leaves nothing written. True when this call started (and must stop) Ray."""
    if ray.is_initialized():
        return False
    _probe_address(address)
    try:
        ray.init(address=address, log_to_driver=log_to_driver, **RAY_INIT_OPTIONS)
    except ConnectionError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _unreachable(address, reason) from exc
    return True


def _probe_address(address: str | None, timeout_s: float = 5.0) -> None:
    """A `host:port` nobody listens on: Ray's client would retry for minutes, silently."""
    if not address or address == "auto":
        return  # Ray answers "auto" at once (it reads the local session's address file)
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray's own error names what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise _unreachable(address, exc.strerror or str(exc)) from exc


def _unreachable(address: str | None, reason: str) -> ClusterError:
    return ClusterError(
        f"--address {address}: no Ray cluster answers there ({reason}); start one with "
        "`ray start --head`, or leave out --address to run on this machine"
    )


def trials_that_fit(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many trials asking `cpus` CPUs and `gpus` GPUs the nodes (Ray resource dicts) run
    at once."""
    total = 0
    for resources in nodes:
        slots = math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            slots = min(slots, math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
        total += slots
    return total


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def check_resources(
    spec: SweepSpec, address: str | None, stage: Callable[[str], None]
) -> ResourceWait | None:
    """Refuse (locally) or bound the wait for (on a cluster, whose autoscaler may add nodes) a
    trial shape that no node offers; say how many trials really run at once."""
    cpus, gpus = spec.sweep.cpus_per_trial, spec.sweep.gpus_per_trial
    nodes = _alive_nodes()
    fits = trials_that_fit(nodes, cpus, gpus)
    where = f"the cluster at {address}" if address else "this machine"
    if fits == 0:
        largest_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        largest_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        message = (
            f"each trial asks for sweep.cpus_per_trial={cpus:g} CPUs and "
            f"sweep.gpus_per_trial={gpus:g} GPUs, but no node of {where} has that (the "
            f"largest has {largest_cpu:g} CPUs, {largest_gpu:g} GPUs); fix: --set "
            "sweep.gpus_per_trial=0 --set sweep.cpus_per_trial=1, or a CPU-sized space "
            "(--space quick, or --space emodb_cpu for real data)"
        )
        wait_s = spec.sweep.resource_wait_s
        if address is None or wait_s == 0:
            raise ClusterError(message)
        stage(
            f"No node offers a trial's {cpus:g} CPUs and {gpus:g} GPUs yet: waiting up to "
            f"{wait_s:g} s (sweep.resource_wait_s) for the autoscaler to add one"
        )
        return ResourceWait(wait_s, message)
    if spec.sweep.max_concurrent > fits:
        stage(
            f"sweep.max_concurrent is {spec.sweep.max_concurrent}, but {where} fits {fits} "
            f"trial(s) of {cpus:g} CPUs and {gpus:g} GPUs at a time: {fits} run at once"
            + (" (until the cluster grows)" if address else "")
        )
    return None


class ResourceWaitTimeout(RuntimeError):
    pass


class ResourceWait(tune.Callback):
    """Ends the sweep when no trial could start within `wait_s`: an autoscaler that never
    adds a node of the asked shape. The trials stay pending, so `--resume` can still run them."""

    def __init__(self, wait_s: float, message: str):
        self.wait_s = wait_s
        self.message = message
        self._since: float | None = None
        self._started = False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state: a resumed driver waits afresh.
        return self.__dict__ | {"_since": None}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._started:
            return
        if any(t.status != "PENDING" for t in trials):
            self._started = True
            return
        now = time.monotonic()
        self._since = self._since or now
        if now - self._since > self.wait_s:
            raise ResourceWaitTimeout(
                f"{self.message} (no trial started within sweep.resource_wait_s={self.wait_s:g} s)"
            )
