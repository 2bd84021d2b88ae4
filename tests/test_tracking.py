"""sweeps.tracking against a real MLflow store (sqlite in a temporary folder)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient
from ray import cloudpickle

from sweeps.tracking import (
    TAG_FORGOTTEN,
    TAG_ROLE,
    TAG_TRIAL_ID,
    TAG_TRIAL_STATUS,
    MlflowTrialLogger,
    child_runs,
    create_child_run,
    ensure_experiment,
    tag_forgotten_trials,
)


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


def store(tmp_path: Path) -> tuple[MlflowClient, str, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "emovae-test", (tmp_path / "art").as_uri())
    parent = client.create_run(experiment, tags={TAG_ROLE: "sweep"}).info.run_id
    return client, uri, experiment, parent


def trial_logger(tmp_path: Path, uri: str, experiment: str, parent: str, flush_every_s: float):
    logger = MlflowTrialLogger(
        uri,
        experiment,
        parent,
        {"data": {"path": "synthetic"}},
        backlog_path=str(tmp_path / "backlog.jsonl"),
        flush_every_s=flush_every_s,
    )
    logger._client = CountingClient(uri)
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


def test_queued_epochs_reach_mlflow_in_one_batch_when_the_trial_ends(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    logger = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600)
    trial = fake_trial("t1")
    run_trial(logger, trial, (1, 2, 3))
    logger.on_step_end(0, [trial])
    assert child_runs(client, experiment, parent) == []  # queued, not written yet
    assert logger.pending == 4

    end_trial(logger, trial, last_epoch=True)
    (run,) = child_runs(client, experiment, parent)
    assert logger.pending == 0 and logger.client.log_batch_calls == 1
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
    assert logger.client.log_batch_calls == 2 and logger.pending == 0


def test_a_killed_driver_resumes_its_queue_from_tunes_snapshot(tmp_path: Path):
    client, uri, experiment, parent = store(tmp_path)
    first = trial_logger(tmp_path, uri, experiment, parent, flush_every_s=3600)
    trial = fake_trial("t1")
    run_trial(first, trial, (1, 2))
    # What Tune keeps of the callback: the Tuner's pickle of it, and its snapshot state.
    state = cloudpickle.loads(cloudpickle.dumps(first.get_state()))
    second = cloudpickle.loads(cloudpickle.dumps(first))
    second.set_state(state)
    second._client = CountingClient(uri)
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
    assert second.pending == 0
    (run,) = child_runs(client, experiment, parent)
    assert epochs_of(client, run.info.run_id) == [1, 2]
