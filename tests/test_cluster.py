"""The sweep on a real multi-node Ray cluster with a real MLflow tracking server (issue 5).

Each test starts its own servers on 127.0.0.1 (a `ray.cluster_utils.Cluster` whose nodes are
separate raylets, an `mlflow server` on a sqlite store, or for the outage test on a PostgreSQL
database of its own) and stops exactly those. The sweep is the shipped `quick` space, shrunk
as in test_sweep_e2e.py, run by the real CLI: through the job server (`ray job submit`) or as
a driver process joining the cluster with `--address`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from cluster_helpers import (
    BIN,
    REPO,
    MlflowServer,
    finish_driver,
    free_port,
    loopback_ray_env,
    mlflow_server,
    postgres_rows,
    ray_cluster,
    start_driver,
    stop_group,
    tail,
    trial_checkpoints,
    trial_results,
    wait_for,
)
from mlflow.tracking import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.tune import ExperimentAnalysis
from test_sweep_e2e import NO_EMOTION, SHRINK

from sweeps.driver import BACKLOG_FILE
from sweeps.tracking import TAG_ROLE, TAG_TRIAL_ID, TAG_TRIAL_STATUS

pytestmark = pytest.mark.slow


def sweep_args(out: Path, cache: Path, *extra: str) -> list[str]:
    """`sweeps/run.py` arguments: the shrunk quick space, plus `extra` overrides."""
    args = ["sweeps/run.py", "--space", "quick", "--out", str(out), "--no-finalise"]
    # Emotion metrics are tested in test_sweep_e2e.py; here they would only add time.
    for override in [*SHRINK, *NO_EMOTION, f"data.cache_dir={cache}", *extra]:
        args += ["--set", override]
    return args


def experiment_runs(uri: str) -> tuple[MlflowClient, list]:
    client = MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name.startswith("emovae-")]
    assert len(experiments) == 1, [e.name for e in experiments]
    return client, client.search_runs([experiments[0].experiment_id], max_results=1000)


def trial_runs(runs: list) -> list:
    return [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]


def epoch_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, "val_recon"))


def check_consistent(client: MlflowClient, runs: list, trial_ids: set[str]) -> list:
    """One MLflow run per Ray trial, none left RUNNING, each with one value per epoch from 1
    and no gap, and a final status that matches the run's; the trial runs."""
    trials = trial_runs(runs)
    counts = Counter(r.data.tags[TAG_TRIAL_ID] for r in trials)
    assert set(counts) == trial_ids, (sorted(counts), sorted(trial_ids))
    assert set(counts.values()) == {1}, counts
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    for r in trials:
        steps = epoch_steps(client, r.info.run_id)
        assert steps and steps == list(range(1, len(steps) + 1)), (r.data.tags[TAG_TRIAL_ID], steps)
        status = r.data.tags[TAG_TRIAL_STATUS]
        assert status in ("FINISHED", "KILLED_BY_ASHA"), status
        assert r.info.status == ("FINISHED" if status == "FINISHED" else "KILLED")
    return trials


# ---- 1. ray job submit on a two-node cluster, tracked in an MLflow server -----------------


def test_job_submit_on_two_node_cluster_tracks_in_mlflow_server(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out, dash = tmp_path / "sweep", free_port()
    head = {
        "num_cpus": 1,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": dash,
    }
    with (
        mlflow_server(tmp_path / "mlflow") as server,
        ray_cluster(head, workers=[{"num_cpus": 1}]) as cluster,
    ):
        node_ids = {cluster.head_node.node_id} | {n.node_id for n in cluster.worker_nodes}
        job_address = f"http://127.0.0.1:{dash}"
        submission_id = f"emovae-test-{uuid.uuid4().hex[:8]}"
        commit = f"test-{uuid.uuid4().hex[:12]}"
        args = sweep_args(
            out,
            sweep_cache,
            "sweep.num_samples=4",
            "sweep.max_concurrent=2",
            "sweep.cpus_per_trial=1",
            "train.max_epochs=3",
        )
        # The documented route (docker/README.md, route 3): upload the working directory with
        # docker/runtime_env.yaml's excludes, run the CLI on the head, join with --address auto.
        command = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            job_address,
            "--submission-id",
            submission_id,
            "--runtime-env",
            "docker/runtime_env.yaml",
            "--",
            "env",
            f"EMOVAE_GIT_COMMIT={commit}",  # the upload has no .git (docker/README.md)
            shlex.quote(sys.executable),
            *args,
            "--address",
            "auto",
            "--tracking-uri",
            server.uri,
        ]
        submit = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
        jobs = JobSubmissionClient(job_address)
        assert submission_id in {j.submission_id for j in jobs.list_jobs()}, (
            submit.stdout[-3000:] + submit.stderr[-6000:]
        )
        status = jobs.get_job_status(submission_id)
        logs = jobs.get_job_logs(submission_id)
        (tmp_path / "job.log").write_text(logs)
        assert status == JobStatus.SUCCEEDED, f"{status}\n{submit.stderr[-2000:]}\n{logs[-8000:]}"
        assert submit.returncode == 0, submit.stderr[-3000:]
        assert "Sweep finished" in logs

        # Trials ran on both nodes: each run's ray.node_id tag, and the trainers' own reports.
        results = trial_results(out / "tune")
        assert len(results) == 4, sorted(results)
        client, runs = experiment_runs(server.uri)  # through the server, not its sqlite file
        trials = check_consistent(client, runs, set(results))
        assert {r.data.tags["ray.node_id"] for r in trials} == node_ids
        assert {row["node_id"] for rows in results.values() for row in rows} == node_ids
        assert all(r.data.tags["ray.gpu_ids"] == "" for r in trials)
        (parent,) = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
        assert parent.data.tags["git_commit"] == commit

    # Results and checkpoints landed in the sweep's storage path, those of the trials on the
    # worker node too: every trial has its checkpoint folder with the trainer's files.
    checkpoints = trial_checkpoints(out / "tune")
    assert len(checkpoints) == 4 and all(checkpoints.values()), checkpoints
    for folders in checkpoints.values():
        assert (folders[-1] / "last.pt").is_file() and (folders[-1] / "best.pt").is_file()
    assert (out / "sweep.json").is_file() and (out / "trials.csv").is_file()
    assert list((out / "tune").glob("experiment_state-*.json"))


# ---- 2. a worker node dies mid-trial --------------------------------------------------------


def driver_command(out: Path, cache: Path, *extra: str, options: tuple[str, ...] = ()) -> list:
    return [sys.executable, *sweep_args(out, cache, *extra), *options]


def epochs(rows: list[dict]) -> list[int]:
    return [int(row["epoch"]) for row in rows]


NODE_LOSS_EPOCHS = 16


def test_worker_node_loss_retries_its_trial_from_the_last_checkpoint(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out, log = tmp_path / "sweep", tmp_path / "driver.log"
    # One CPU per node and two trials at once: the first two trials start one on each node.
    # Every trial runs all its epochs (no ASHA stop: grace_period = max_epochs; no early stop:
    # patience = max_epochs), each long enough (more data) to kill the node between two, and
    # enough of them that the trial on the worker is still training when the kill lands (with 6,
    # a fast machine, CI at stop 29, had finished it by then).
    extra = (
        "sweep.num_samples=2",
        "sweep.max_concurrent=2",
        "sweep.cpus_per_trial=1",
        "sweep.max_failures=2",
        "data.synthetic_per_emotion=8",
        f"train.max_epochs={NODE_LOSS_EPOCHS}",
        f"train.patience={NODE_LOSS_EPOCHS}",
        f"sweep.grace_period={NODE_LOSS_EPOCHS}",
    )
    with ray_cluster({"num_cpus": 1}, workers=[{"num_cpus": 1}]) as cluster:
        head_id = cluster.head_node.node_id
        (worker,) = cluster.worker_nodes
        command = driver_command(out, sweep_cache, *extra, options=("--address", cluster.address))
        driver = start_driver(command, log)
        try:

            def on_worker() -> str | None:
                for trial_id, rows in trial_results(out / "tune").items():
                    if rows[-1]["node_id"] == worker.node_id:
                        return trial_id
                return None

            victim = wait_for(on_worker, 300, "a trial's first epoch on the worker node", 0.5)
            assert driver.poll() is None, tail(log)
            seen = epochs(trial_results(out / "tune")[victim])
            assert seen[-1] < NODE_LOSS_EPOCHS, f"{victim} ran all its epochs before the kill"
            cluster.remove_node(worker, allow_graceful=False)  # SIGKILL: a lost machine
            code, output = finish_driver(driver, log, timeout=600)
        finally:
            stop_group(driver)
    assert code == 0, output[-6000:]

    # Ray retried the trial on the head from its last checkpoint: the first result after the
    # restore is the epoch after the last one reported before it, not epoch 1 again.
    results = trial_results(out / "tune")
    assert len(results) == 2
    rows = results[victim]
    history = [(r["epoch"], r["iterations_since_restore"], r["node_id"][:8]) for r in rows]
    restarts = [i for i, r in enumerate(rows) if i and r["iterations_since_restore"] == 1]
    assert restarts, history
    all_epochs = list(range(1, NODE_LOSS_EPOCHS + 1))
    assert epochs(rows) == all_epochs, history  # in order: none repeated, none lost
    assert {r["node_id"] for r in rows[: restarts[0]]} == {worker.node_id}, history
    assert {r["node_id"] for r in rows[restarts[-1] :]} == {head_id}, history
    assert rows[-1]["iterations_since_restore"] < rows[-1]["training_iteration"] == NODE_LOSS_EPOCHS

    failures = {t.trial_id: t.num_failures for t in ExperimentAnalysis(str(out / "tune")).trials}
    assert failures[victim] >= 1 and all(n == 0 for t, n in failures.items() if t != victim)

    # MLflow: one run per trial, each epoch once (nothing logged twice after the restore).
    client, runs = experiment_runs(f"sqlite:///{out / 'mlflow.db'}")
    trials = check_consistent(client, runs, set(results))
    by_trial = {r.data.tags[TAG_TRIAL_ID]: r for r in trials}
    assert epoch_steps(client, by_trial[victim].info.run_id) == all_epochs
    assert by_trial[victim].data.tags["ray.node_id"] == head_id  # where it ran last
    assert by_trial[victim].data.tags[TAG_TRIAL_STATUS] == "FINISHED"


# ---- 3. the MLflow server goes away mid-sweep -----------------------------------------------


def logged_epochs(uri: str) -> int:
    """Epochs logged to the server so far, over all trial runs (0 while it has none)."""
    try:
        client, runs = experiment_runs(uri)
    except Exception:  # no experiment yet, or the server is busy starting
        return 0
    return sum(len(epoch_steps(client, r.info.run_id)) for r in trial_runs(runs))


def test_mlflow_server_outage_mid_sweep_loses_nothing(
    tmp_path: Path, sweep_cache: Path, mlflow_backend_store: str | None
) -> None:
    """The server's store is a PostgreSQL database of the test's own, as a team's server has
    (`mlflow_backend_store`: the server on 127.0.0.1:5432, required on CI), else its sqlite
    file: the server is killed mid-sweep and restarted on the same store and port."""
    out, log = tmp_path / "sweep", tmp_path / "driver.log"
    # Two trials at once, each about 2 min of training on a 2-core machine (more data per
    # epoch, about 2 s an epoch; no ASHA or early stop): still training when the server is
    # back up, although a restarted server took 33 s to answer while the trials kept both
    # cores busy (at 32 epochs both trials had finished before it was up once).
    extra = (
        "data.synthetic_per_emotion=8",
        "sweep.num_samples=2",
        "train.max_epochs=64",
        "train.patience=64",
        "sweep.grace_period=64",
        "sweep.mlflow_flush_s=2",  # writes while the server is down, so the outage shows
    )
    store = mlflow_backend_store
    with loopback_ray_env(), mlflow_server(tmp_path / "mlflow", store) as server:
        command = driver_command(out, sweep_cache, *extra, options=("--tracking-uri", server.uri))
        driver = start_driver(command, log)
        try:
            wait_for(lambda: logged_epochs(server.uri) >= 1, 300, "an epoch in MLflow", 2)
            server.kill()
            down_at = time.time()
            # Restarted as soon as the driver has met the outage, not after a fixed 12 s: the
            # restart itself took 8 to 20 s, and on a faster machine an epoch took 0.55 s (35 s
            # a trial), so after 12 s of waiting both trials once ended before it was back.
            wait_for(
                lambda: "trials go on" in log.read_text(), 60, "the driver to meet the outage", 0.5
            )
            assert driver.poll() is None, tail(log)  # the sweep goes on without its server
            server.start()  # same port, same store
            up_at = time.time()
            done = [rows for rows in trial_results(out / "tune").values() if rows[-1]["done"]]
            assert driver.poll() is None and len(done) < 2, "the sweep ended before the restart"
            code, output = finish_driver(driver, log, timeout=600)
        finally:
            stop_group(driver)
        assert code == 0, output[-6000:]
        assert "MLflow at" in output and "reachable again" in output
        assert not (out / BACKLOG_FILE).exists() or not (out / BACKLOG_FILE).read_text()

        # Trials trained while the server was down, and every epoch they reported is in it.
        results = trial_results(out / "tune")
        assert len(results) == 2
        during = [r for rows in results.values() for r in rows if down_at < r["timestamp"] < up_at]
        assert during, "no epoch ended during the outage"
        client, runs = experiment_runs(server.uri)
        trials = check_consistent(client, runs, set(results))
        for r in trials:
            reported = sorted(set(epochs(results[r.data.tags[TAG_TRIAL_ID]])))
            assert epoch_steps(client, r.info.run_id) == reported
        parent = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    if store is not None:  # what the server answered is what PostgreSQL holds
        in_postgres = {row[0] for row in postgres_rows(store, "SELECT run_uuid FROM runs")}
        assert in_postgres == {r.info.run_id for r in runs}


def test_mlflow_server_down_until_the_end_keeps_a_backlog(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out, log = tmp_path / "sweep", tmp_path / "driver.log"
    # Trials long enough that the server dies while they train: 8 epochs (about 15 s under
    # load) were over before the kill on an idle machine.
    extra = (
        "data.synthetic_per_emotion=8",
        "sweep.num_samples=2",
        "train.max_epochs=24",
        "train.patience=24",
        "sweep.grace_period=24",
        "sweep.mlflow_flush_s=2",  # an epoch in MLflow before the server dies
    )
    server = MlflowServer(tmp_path / "mlflow")
    with loopback_ray_env():
        server.start()
        try:
            command = driver_command(
                out, sweep_cache, *extra, options=("--tracking-uri", server.uri)
            )
            driver = start_driver(command, log)
            try:
                wait_for(lambda: logged_epochs(server.uri) >= 1, 300, "an epoch in MLflow", 2)
                server.kill()
                code, output = finish_driver(driver, log, timeout=600)
            finally:
                stop_group(driver)
            assert code == 2, output[-6000:]
            assert "trials.csv" in output  # the results are on disk whatever MLflow says

            # The backlog holds exactly what MLflow lacks: with the server back, the epochs
            # logged before the outage plus those in the backlog are each trial's epochs, once.
            backlog = [json.loads(line) for line in (out / BACKLOG_FILE).read_text().splitlines()]
            kinds = Counter(op[0] for op in backlog)
            assert kinds["metrics"] >= 1 and kinds["finish"] >= 1, kinds
            server.start()
            results = trial_results(out / "tune")
            client, runs = experiment_runs(server.uri)
            logged = {
                r.data.tags[TAG_TRIAL_ID]: epoch_steps(client, r.info.run_id)
                for r in trial_runs(runs)
            }
            # Each trial's end is in MLflow (a trial that finished before the outage) or in
            # the backlog, never in both and never lost.
            closed = {
                r.data.tags[TAG_TRIAL_ID] for r in trial_runs(runs) if r.info.status != "RUNNING"
            }
            queued_ends = [op[1] for op in backlog if op[0] == "finish"]
            assert not closed & set(queued_ends) and len(set(queued_ends)) == len(queued_ends)
            assert closed | set(queued_ends) == set(results), (closed, queued_ends)
            for trial_id, rows in results.items():
                queued = [op[2] for op in backlog if op[0] == "metrics" and op[1] == trial_id]
                assert sorted(logged.get(trial_id, []) + queued) == sorted(set(epochs(rows)))

            # The user is told where the unlogged operations are.
            errors = [line for line in output.splitlines() if line.startswith("error: ")]
            assert errors and str(out / BACKLOG_FILE) in errors[-1], errors
        finally:
            server.stop()


# ---- 4. fractional GPUs -----------------------------------------------------------------------


def test_fractional_gpus_share_one_gpu_between_concurrent_trials(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out, log = tmp_path / "sweep", tmp_path / "driver.log"
    extra = (
        "sweep.num_samples=4",
        "sweep.max_concurrent=4",
        "sweep.cpus_per_trial=0.5",
        "sweep.gpus_per_trial=0.25",
        "train.max_epochs=3",
        "sweep.grace_period=3",
    )
    # One node with one (logical) GPU: Ray hands out quarters of it; torch has no CUDA here,
    # so the trainer runs on the CPU, but Ray's assignment is what is under test.
    with ray_cluster({"num_cpus": 2, "num_gpus": 1}) as cluster:
        command = driver_command(out, sweep_cache, *extra, options=("--address", cluster.address))
        driver = start_driver(command, log)
        try:
            code, output = finish_driver(driver, log, timeout=600)
        finally:
            stop_group(driver)
    assert code == 0, output[-6000:]

    results = trial_results(out / "tune")
    assert len(results) == 4
    assert {row["gpu_ids"] for rows in results.values() for row in rows} == {"0"}
    client, runs = experiment_runs(f"sqlite:///{out / 'mlflow.db'}")
    trials = check_consistent(client, runs, set(results))
    assert [r.data.tags["ray.gpu_ids"] for r in trials] == ["0"] * 4

    # Several trials held GPU 0 at once: their training spans overlap.
    spans = [
        (rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"])
        for rows in results.values()
    ]
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most >= 2, spans


def test_cluster_without_a_node_of_the_trial_shape_gives_up_after_resource_wait_s(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out, log = tmp_path / "sweep", tmp_path / "driver.log"
    # No node has a GPU: an autoscaler could add one, so the driver waits, but only
    # sweep.resource_wait_s, and the trials stay pending for a later --resume.
    extra = ("sweep.num_samples=2", "sweep.gpus_per_trial=0.25", "sweep.resource_wait_s=5")
    with ray_cluster({"num_cpus": 2, "num_gpus": 0}) as cluster:
        address = cluster.address
        command = driver_command(out, sweep_cache, *extra, options=("--address", address))
        driver = start_driver(command, log)
        try:
            code, output = finish_driver(driver, log, timeout=300)
        finally:
            stop_group(driver)
    assert code == 2, output[-6000:]
    assert "waiting up to 5 s (sweep.resource_wait_s)" in output
    assert "no trial started within sweep.resource_wait_s=5 s" in output
    assert f"no node of the cluster at {address} has that" in output
    client, runs = experiment_runs(f"sqlite:///{out / 'mlflow.db'}")
    parent = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
    assert [r.info.status for r in parent] == ["FAILED"]
    assert not trial_runs(runs)
