"""What the driver refuses or bounds before and around Ray Tune: an unreachable cluster, trial
shapes no node offers, a wait for nodes that never come, and SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray

from sweeps.cluster import ClusterError, ResourceWait, ResourceWaitTimeout, trials_that_fit
from sweeps.driver import run_sweep
from sweeps.space import load_space

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("nodes", "cpus", "gpus", "expected"),
    [
        ([{"CPU": 2.0}], 1.0, 0.0, 2),
        ([{"CPU": 2.0}], 0.5, 0.0, 4),
        ([{"CPU": 2.0}], 4.0, 0.0, 0),
        ([{"CPU": 2.0}], 1.0, 0.25, 0),  # no GPU on the node
        ([{"CPU": 16.0, "GPU": 1.0}], 2.0, 0.25, 4),  # the GPU quarters bound it
        ([{"CPU": 2.0, "GPU": 1.0}, {"CPU": 8.0}], 1.0, 0.5, 2),  # only the GPU node counts
        ([{"CPU": 1.0}, {"CPU": 1.0}], 1.0, 0.0, 2),
        ([], 1.0, 0.0, 0),
    ],
)
def test_trials_that_fit_counts_whole_trials_per_node(
    nodes: list[dict[str, float]], cpus: float, gpus: float, expected: int
) -> None:
    assert trials_that_fit(nodes, cpus, gpus) == expected


def test_unreachable_address_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "sweep"
    with pytest.raises(ClusterError, match=rf"--address 127\.0\.0\.1:{port}: no Ray cluster"):
        run_sweep(load_space("quick"), out, address=f"127.0.0.1:{port}")
    assert not out.exists()
    assert not ray.is_initialized()


def _trials(*statuses: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(status=status) for status in statuses]


def test_resource_wait_gives_up_only_while_nothing_has_started() -> None:
    waiting = ResourceWait(0.0, "no node has a GPU")
    waiting.on_step_end(0, _trials("PENDING", "PENDING"))  # starts the clock
    with pytest.raises(ResourceWaitTimeout, match=r"no node has a GPU .*resource_wait_s=0 s"):
        waiting.on_step_end(1, _trials("PENDING", "PENDING"))

    started = ResourceWait(0.0, "no node has a GPU")
    started.on_step_end(0, _trials("RUNNING", "PENDING"))
    for step in range(1, 4):  # a trial ran: later queues are Ray's ordinary scheduling
        started.on_step_end(step, _trials("TERMINATED", "PENDING"))


def test_resource_wait_restored_from_tunes_snapshot_waits_afresh() -> None:
    waiting = ResourceWait(60.0, "message")
    waiting.on_step_end(0, _trials("PENDING"))
    restored = ResourceWait.__new__(ResourceWait)
    restored.__dict__.update(waiting.__getstate__())
    assert restored._since is None and restored.wait_s == 60.0


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_the_driver_the_way_ctrl_c_does(sigint: str) -> None:
    # "ignored": how a shell starts a background job (`python sweeps/run.py ... &`).
    script = (
        "import os, signal, time\n"
        "from sweeps.run import install_signal_handlers\n"
        "install_signal_handlers()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    ignore = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL

    def start_with_sigint() -> None:
        signal.signal(signal.SIGINT, ignore)

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=start_with_sigint,
    )
    assert done.returncode == 0 and done.stdout.strip() == "interrupted", done.stderr
