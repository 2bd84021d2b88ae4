"""The Tune callback that logs each trial of a sweep as a child run of the sweep's MLflow run.

All logging happens in the driver, through this callback, not inside trials: one writer
avoids sqlite's "database is locked", trials on other nodes need no tracking access, and the
driver alone knows when ASHA stopped a trial. Each child run is tagged with its Ray trial id
and found again by that tag, so a resumed sweep (`Tuner.restore`) continues the same run
instead of opening a second one; steps already logged are not logged twice, and runs the
driver can no longer finish are closed at the end of the sweep.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from mlflow.entities import Dataset, Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from sweeps.databases import masked
from sweeps.results import trial_error_text, trial_status
from sweeps.tracking import (
    RUN_STATUS,
    TAG_ERROR,
    TAG_ROLE,
    TAG_TRIAL_ID,
    TAG_TRIAL_STATUS,
    child_runs,
    create_child_run,
    flatten,
    log_batch,
    log_dataset,
    tracking_client,
)
from sweeps.trials import TrialStatus

LOG = logging.getLogger(__name__)
MAX_TAG_LENGTH = 5000
PLACEMENT_KEYS = ("node_id", "gpu_ids")  # reported by the trainable, tagged on the run
# Keys Ray adds to every result; only the trainer's own metrics go to MLflow.
RAY_RESULT_KEYS = frozenset(
    {
        "timestamp",
        "pid",
        "done",
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "iterations_since_restore",
        "time_since_restore",
    }
)


# ---- the queued operations -------------------------------------------------------------------


@dataclass(frozen=True)
class StartOp:
    """A trial started, or started again after a resume (its run reopens)."""

    KIND: ClassVar[str] = "start"
    trial_id: str
    params: dict[str, str]
    at_ms: int


@dataclass(frozen=True)
class MetricsOp:
    """One reported result: the trainer's metrics at `step` (its epoch), and where it ran."""

    KIND: ClassVar[str] = "metrics"
    trial_id: str
    step: int
    values: dict[str, float]
    at_ms: int
    placement: dict[str, str]


@dataclass(frozen=True)
class FinishOp:
    """A trial ended: its status tag, error text if it failed, best checkpoint if logged."""

    KIND: ClassVar[str] = "finish"
    trial_id: str
    status: TrialStatus
    error: str | None
    checkpoint: Any | None  # a ray.tune.Checkpoint
    at_ms: int


@dataclass(frozen=True)
class CloseOrphansOp:
    """The sweep ended: close the trial runs still RUNNING in MLflow."""

    KIND: ClassVar[str] = "close_orphans"


TrialOp = StartOp | MetricsOp | FinishOp
Op = TrialOp | CloseOrphansOp
_KINDS = {op.KIND: op for op in (StartOp, MetricsOp, FinishOp, CloseOrphansOp)}


def op_row(op: Op) -> tuple:
    """`op` as `(kind, *fields)`. Tune's snapshots and the backlog file hold rows, not the
    classes: a snapshot taken by an older logger (whose queue held these tuples) resumes, and
    the backlog's JSON lines read the same as before."""
    return (op.KIND, *(getattr(op, field.name) for field in fields(op)))


def op_from_row(row: Sequence[Any]) -> Op:
    return _KINDS[row[0]](*row[1:])


# ---- retries ---------------------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """When the logger tries MLflow again after a flush failed (server down, network, store
    errors): the only retry above MLflow's own per-request HTTP retries, which sweeps/run.py
    keeps short (MLFLOW_HTTP_REQUEST_*) so that a dead server fails a flush fast.

    A failed flush leaves the queue as it was. During the sweep the next hook tries again,
    at most once every `every_s` while MLflow stays down; at the sweep's end, where no hook
    follows, `end_waits` spaces the last attempts before the queue goes to the backlog."""

    END_ATTEMPTS: ClassVar[int] = 3
    END_BACKOFF_S: ClassVar[float] = 2.0  # waits 2, 4, 6 s after each failed end attempt

    every_s: float
    down: bool = False
    last_attempt: float = 0.0

    def due(self, now: float) -> bool:
        return not self.down or now - self.last_attempt >= self.every_s

    def attempt(self, now: float) -> None:
        self.last_attempt = now

    def failed(self) -> bool:
        """Record a failed flush; True when it starts an outage (warn once, not per retry)."""
        started, self.down = not self.down, True
        return started

    def succeeded(self) -> bool:
        """Record a successful flush; True when it ends an outage."""
        ended, self.down = self.down, False
        return ended

    def end_waits(self) -> Iterator[float]:
        for attempt in range(self.END_ATTEMPTS):
            yield self.END_BACKOFF_S * (attempt + 1)


# ---- the callback ----------------------------------------------------------------------------


class MlflowTrialLogger(tune.Callback):
    """Logs each trial as a child run of `parent_run_id`: params, per-epoch metrics (step =
    epoch), final status tag and its best checkpoint.

    Hooks only queue operations. The queue is written to MLflow every `flush_every_s`, and a
    trial's operations at once when it ends, with one `log_batch` per run for everything
    queued: one sqlite transaction costs about as much for six epochs as for one
    (benchmarks/RESULTS_sweeps.md), so per-epoch calls made MLflow 1.6% of a short trial.

    What is queued is never lost:
    * an MLflow server that goes away does not stop the sweep: trials keep training, the
      queue waits (retried as `RetryPolicy` says, at most every `retry_every_s`) and is
      logged in order once the server is back;
    * the queue is part of Tune's experiment snapshot (`get_state`), so a driver killed
      before a flush resumes with it. Epochs reported after the snapshot are reported again
      by the trials resumed from it, and steps MLflow has already are skipped. (Tune writes
      the callbacks' state a few milliseconds after the trials'; a kill inside that gap
      resumes with the previous snapshot's queue and can miss the epochs queued between.)
    * what is still unlogged when the sweep ends goes to `backlog_path` as JSON lines.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        base_params: dict[str, Any],
        backlog_path: str,
        log_checkpoints: bool = True,
        retry_every_s: float = 10.0,
        flush_every_s: float = 30.0,
        dataset: Dataset | None = None,
        eager_runs: bool = False,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_params = base_params  # constants shared by every trial, logged with each
        self.backlog_path = backlog_path
        self.log_checkpoints = log_checkpoints
        self.retry_every_s = retry_every_s
        self.flush_every_s = flush_every_s
        self.dataset = dataset  # the corpus, logged as each trial run's input
        self.eager_runs = eager_runs  # create a trial's run when it starts, not at a flush
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._resumed: set[str] = set()  # runs this logger found in MLflow rather than created
        self._last_step: dict[str, int] = {}  # run id -> last epoch logged
        self._params: dict[str, set[str]] = {}  # run id -> param keys logged
        self._closed: set[str] = set()
        self._with_dataset: set[str] = set()  # run ids whose corpus input is logged
        self._placement: dict[str, dict[str, str]] = {}  # run id -> node/GPU tags set
        self._queue: deque[Op] = deque()
        self._retry = RetryPolicy(self.retry_every_s)
        self._last_flush = time.monotonic()
        self._indexed = False

    # The callback is pickled with the Tuner: its settings (the public attributes, the
    # constructor's arguments) travel; its live state (private) is rebuilt on restore.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ---- Tune's experiment snapshot --------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        # Never None: Tune would then keep an older snapshot's queue and replay it on resume.
        return {"queue": [op_row(op) for op in self._queue]}

    def set_state(self, state: dict[str, Any]) -> None:
        # A sweep killed while ending resumes with trials still to run: no orphans to close.
        ops = (op_from_row(row) for row in state.get("queue", []))
        self._queue = deque(op for op in ops if not isinstance(op, CloseOrphansOp))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = tracking_client(self.tracking_uri)
        return self._client

    # ---- hooks: queue an operation; flush when due --------------------------------------------

    def setup(self, **info: Any) -> None:
        self._flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = flatten("", self.base_params) | flatten("", trial.config)
        self._queue.append(StartOp(trial.trial_id, params, _now_ms()))
        if self.eager_runs:
            self._flush(trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {
            key: float(value)
            for key, value in result.items()
            if key not in RAY_RESULT_KEYS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        placement = {f"ray.{k}": str(result[k]) for k in PLACEMENT_KEYS if k in result}
        self._queue.append(MetricsOp(trial.trial_id, step, metrics, _now_ms(), placement))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune calls this before it sets the trial's status: the trial has ended regardless.
        self._queue.append(self._finish_op(trial, "TERMINATED"))
        self._flush(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._queue.append(self._finish_op(trial, "ERROR"))
        self._flush(trial.trial_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Finish what can be finished, close runs the sweep can no longer finish (none left
        RUNNING), and keep what MLflow would not take in the backlog file."""
        self._queue_missing_finishes(trials)
        self._queue.append(CloseOrphansOp())
        for wait_s in self._retry.end_waits():
            if self._flush(everything=True):
                return
            time.sleep(wait_s)
        self._write_backlog()

    # ---- the queue ---------------------------------------------------------------------------

    def _finish_op(self, trial: Any, ray_status: str | None = None) -> FinishOp:
        tag = trial_status(ray_status or trial.status, trial.last_result)
        error = trial_error_text(trial) if tag == TrialStatus.FAILED else None
        checkpoint = (
            trial.checkpoint if self.log_checkpoints and tag != TrialStatus.FAILED else None
        )
        return FinishOp(trial.trial_id, tag, error, checkpoint, _now_ms())

    def _queue_missing_finishes(self, trials: list) -> None:
        """An end for each trial that ended without one queued or logged (Tune's clean-up
        after Ctrl-C, a trial whose end hook's flush was lost)."""
        queued = {op.trial_id for op in self._queue if isinstance(op, FinishOp)}
        mentioned = set(_trial_ids(self._queue))
        for trial in trials:
            if trial.status in ("TERMINATED", "ERROR") and trial.trial_id not in queued:
                run_id = self._runs.get(trial.trial_id)
                reported = "epoch" in (trial.last_result or {})  # Tune pre-fills some keys
                never_ran = run_id is None and not reported and trial.status != "ERROR"
                if never_ran and trial.trial_id not in mentioned:
                    continue  # a queued trial the sweep's end cancelled: no run to show for it
                if run_id is None or run_id not in self._closed:
                    self._queue.append(self._finish_op(trial))

    def _flush(self, trial_id: str | None = None, everything: bool = False) -> bool:
        """Write queued operations: one trial's (`trial_id`), all of them when `everything` (the
        sweep's end, which also skips the retry wait) or when `flush_every_s` has passed, else
        none. True when the queue is empty after."""
        if not self._queue:
            return True
        now = time.monotonic()
        if self._retry.down:
            if not everything and not self._retry.due(now):
                return False
        elif trial_id is None and not everything and now - self._last_flush < self.flush_every_s:
            return False
        self._retry.attempt(now)
        if trial_id is None:
            self._last_flush = now
        try:
            self._write(trial_id)
        except Exception as exc:  # server down, network, store errors: RetryPolicy retries
            if self._retry.failed():
                LOG.warning(
                    "MLflow at %s failed (%s: %s); trials go on, %d logging operation(s) "
                    "queued and retried every %.0f s",
                    masked(self.tracking_uri),
                    type(exc).__name__,
                    str(exc)[:300],
                    len(self._queue),
                    self.retry_every_s,
                )
            return False
        if self._retry.succeeded():
            LOG.warning(
                "MLflow at %s reachable again; queued operations logged", masked(self.tracking_uri)
            )
        return not self._queue

    def _write(self, trial_id: str | None) -> None:
        """One trial's queued operations, or every trial's and then, once nothing else is
        left, the orphans' closing."""
        trial_ids = [trial_id] if trial_id else list(dict.fromkeys(_trial_ids(self._queue)))
        for each in trial_ids:
            self._flush_trial(each)
        if trial_id is None and list(self._queue) == [CloseOrphansOp()]:
            self._close_orphans()
            self._queue.clear()

    def _flush_trial(self, trial_id: str) -> None:
        """One trial's queued operations, in order: what comes before (and with) each of its
        ends in one `log_batch`, then the end itself. Done operations leave the queue at once,
        so a failure part-way repeats nothing but idempotent calls."""
        ops = [op for op in self._queue if isinstance(op, TrialOp) and op.trial_id == trial_id]
        while ops:
            cut = next((i + 1 for i, op in enumerate(ops) if isinstance(op, FinishOp)), len(ops))
            segment, ops = ops[:cut], ops[cut:]
            run_id = self._run_id(trial_id, first_ms=segment[0].at_ms)
            finish = segment[-1] if isinstance(segment[-1], FinishOp) else None
            self._log_segment(run_id, segment, finish)
            done = {id(op) for op in segment if op is not finish}
            self._queue = deque(op for op in self._queue if id(op) not in done)
            if finish is not None:
                self._log_finish(run_id, finish)
                self._queue.remove(finish)

    def _log_segment(self, run_id: str, segment: list[TrialOp], finish: FinishOp | None) -> None:
        params: dict[str, str] = {}
        metrics: list[Metric] = []
        tags: dict[str, str] = {}
        last_step = self._last_step[run_id]
        for op in segment:
            if isinstance(op, StartOp):
                params |= op.params
                if run_id in self._resumed:
                    self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                self._closed.discard(run_id)
            elif isinstance(op, MetricsOp):
                if op.placement and self._placement.get(run_id) != op.placement:
                    # A retried trial may land on another node: the tags say where it ran last.
                    tags |= op.placement
                    self._placement[run_id] = op.placement
                if op.step > last_step:  # else re-reported after a restore: in MLflow already
                    metrics += [Metric(k, v, op.at_ms, op.step) for k, v in op.values.items()]
                    last_step = op.step
        if finish is not None:
            tags[TAG_TRIAL_STATUS] = finish.status
            if finish.error is not None:
                tags[TAG_ERROR] = finish.error[-MAX_TAG_LENGTH:]
        logged = self._logged(run_id)  # the same set object: updated below once written
        new_params = [Param(k, v) for k, v in params.items() if k not in logged]
        log_batch(self.client, run_id, metrics, new_params, tags)
        logged.update(p.key for p in new_params)
        self._last_step[run_id] = last_step

    def _log_finish(self, run_id: str, finish: FinishOp) -> None:
        if finish.checkpoint is not None:
            self._log_checkpoint(run_id, finish.checkpoint)
        self.client.set_terminated(run_id, RUN_STATUS[finish.status], end_time=finish.at_ms)
        self._closed.add(run_id)

    def _logged(self, run_id: str) -> set[str]:
        if run_id not in self._params:
            self._params[run_id] = set(self.client.get_run(run_id).data.params)
        return self._params[run_id]

    def _index_existing_runs(self) -> None:
        """Child runs that exist already (a resumed sweep), by trial id: reused, not duplicated."""
        for run in child_runs(self.client, self.experiment_id, self.parent_run_id):
            trial_id = run.data.tags.get(TAG_TRIAL_ID)
            if trial_id:
                self._runs[trial_id] = run.info.run_id
                self._resumed.add(run.info.run_id)
        self._indexed = True

    def _run_id(self, trial_id: str, first_ms: int | None = None) -> str:
        if not self._indexed:
            self._index_existing_runs()
        run_id = self._runs.get(trial_id)
        if run_id is None:
            run_id = create_child_run(
                self.client,
                self.experiment_id,
                self.parent_run_id,
                f"trial-{trial_id}",
                {TAG_TRIAL_ID: trial_id, TAG_ROLE: "trial"},
                start_ms=first_ms,
            )
            self._runs[trial_id] = run_id
            self._last_step[run_id] = 0
            self._params[run_id] = set()
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "epoch")
            self._last_step[run_id] = max((int(m.step) for m in history), default=0)
        if self.dataset is not None and run_id not in self._with_dataset:
            # After the run is known, so an outage here retries the input, not the run.
            log_dataset(self.client, run_id, self.dataset)
            self._with_dataset.add(run_id)
        return run_id

    def _log_checkpoint(self, run_id: str, checkpoint: Any) -> None:
        """The trial's best weights. (No learning-curve PNG: MLflow charts the metrics.)"""
        with checkpoint.as_directory() as folder:
            best = Path(folder) / "best.pt"
            if best.exists():
                self.client.log_artifact(run_id, str(best), artifact_path="checkpoint")

    def _close_orphans(self) -> None:
        for run in child_runs(self.client, self.experiment_id, self.parent_run_id):
            if run.info.status == "RUNNING" and run.data.tags.get(TAG_ROLE) == "trial":
                self.client.set_tag(run.info.run_id, TAG_TRIAL_STATUS, TrialStatus.INTERRUPTED)
                self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))

    def _write_backlog(self) -> None:
        path = Path(self.backlog_path)
        with path.open("a") as handle:
            for op in self._queue:
                plain = [getattr(x, "path", x) for x in op_row(op)]  # a Checkpoint: its path
                handle.write(json.dumps(plain, default=str) + "\n")
        LOG.error(
            "MLflow at %s: %d operation(s) could not be logged; kept in %s",
            masked(self.tracking_uri),
            len(self._queue),
            path,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _trial_ids(queue: Iterable[Op]) -> list[str]:
    return [op.trial_id for op in queue if isinstance(op, TrialOp)]
