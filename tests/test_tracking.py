"""sweeps.tracking and sweeps.trial_logger against a real MLflow store (sqlite in a temporary
folder)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient
from ray import cloudpickle

from sweeps import tracking
from sweeps.tracking import (
    TAG_FORGOTTEN,
    TAG_ROLE,
    TAG_TRIAL_ID,
    TAG_TRIAL_STATUS,
    child_runs,
    create_child_run,
    ensure_experiment,
    tag_forgotten_trials,
)
from sweeps.trial_logger import MlflowTrialLogger


def test_runs_of_trials_ray_forgot_are_tagged_not_deleted(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = ensure_experiment(client, "emovae-test", (tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={TAG_ROLE: "sweep"}).info.run_id
    runs = {
        trial: create_child_run(
            client, experiment, parent, f"trial-{trial}", {TAG_TRIAL_ID: trial, TAG_ROLE: "trial"}
        )
        for trial in ("a", "b", "c")
    }
    client.log_metric(runs["c"], "val_recon", 1.0, step=1)

    runs_now = child_runs(client, experiment, parent)
    assert tag_forgotten_trials(client, runs_now, {"a", "b"}) == ["c"]
    tags = {t: client.get_run(r).data.tags for t, r in runs.items()}
    assert tags["c"][TAG_FORGOTTEN] == "true"
    assert TAG_FORGOTTEN not in tags["a"] and TAG_FORGOTTEN not in tags["b"]
    assert client.get_run(runs["c"]).data.metrics == {"val_recon": 1.0}  # kept


# ---- MlflowTrialLogger: the Tune callback, driven hook by hook -----------------------------


class CountingClient(MlflowClient):
    """A real client that counts its log_batch calls."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.log_batch_calls = 0

    def log_batch(self, *args, **kwargs):
        self.log_batch_calls += 1
        return super().log_batch(*args, **kwargs)


class FlakyClient(CountingClient):
    """A real client for a server that refuses every call while `down` is set."""

    def __init__(self, uri: str):
        super().__init__(uri)
        self.down = False
        self.refused = 0

    def _answer(self) -> None:
        if self.down:
            self.refused += 1
            raise ConnectionError("MLflow is down")

    def search_runs(self, *args, **kwargs):
        self._answer()
        return super().search_runs(*args, **kwargs)

    def create_run(self, *args, **kwargs):
        self._answer()
        return super().create_run(*args, **kwargs)

    def log_batch(self, *args, **kwargs):
        self._answer()
        return super().log_batch(*args, **kwargs)


def store(tmp_path: Path) -> tuple[MlflowClient, str, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "emovae-test", (tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={TAG_ROLE: "sweep"}).info.run_id
    return client, uri, experiment, parent


def trial_logger(
    tmp_path: Path,
    uri: str,
    experiment: str,
    parent: str,
    flush_every_s: float,
    retry_every_s: float = 10.0,
):
    logger = MlflowTrialLogger(
        uri,
        experiment,
        parent,
        {"data": {"path": "synthetic"}},
        backlog_path=str(tmp_path / "backlog.jsonl"),
        flush_every_s=flush_every_s,
        retry_every_s=retry_every_s,
    )
    logger._client = FlakyClient(uri)
    return logger


def fake_trial(trial_id: str, status: str = "RUNNING", last_epoch: bool = False):
    """The attributes of a Ray Trial that the logger reads."""
    return SimpleNamespace(
        trial_id=trial_id,
        config={"lr": 0.001, "beta": 0.01},
        status=status,
        last_result={"is_last_epoch": float(last_epoch)},
        checkpoint=None,
    )


def report(logger: MlflowTrialLogger, trial, epoch: int) -> None:
    result = {"epoch": epoch, "val_recon": 1.0 / epoch, "done": False, "node_id": "n1"}
    logger.on_trial_result(0, [trial], trial, result)


def run_trial(logger: MlflowTrialLogger, trial, epochs: tuple[int, ...]) -> None:
    """The trial starts (again, after a resume) and reports `epochs`."""
    logger.on_trial_start(0, [trial], trial)
    for epoch in epochs:
        report(logger, trial, epoch)


def end_trial(logger: MlflowTrialLogger, trial, last_epoch: bool) -> None:
    """The trial ends: by itself (`last_epoch`) or stopped by ASHA."""
    trial.status, trial.last_result = "TERMINATED", {"is_last_epoch": float(last_epoch)}
    logger.on_trial_complete(0, [trial], trial)


def epochs_of(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, "epoch"))


def queued_kinds(logger: MlflowTrialLogger) -> list[str]:
    """What the logger has not written yet, as Tune's snapshot of it holds it."""
    return [row[0] for row in logger.get_state()["queue"]]


def test_queued_epochs_reach_mlflow_in_one_batch_when_the_trial_ends(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    logger = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600)
    trial = fake_trial("t1")
    run_trial(logger, trial, (1, 2, 3))
    logger.on_step_end(0, [trial])
    assert child_runs(client, experiment, parent) == []  # queued, not written yet
    assert queued_kinds(logger) == ["start", "metrics", "metrics", "metrics"]

    end_trial(logger, trial, last_epoch=True)
    (run,) = child_runs(client, experiment, parent)
    assert queued_kinds(logger) == [] and logger.client.log_batch_calls == 1
    assert epochs_of(client, run.info.run_id) == [1, 2, 3]
    assert run.data.params == {"data.path": "synthetic", "lr": "0.001", "beta": "0.01"}
    assert run.data.tags[TAG_TRIAL_STATUS] == "FINISHED" and run.data.tags["ray.node_id"] == "n1"
    assert run.info.status == "FINISHED"


def test_a_due_flush_writes_every_running_trial(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    logger = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=0)
    trials = [fake_trial("a"), fake_trial("b")]
    for trial in trials:
        run_trial(logger, trial, (1,))
    logger.on_step_end(0, trials)
    runs = child_runs(client, experiment, parent)
    assert sorted(r.data.tags[TAG_TRIAL_ID] for r in runs) == ["a", "b"]
    assert all(epochs_of(client, r.info.run_id) == [1] for r in runs)
    assert all(r.info.status == "RUNNING" for r in runs)
    assert logger.client.log_batch_calls == 2 and queued_kinds(logger) == []


def test_a_killed_driver_resumes_its_queue_from_tunes_snapshot(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    first = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600)
    trial = fake_trial("t1")
    run_trial(first, trial, (1, 2))
    # What Tune keeps of the callback: the Tuner's pickle of it, and its snapshot state.
    state = cloudpickle.loads(cloudpickle.dumps(first.get_state()))
    second = cloudpickle.loads(cloudpickle.dumps(first))
    second.set_state(state)
    second._client = FlakyClient(uri)
    assert child_runs(client, experiment, parent) == []  # the first driver wrote nothing

    # Resumed from its epoch-1 checkpoint, the trial reports epoch 2 again, then 3.
    run_trial(second, trial, (2, 3))
    end_trial(second, trial, last_epoch=True)
    (run,) = child_runs(client, experiment, parent)
    assert epochs_of(client, run.info.run_id) == [1, 2, 3]
    assert run.info.status == "FINISHED"


def test_a_resumed_sweep_continues_the_trials_run(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    first = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=0)
    trial = fake_trial("t1")
    run_trial(first, trial, (1, 2))
    first.on_step_end(0, [trial])  # written; then the driver dies without a snapshot

    second = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600)
    run_trial(second, trial, (2, 3))
    end_trial(second, trial, last_epoch=False)
    (run,) = child_runs(client, experiment, parent)
    assert epochs_of(client, run.info.run_id) == [1, 2, 3]
    assert run.data.tags[TAG_TRIAL_STATUS] == "KILLED_BY_ASHA" and run.info.status == "KILLED"


def test_a_restored_queue_without_a_start_writes_to_the_existing_run(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    first = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=0)
    trial = fake_trial("t1")
    run_trial(first, trial, (1,))
    first.on_step_end(0, [trial])  # the run and epoch 1 are in MLflow
    report(first, trial, 2)  # queued when Tune snapshots, then the driver dies
    state = cloudpickle.loads(cloudpickle.dumps(first.get_state()))

    second = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=0)
    second.set_state(state)
    second.on_step_end(0, [])  # only epoch 2 queued for a run the logger did not create
    assert queued_kinds(second) == []
    (run,) = child_runs(client, experiment, parent)
    assert epochs_of(client, run.info.run_id) == [1, 2]


# ---- MLflow down: the retry policy and the backlog ------------------------------------------


def test_a_queue_mlflow_refused_is_logged_in_order_once_it_is_back(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    logger = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600, retry_every_s=0)
    trial = fake_trial("t1")
    logger.client.down = True
    run_trial(logger, trial, (1, 2))
    end_trial(logger, trial, last_epoch=True)  # its flush fails: the queue stays
    assert logger.client.refused == 1
    assert queued_kinds(logger) == ["start", "metrics", "metrics", "finish"]

    logger.client.down = False
    logger.on_step_end(0, [trial])  # a retry is due (retry_every_s=0), though no flush is
    (run,) = child_runs(client, experiment, parent)
    assert epochs_of(client, run.info.run_id) == [1, 2] and run.info.status == "FINISHED"
    assert queued_kinds(logger) == []


def test_mlflow_down_is_retried_at_most_every_retry_every_s(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    logger = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=0, retry_every_s=3600)
    trial = fake_trial("t1")
    logger.client.down = True
    run_trial(logger, trial, (1,))
    logger.on_step_end(0, [trial])
    logger.client.down = False
    logger.on_step_end(0, [trial])  # a flush is due, but the retry is not
    assert logger.client.refused == 1
    assert child_runs(client, experiment, parent) == []
    assert queued_kinds(logger) == ["start", "metrics"]


def test_what_mlflow_refuses_at_the_end_goes_to_the_backlog(tmp_path: Path, monkeypatch):
    _, uri, experiment, parent = store(tmp_path)
    logger = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600)
    sleeps: list[float] = []
    monkeypatch.setattr("sweeps.trial_logger.time.sleep", sleeps.append)
    trial = fake_trial("t1")
    logger.client.down = True
    run_trial(logger, trial, (1, 2))
    end_trial(logger, trial, last_epoch=True)
    logger.on_experiment_end([trial])
    # The end hook's flush, then three last attempts at the sweep's end, without waiting
    # out retry_every_s.
    assert logger.client.refused == 4 and sleeps == [2.0, 4.0, 6.0]
    # One JSON list per operation: [kind, trial id, its fields in order].
    rows = [json.loads(line) for line in (tmp_path / "backlog.jsonl").read_text().splitlines()]
    assert [row[0] for row in rows] == ["start", "metrics", "metrics", "finish", "close_orphans"]
    start, first, second, finish, _ = rows
    assert start[1:3] == ["t1", {"data.path": "synthetic", "lr": "0.001", "beta": "0.01"}]
    assert [first[1:3], second[1:3]] == [["t1", 1], ["t1", 2]]
    assert first[3] == {"epoch": 1.0, "val_recon": 1.0} and first[5] == {"ray.node_id": "n1"}
    assert finish[1:5] == ["t1", "FINISHED", None, None]


# ---- sweeps started before the callback left sweeps.tracking --------------------------------


def test_a_sweep_snapshotted_by_an_older_logger_resumes(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    older = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=0)
    # Pickle protocol 0 names the class as text: rename it to where older Tuners found it.
    pickled = pickle.dumps(older, protocol=0)
    assert b"csweeps.trial_logger\nMlflowTrialLogger\n" in pickled
    pickled = pickled.replace(b"csweeps.trial_logger\n", b"csweeps.tracking\n")
    logger = pickle.loads(pickled)
    assert type(logger) is MlflowTrialLogger and logger.backlog_path == older.backlog_path
    logger._client = FlakyClient(uri)

    # The older logger's snapshot: its queue of tuples.
    params = {"lr": "0.001"}
    metrics = ("metrics", "t1", 1, {"val_recon": 1.0}, 1000, {})
    logger.set_state({"queue": [("start", "t1", params, 1000), metrics, ("close_orphans",)]})
    assert queued_kinds(logger) == ["start", "metrics"]  # the sweep is not over: no closing
    logger.on_step_end(0, [])
    (run,) = child_runs(client, experiment, parent)
    assert run.data.params == params and run.data.metrics == {"val_recon": 1.0}


def test_sweeps_tracking_still_lacks_what_it_never_had():
    # benchmarks/bench_sweeps.py probes it with hasattr: its alias must not answer for all.
    assert not hasattr(tracking, "read_checkpoint")
