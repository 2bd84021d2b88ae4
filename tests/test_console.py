"""sweeps.console: the compact live table Tune reports through, and Ray's logs in a file."""

from __future__ import annotations

import io
import logging
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

from sweeps.console import ConsoleLayout, RayLogFile, SweepConsole


def _trial(trial_id: str, status: str, epoch: int = 0, **result: float) -> SimpleNamespace:
    last = {"epoch": epoch, **result} if epoch else {}
    return SimpleNamespace(
        trial_id=trial_id,
        status=status,
        last_result=last,
        config={"latent_dim": 16, "lr": 0.001},
        path=f"/sweep/tune/train_trial_{trial_id}",
        error_file=None,
        get_error=lambda: "Traceback (most recent call last):\nValueError: loss is non-finite",
    )


def _console(stream: io.StringIO, terminal: bool) -> SweepConsole:
    layout = ConsoleLayout(
        metric="val_recon",
        params=("latent_dim", "lr"),
        max_epochs=8,
        num_samples=3,
        max_concurrent=2,
    )
    return SweepConsole(stream, layout, terminal=terminal)


def test_without_a_terminal_a_plain_line_per_start_and_end() -> None:
    stream = io.StringIO()
    console = _console(stream, terminal=False)
    steps = [
        [_trial("a", "PENDING"), _trial("b", "PENDING")],
        [_trial("a", "RUNNING"), _trial("b", "PENDING")],
        [_trial("a", "RUNNING", 1, val_recon=0.9, best_val_recon=0.9), _trial("b", "PENDING")],
        [
            _trial("a", "TERMINATED", 2, val_recon=0.8, best_val_recon=0.8, is_last_epoch=0.0),
            _trial("b", "RUNNING"),
        ],
        [
            _trial("a", "TERMINATED", 2, val_recon=0.8, best_val_recon=0.8, is_last_epoch=0.0),
            _trial("b", "ERROR", 1, val_recon=0.7, best_val_recon=0.7),
        ],
    ]
    reported = []
    for trials in steps:
        if console.should_report(trials):
            console.report(trials, False)
            reported.append(len(trials))
    lines = stream.getvalue().splitlines()
    assert "\x1b" not in stream.getvalue()
    assert len(reported) == 3  # a started; a stopped and b started; b failed (epochs: silent)
    assert lines[0] == "trial a started: latent_dim=16 lr=0.001"
    assert lines[1].startswith("trial a stopped (ASHA) after 2/8 epochs, val_recon 0.8 (best 0.8)")
    assert "2/3 trials: 1 stopped (ASHA), 1 running; 2/24 epochs" in lines[1]
    assert lines[2] == "trial b started: latent_dim=16 lr=0.001"
    # A failed trial: its whole error, once, and where its output is.
    failed = "\n".join(lines[3:])
    assert "trial b FAILED: latent_dim=16 lr=0.001" in failed
    assert "ValueError: loss is non-finite" in failed
    assert (
        "its output: /sweep/tune/train_trial_b/stdout, /sweep/tune/train_trial_b/stderr" in failed
    )
    console.report(steps[-1], True)
    assert stream.getvalue().count("ValueError") == 1


def test_on_a_terminal_one_table_redrawn_in_place() -> None:
    stream = io.StringIO()
    console = _console(stream, terminal=True)
    first = [_trial("a", "RUNNING", 1, val_recon=0.9, best_val_recon=0.9), _trial("b", "PENDING")]
    console.report(first, False)
    table = stream.getvalue().splitlines()
    assert table[0].split() == ["trial", "status", "epoch", "val_recon", "best", "latent_dim", "lr"]
    assert table[1].split()[:5] == ["a", "running", "1/8", "0.9", "0.9"]
    assert table[2].split()[:3] == ["b", "queued", "0/8"]
    assert table[3].startswith("2/3 trials: 1 running, 1 queued; 1/24 epochs;")
    assert "left" in table[3]  # an upper bound on the time left, once an epoch has run
    console.report(first, True)
    # The second drawing first moves up over the 4 lines of the first and clears them.
    assert stream.getvalue()[len("\n".join(table)) + 1 :].startswith("\x1b[4F\x1b[J")


def test_restored_from_tunes_snapshot_reports_to_this_process() -> None:
    console = _console(io.StringIO(), terminal=False)
    restored = pickle.loads(pickle.dumps(console))  # as Tune stores its run config
    assert restored.stream is sys.stdout and restored.layout == console.layout


def test_ray_logs_wait_for_the_folder_then_go_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "sweep.log"
    logger = logging.getLogger("ray.tune.test_console")
    with RayLogFile(path) as logs:
        logger.warning("before the folder")
        assert not path.exists()
        path.parent.mkdir()
        logs.attach()
        logger.warning("after the folder")
    text = path.read_text()
    assert "before the folder" in text and "after the folder" in text
    assert text.index("before") < text.index("after")
    assert logging.getLogger("ray").handlers != [logs.handler]  # restored


def test_ray_logs_never_written_come_back_to_the_console(tmp_path: Path, capsys) -> None:
    ray_logger = logging.getLogger("ray")
    saved = list(ray_logger.handlers)
    console = logging.StreamHandler()  # writes to sys.stderr as capsys sees it now
    ray_logger.handlers = [console]
    try:
        with RayLogFile(tmp_path / "never" / "sweep.log"):
            logging.getLogger("ray.test_console").warning("the cluster is unreachable")
            logging.getLogger("ray.test_console").info("routine")
    finally:
        ray_logger.handlers = saved
    err = capsys.readouterr().err
    assert "the cluster is unreachable" in err and "routine" not in err
