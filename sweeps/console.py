"""What a person sees while a sweep runs: one compact table of the trials (redrawn in place on
a terminal, a plain line per trial event otherwise), and Ray's own logs in a file.

`SweepConsole` is a Ray Tune `ProgressReporter` (Tune calls `should_report` and `report` on
every step of its loop); it needs Tune's classic output engine (`RAY_AIR_NEW_OUTPUT=0`), which
`sweeps/run.py` selects unless `--verbose` asks for Ray's own result boxes.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ray.tune import ProgressReporter

from sweeps.results import trial_error_text, trial_status
from sweeps.trials import TrialStatus, best_key

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOG_FILE = "sweep.log"  # in the sweep folder: Ray's and Tune's driver-side logs
REDRAW_EVERY_S = 1.0
SHOWN = {
    "PENDING": "queued",
    "RUNNING": "running",
    TrialStatus.FINISHED: "finished",
    TrialStatus.KILLED_BY_ASHA: "stopped (ASHA)",
    TrialStatus.FAILED: "FAILED",
    TrialStatus.INTERRUPTED: "interrupted",
    "PAUSED": "paused",
}


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class ConsoleLayout:
    """What the console shows (the objective now and its running best, the searched parameters)
    and the budget it counts against."""

    metric: str
    params: tuple[str, ...]
    max_epochs: int
    num_samples: int
    max_concurrent: int

    @property
    def best_metric(self) -> str:
        return best_key(self.metric)


class SweepConsole(ProgressReporter):
    """Trial id, status, epoch/max, objective now and best, the searched parameters; under it
    a line of totals with epochs trained of the budget, time spent and an upper bound on what
    is left (every trial not yet ended running to its budget)."""

    def __init__(self, stream: TextIO, layout: ConsoleLayout, terminal: bool | None = None):
        self.stream = stream
        self.layout = layout
        self.terminal = stream.isatty() if terminal is None else terminal
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn_lines = 0
        self._seen: dict[str, str] = {}  # trial id -> the status last shown
        self._errors_shown: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (this reporter too) for --resume: the stream stays here.
        return self.__dict__ | {"stream": None, "_drawn_lines": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stdout  # a resumed sweep reports to the resuming driver's console
        self.terminal = sys.stdout.isatty()
        self._started = time.monotonic()

    # ---- Tune's ProgressReporter hooks -------------------------------------------------------

    def should_report(self, trials: list, done: bool = False) -> bool:
        if self.terminal:
            return done or time.monotonic() - self._last_draw >= REDRAW_EVERY_S
        return done or any(
            self._seen.get(t.trial_id) != self._status(t) and t.status != "PENDING" for t in trials
        )

    def report(self, trials: list, done: bool, *sys_info: Any) -> None:
        self._last_draw = time.monotonic()
        lines = self._new_errors(trials)
        if self.terminal:
            # Move up over the last table and clear it: errors stay above, the table below.
            erase = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
            table = self._table(trials)
            self.stream.write(erase + "".join(f"{line}\n" for line in lines + table))
            self._drawn_lines = len(table)
        else:
            # Queued trials are shown when they start: a line per start and per end.
            changed = [
                t
                for t in trials
                if self._seen.get(t.trial_id) != self._status(t) and t.status != "PENDING"
            ]
            events = [self._event(t, trials) for t in changed]
            self.stream.write("".join(f"{line}\n" for line in lines + events))
        self.stream.flush()
        self._seen = {t.trial_id: self._status(t) for t in trials}

    # ---- rendering ---------------------------------------------------------------------------

    @staticmethod
    def _status(trial: Any) -> str:
        if trial.status in ("TERMINATED", "ERROR"):
            return trial_status(trial.status, trial.last_result)
        return trial.status

    def _epochs(self, trial: Any) -> int:
        return int((trial.last_result or {}).get("epoch", 0))

    def _values(self, trial: Any) -> tuple[str, str]:
        result = trial.last_result or {}
        now, best = result.get(self.layout.metric), result.get(self.layout.best_metric)
        return (
            _number(now) if now is not None else "-",
            _number(best) if best is not None else "-",
        )

    def _params(self, trial: Any) -> str:
        return " ".join(f"{k}={_number(trial.config.get(k))}" for k in self.layout.params)

    def _event(self, trial: Any, trials: list) -> str:
        status = self._status(trial)
        head = f"trial {trial.trial_id} {SHOWN.get(status, status.lower())}"
        if status == "RUNNING" and self._seen.get(trial.trial_id) in (None, "PENDING"):
            return f"trial {trial.trial_id} started: {self._params(trial)}"
        if self._seen.get(trial.trial_id) in (None, "PENDING"):  # ended between two reports
            head += f" ({self._params(trial)})"
        now, best = self._values(trial)
        epochs = f"{self._epochs(trial)}/{self.layout.max_epochs} epochs"
        totals = self._totals(trials)
        return f"{head} after {epochs}, {self.layout.metric} {now} (best {best}) | {totals}"

    def _table(self, trials: list) -> list[str]:
        header = ["trial", "status", "epoch", self.layout.metric, "best", *self.layout.params]
        rows = [header]
        for trial in trials:
            now, best = self._values(trial)
            status = self._status(trial)
            rows.append(
                [
                    trial.trial_id,
                    SHOWN.get(status, status.lower()),
                    f"{self._epochs(trial)}/{self.layout.max_epochs}",
                    now,
                    best,
                    *(_number(trial.config.get(k)) for k in self.layout.params),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        return [*lines, self._totals(trials)]

    def _totals(self, trials: list) -> str:
        counts: dict[str, int] = {}
        for trial in trials:
            status = self._status(trial)
            counts[status] = counts.get(status, 0) + 1
        ended = (TrialStatus.FINISHED, TrialStatus.KILLED_BY_ASHA, TrialStatus.FAILED)
        order = (*ended, "RUNNING", "PENDING")
        parts = [f"{counts[s]} {SHOWN[s]}" for s in order if counts.get(s)]
        trained = sum(self._epochs(t) for t in trials)
        elapsed = time.monotonic() - self._started
        budget = self.layout.num_samples * self.layout.max_epochs
        return (
            f"{len(trials)}/{self.layout.num_samples} trials: {', '.join(parts) or 'none yet'}; "
            f"{trained}/{budget} epochs; {_duration(elapsed)}"
            f"{self._left(trials, trained, elapsed)}"
        )

    def _left(self, trials: list, trained: int, elapsed: float) -> str:
        if not trained:
            return ""
        layout = self.layout
        ended = ("TERMINATED", "ERROR")
        budget = sum(layout.max_epochs - self._epochs(t) for t in trials if t.status not in ended)
        budget += (layout.num_samples - len(trials)) * layout.max_epochs
        running = max(1, sum(t.status == "RUNNING" for t in trials))
        # Epochs so far ran `running` at a time: seconds per epoch and lane, times what is left.
        left = elapsed * running / trained * budget / min(running, layout.max_concurrent)
        return f", at most ~{_duration(left)} left" if budget else ""

    def _new_errors(self, trials: list) -> list[str]:
        """A failed trial's full error, once, with where its output is."""
        lines = []
        for trial in trials:
            if trial.status == "ERROR" and trial.trial_id not in self._errors_shown:
                self._errors_shown.add(trial.trial_id)
                # Ray colours parts of its trace for terminals: plain text here.
                text = ANSI_CODE.sub("", trial_error_text(trial) or "")
                where = Path(trial.path or "")  # its folder in the sweep (storage)
                lines += [f"trial {trial.trial_id} FAILED: {self._params(trial)}", text]
                lines.append(f"  its output: {where / 'stdout'}, {where / 'stderr'}")
        return lines


class _FolderFileHandler(logging.Handler):
    """Writes to `path` once its folder exists (the driver creates the sweep folder only after
    it reached Ray); what came before waits in memory and is written first."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.pending: list[logging.LogRecord] = []
        self._file: TextIO | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None and not self.path.parent.is_dir():
            self.pending.append(record)
            return
        if self._file is None:
            self._file = self.path.open("a")
            for waiting in self.pending:
                self._file.write(self.format(waiting) + "\n")
            self.pending.clear()
        self._file.write(self.format(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


class RayLogFile:
    """Ray's, Tune's, Optuna's and MLflow's log records and Python warnings go to `path`
    instead of the console while the `with` block runs. `ray.init` empties the "ray" logger's
    handlers: call `attach()` again after it. Warnings that never reached the file (its
    folder never came) go to the console at the end."""

    LOGGERS = ("ray", "optuna", "mlflow", "py.warnings")

    def __init__(self, path: Path):
        self.handler = _FolderFileHandler(path)
        self._saved: dict[str, tuple[list[logging.Handler], bool]] = {}

    def __enter__(self) -> RayLogFile:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved[name] = (list(logger.handlers), logger.propagate)
        logging.captureWarnings(True)
        self.attach()
        return self

    def attach(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers = [self.handler]
            logger.propagate = False

    def __exit__(self, *exc_info: object) -> None:
        logging.captureWarnings(False)
        for name, (handlers, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        self.handler.close()
        for record in self.handler.pending:
            if record.levelno >= logging.WARNING:
                logging.getLogger(record.name).handle(record)
