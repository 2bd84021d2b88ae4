"""MLflow tracking of a sweep: one parent run, one nested child run per Ray trial.

All logging happens in the driver, through a Tune callback, not inside trials: one writer
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
import os
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray import tune

from emovae.evaluate import plot_learning_curves
from sweeps.databases import (
    DatabaseError,
    check_database,
    check_mlflow_schema,
    has_literal_password,
    is_database_url,
    masked,
    resolved_uri,
)
from sweeps.results import trial_error_text, trial_status
from sweeps.trials import TrialStatus

LOG = logging.getLogger(__name__)
TAG_TRIAL_ID = "ray.trial_id"
TAG_ROLE = "emovae.role"  # sweep | trial | final
TAG_TRIAL_STATUS = "emovae.trial_status"  # a sweeps.trials.TrialStatus
TAG_ERROR = "emovae.error"
# On a run whose trial Ray no longer knows: see tag_forgotten_trials.
TAG_FORGOTTEN = "emovae.forgotten_by_ray"
# true/false: whether the trial meets sweep.constraints at its best epoch (sweeps.trials.feasible)
TAG_FEASIBLE = "emovae.feasible"
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


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


def tracking_client(uri: str) -> MlflowClient:
    return MlflowClient(resolved_uri(uri))


def default_tracking_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before Ray starts when the tracking store cannot be used: an MLflow server that
    does not answer, or a database (a team's MLflow on PostgreSQL) that cannot be reached or
    holds MLflow's tables at another schema. sqlite files are created by MLflow itself."""
    given, uri = uri, resolved_uri(uri)
    if is_database_url(uri):
        if has_literal_password(given):
            raise TrackingError(
                f"--tracking-uri {masked(given)}: write the password as an environment "
                "variable reference in single quotes, e.g. "
                "'postgresql+psycopg2://mlflow:${POSTGRES_PASSWORD}@db-host/mlflow': the sweep "
                "folder stores the URI as given"
            )
        try:
            check_database(uri, "MLflow tracking store", timeout_s)
            check_mlflow_schema(uri, timeout_s)
        except DatabaseError as exc:
            raise TrackingError(str(exc)) from exc
        return
    if not uri.startswith(("http://", "https://")):
        return
    shown = masked(uri)
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server {shown} is unreachable ({type(exc).__name__}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000 ...) or drop --tracking-uri to log "
            "to a local sqlite store in the sweep folder"
        ) from exc
    if response.status_code != 200:
        raise TrackingError(
            f"MLflow tracking server {shown} answered {response.status_code} on /health"
        )
    # /health is exempt from MLflow's Host-header check; a real API call is not.
    api = requests.get(
        f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        timeout=timeout_s,
    )
    if api.status_code != 200:
        raise TrackingError(
            f"MLflow tracking server {shown} refused an API call ({api.status_code}: "
            f"{api.text[:200]}); if it names the Host header, add this host to the server's "
            "--allowed-hosts"
        )


def git_commit(repo: Path) -> str:
    """The checkout's commit; images without .git set EMOVAE_GIT_COMMIT at build time."""
    if os.environ.get("EMOVAE_GIT_COMMIT"):
        return os.environ["EMOVAE_GIT_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


# MLflow 3's UI opens an experiment of unknown kind on its GenAI overview; this kind opens it
# on its runs table.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or experiment.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return experiment_id


def corpus_dataset(
    name: str, fingerprint: str, source: str, counts: dict[str, dict[str, int]]
) -> Dataset:
    """The corpus as an MLflow dataset (the runs table's Dataset column): its name, content
    fingerprint, and clips per emotion in each split."""
    profile = {"clips": {split: sum(per.values()) for split, per in counts.items()}} | counts
    return Dataset(
        name=name,
        digest=fingerprint[:36],  # MLflow keeps at most 36 characters
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps(profile),
    )


def log_dataset(client: MlflowClient, run_id: str, dataset: Dataset) -> None:
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, "training")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """Nested mapping -> {"prefix.key": "value"} for MLflow params (strings of <= 6000 chars)."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat |= flatten(name, value)
        else:
            flat[name] = str(value)[:6000]
    return flat


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params not logged yet (MLflow refuses to change a logged param, e.g. on resume)."""
    existing = client.get_run(run_id).data.params
    log_batch(client, run_id, [], [Param(k, v) for k, v in params.items() if k not in existing], {})


# MLflow's limits per log_batch call.
MAX_BATCH_ENTITIES, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 1000, 100, 100


def log_batch(
    client: MlflowClient,
    run_id: str,
    metrics: list[Metric],
    params: list[Param],
    tags: dict[str, str],
) -> None:
    """As few `log_batch` calls as MLflow's limits allow (usually one)."""
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    while metrics or params or tag_list:
        batch_params, params = params[:MAX_BATCH_PARAMS], params[MAX_BATCH_PARAMS:]
        batch_tags, tag_list = tag_list[:MAX_BATCH_TAGS], tag_list[MAX_BATCH_TAGS:]
        room = MAX_BATCH_ENTITIES - len(batch_params) - len(batch_tags)
        batch_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)


def create_child_run(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    name: str,
    tags: dict[str, str],
    start_ms: int | None = None,
) -> str:
    run = client.create_run(
        experiment_id,
        start_time=start_ms,
        run_name=name,
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name} | tags,
    )
    return run.info.run_id


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=10000,
    )


RUN_STATUS = {
    TrialStatus.FINISHED: "FINISHED",
    TrialStatus.KILLED_BY_ASHA: "KILLED",
    TrialStatus.FAILED: "FAILED",
    TrialStatus.INTERRUPTED: "KILLED",
}


def log_learning_curves(
    client: MlflowClient, runs: list, histories: dict[str, list[dict[str, float]]]
) -> int:
    """Each trial's learning curves as `plots/learning_curves.png` of its child run (among
    `runs`, from `child_runs`), drawn from its per-epoch history (trial id -> rows); the number
    of plots logged. Logging again (a resumed sweep) replaces the file."""
    run_ids = {run.data.tags.get(TAG_TRIAL_ID): run.info.run_id for run in runs}
    logged = 0
    with tempfile.TemporaryDirectory() as scratch:
        for trial_id, history in histories.items():
            if history and trial_id in run_ids:
                curves = plot_learning_curves(history, Path(scratch) / "learning_curves.png")
                client.log_artifact(run_ids[trial_id], str(curves), artifact_path="plots")
                logged += 1
    return logged


def tag_forgotten_trials(client: MlflowClient, runs: list, trial_ids: set[str]) -> list[str]:
    """Tag the child runs (among `runs`, from `child_runs`) whose trial is not among
    `trial_ids` (Ray's trials after the sweep); their trial ids. Ray snapshots its experiment state a moment after each result, so a
    driver killed in between resumes without the trials that result started or ended, and
    reruns their slots as new trials; the runs keep what those trials did, marked, not
    deleted."""
    forgotten = []
    for run in runs:
        trial_id = run.data.tags.get(TAG_TRIAL_ID)
        if run.data.tags.get(TAG_ROLE) == "trial" and trial_id not in trial_ids:
            client.set_tag(run.info.run_id, TAG_FORGOTTEN, "true")
            forgotten.append(trial_id)
    return forgotten


def tag_feasibility(client: MlflowClient, runs: list, verdicts: dict[str, bool]) -> None:
    """Tag each trial's child run (among `runs`, from `child_runs`) with whether it met the
    sweep's constraints (trial id -> verdict); set after the sweep from the trial records, so
    the tag and the finaliser's choice come from the same histories."""
    for run in runs:
        trial_id = run.data.tags.get(TAG_TRIAL_ID)
        if run.data.tags.get(TAG_ROLE) == "trial" and trial_id in verdicts:
            client.set_tag(run.info.run_id, TAG_FEASIBLE, str(verdicts[trial_id]).lower())


def mark_interrupted_trials(client: MlflowClient, runs: list, trial_ids: set[str]) -> None:
    """Close the child runs (among `runs`) of trials a stopped driver cut short as KILLED,
    tagged INTERRUPTED: Tune's clean-up after Ctrl-C ends them like finished trials, so the
    logger cannot tell them apart; a resumed sweep reopens and continues them."""
    for run in runs:
        if run.data.tags.get(TAG_ROLE) == "trial" and run.data.tags.get(TAG_TRIAL_ID) in trial_ids:
            client.set_tag(run.info.run_id, TAG_TRIAL_STATUS, TrialStatus.INTERRUPTED)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


class MlflowTrialLogger(tune.Callback):
    """Logs each trial as a child run of `parent_run_id`: params, per-epoch metrics (step =
    epoch), final status tag and its best checkpoint.

    Hooks only queue operations. The queue is written to MLflow every `flush_every_s`, and a
    trial's operations at once when it ends, with one `log_batch` per run for everything
    queued: one sqlite transaction costs about as much for six epochs as for one
    (benchmarks/RESULTS_sweeps.md), so per-epoch calls made MLflow 1.6% of a short trial.

    What is queued is never lost:
    * an MLflow server that goes away does not stop the sweep: trials keep training, the
      queue waits (retried at most every `retry_every_s`) and is logged in order once the
      server is back;
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
        self._queue: deque[tuple] = deque()
        self._down_since: float | None = None
        self._last_attempt = 0.0
        self._last_flush = time.monotonic()
        self._indexed = False

    # The callback is pickled with the Tuner; its live state is rebuilt on restore.
    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "tracking_uri",
            "experiment_id",
            "parent_run_id",
            "base_params",
            "backlog_path",
            "log_checkpoints",
            "retry_every_s",
            "flush_every_s",
            "dataset",
            "eager_runs",
        )
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ---- Tune's experiment snapshot --------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        # Never None: Tune would then keep an older snapshot's queue and replay it on resume.
        return {"queue": list(self._queue)}

    def set_state(self, state: dict[str, Any]) -> None:
        # A sweep killed while ending resumes with trials still to run: no orphans to close.
        self._queue = deque(op for op in state.get("queue", []) if op[0] != "close_orphans")

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = tracking_client(self.tracking_uri)
        return self._client

    @property
    def pending(self) -> int:
        return len(self._queue)

    # ---- hooks: queue an operation; flush when due --------------------------------------------

    def setup(self, **info: Any) -> None:
        self._flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = flatten("", self.base_params) | flatten("", trial.config)
        self._queue.append(("start", trial.trial_id, params, _now_ms()))
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
        self._queue.append(("metrics", trial.trial_id, step, metrics, _now_ms(), placement))

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
        queued = {op[1] for op in self._queue if op[0] == "finish"}
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
        self._queue.append(("close_orphans",))
        for attempt in range(3):
            self._last_attempt = 0.0
            if self._flush(everything=True):
                return
            time.sleep(2.0 * (attempt + 1))
        self._write_backlog()

    # ---- the queue ---------------------------------------------------------------------------

    def _finish_op(self, trial: Any, ray_status: str | None = None) -> tuple:
        tag = trial_status(ray_status or trial.status, trial.last_result)
        error = trial_error_text(trial) if tag == TrialStatus.FAILED else None
        checkpoint = (
            trial.checkpoint if self.log_checkpoints and tag != TrialStatus.FAILED else None
        )
        return ("finish", trial.trial_id, tag, error, checkpoint, _now_ms())

    def _flush(self, trial_id: str | None = None, everything: bool = False) -> bool:
        """Write queued operations: one trial's (`trial_id`), all of them when `everything` or
        when `flush_every_s` has passed, else none. True when the queue is empty after."""
        if not self._queue:
            return True
        now = time.monotonic()
        if self._down_since is not None:
            if now - self._last_attempt < self.retry_every_s:
                return False
        elif trial_id is None and not everything and now - self._last_flush < self.flush_every_s:
            return False
        self._last_attempt = now
        if trial_id is None:
            self._last_flush = now
        try:
            trial_ids = [trial_id] if trial_id else list(dict.fromkeys(_trial_ids(self._queue)))
            for each in trial_ids:
                self._flush_trial(each)
            if trial_id is None and [op[0] for op in self._queue] == ["close_orphans"]:
                self._close_orphans()
                self._queue.clear()
        except Exception as exc:  # server down, network, store errors: retry later
            if self._down_since is None:
                self._down_since = time.monotonic()
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
        if self._down_since is not None:
            LOG.warning(
                "MLflow at %s reachable again; queued operations logged", masked(self.tracking_uri)
            )
            self._down_since = None
        return not self._queue

    def _flush_trial(self, trial_id: str) -> None:
        """One trial's queued operations, in order: what comes before (and with) each of its
        ends in one `log_batch`, then the end itself. Done operations leave the queue at once,
        so a failure part-way repeats nothing but idempotent calls."""
        ops = [op for op in self._queue if len(op) > 1 and op[1] == trial_id]
        while ops:
            cut = next((i + 1 for i, op in enumerate(ops) if op[0] == "finish"), len(ops))
            segment, ops = ops[:cut], ops[cut:]
            run_id = self._run_id(trial_id, first_ms=_op_ms(segment[0]))
            finish = segment[-1] if segment[-1][0] == "finish" else None
            self._log_segment(run_id, segment, finish)
            done = {id(op) for op in segment if op is not finish}
            self._queue = deque(op for op in self._queue if id(op) not in done)
            if finish is not None:
                self._log_finish(run_id, finish)
                self._queue.remove(finish)

    def _log_segment(self, run_id: str, segment: list[tuple], finish: tuple | None) -> None:
        params: dict[str, str] = {}
        metrics: list[Metric] = []
        tags: dict[str, str] = {}
        last_step = self._last_step[run_id]
        for op in segment:
            if op[0] == "start":
                params |= op[2]
                if run_id in self._resumed:
                    self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                self._closed.discard(run_id)
            elif op[0] == "metrics":
                _, _, step, values, timestamp, placement = op
                if placement and self._placement.get(run_id) != placement:
                    # A retried trial may land on another node: the tags say where it ran last.
                    tags |= placement
                    self._placement[run_id] = placement
                if step > last_step:  # else re-reported after a restore: in MLflow already
                    metrics += [Metric(k, v, timestamp, step) for k, v in values.items()]
                    last_step = step
        if finish is not None:
            tags[TAG_TRIAL_STATUS] = finish[2]
            if finish[3] is not None:
                tags[TAG_ERROR] = finish[3][-MAX_TAG_LENGTH:]
        logged = self._logged(run_id)  # the same set object: updated below once written
        new_params = [Param(k, v) for k, v in params.items() if k not in logged]
        log_batch(self.client, run_id, metrics, new_params, tags)
        logged.update(p.key for p in new_params)
        self._last_step[run_id] = last_step

    def _log_finish(self, run_id: str, finish: tuple) -> None:
        _, _, tag, _, checkpoint, end_ms = finish
        if checkpoint is not None:
            self._log_checkpoint(run_id, checkpoint)
        self.client.set_terminated(run_id, RUN_STATUS[tag], end_time=end_ms)
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
        """The trial's best weights. Its learning curves are drawn after the sweep
        (`log_learning_curves`): drawing them here took 73% of the MLflow time per trial, on
        Tune's event loop, while other trials waited (benchmarks/RESULTS_sweeps.md)."""
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
                plain = [getattr(x, "path", x) for x in op]  # a Checkpoint becomes its path
                handle.write(json.dumps(plain, default=str) + "\n")
        LOG.error(
            "MLflow at %s: %d operation(s) could not be logged; kept in %s",
            masked(self.tracking_uri),
            len(self._queue),
            path,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _op_ms(op: tuple) -> int:
    """When a queued start, metrics or finish operation happened (ms since the epoch)."""
    return op[{"start": 3, "metrics": 4, "finish": 5}[op[0]]]


def _trial_ids(queue: deque[tuple]) -> list[str]:
    return [op[1] for op in queue if len(op) > 1]
