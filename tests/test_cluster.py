"""The sweep on a real multi-node Ray cluster with a real MLflow tracking server (issue 5).

Each test starts its own servers on 127.0.0.1 (a `ray.cluster_utils.Cluster` whose nodes are
separate raylets, an `mlflow server` on a sqlite store) and stops exactly those. The sweep is
the shipped `quick` space, shrunk as in test_sweep_e2e.py, run by the real CLI: through the
job server (`ray job submit`) or as a driver process joining the cluster with `--address`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from cluster_helpers import (
    BIN,
    REPO,
    free_port,
    mlflow_server,
    ray_cluster,
    trial_checkpoints,
    trial_results,
)
from mlflow.tracking import MlflowClient
from test_sweep_e2e import SHRINK

from sweeps.tracking import TAG_ROLE, TAG_TRIAL_ID, TAG_TRIAL_STATUS

pytestmark = pytest.mark.slow


def sweep_args(out: Path, cache: Path, *extra: str) -> list[str]:
    """`sweeps/run.py` arguments: the shrunk quick space, plus `extra` overrides."""
    args = ["sweeps/run.py", "--space", "quick", "--out", str(out), "--no-finalise"]
    for override in [*SHRINK, f"data.cache_dir={cache}", *extra]:
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


def test_job_submit_on_two_node_cluster_tracks_in_mlflow_server(tmp_path: Path) -> None:
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
        args = sweep_args(
            out,
            tmp_path / "cache",
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
            shlex.quote(sys.executable),
            *args,
            "--address",
            "auto",
            "--tracking-uri",
            server.uri,
        ]
        submit = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
        from ray.job_submission import JobStatus, JobSubmissionClient

        jobs = JobSubmissionClient(job_address)
        assert submission_id in {j.submission_id for j in jobs.list_jobs()}, (
            submit.stdout[-3000:] + submit.stderr[-6000:]
        )
        status = jobs.get_job_status(submission_id)
        logs = jobs.get_job_logs(submission_id)
        assert status == JobStatus.SUCCEEDED, (status, submit.stderr[-3000:], logs[-6000:])
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

    # Results and checkpoints landed in the sweep's storage path, from both nodes.
    checkpoints = trial_checkpoints(out / "tune")
    assert len(checkpoints) == 4 and all(checkpoints.values()), checkpoints
    for folders in checkpoints.values():
        assert (folders[-1] / "last.pt").is_file() and (folders[-1] / "best.pt").is_file()
    assert (out / "sweep.json").is_file() and (out / "trials.csv").is_file()
    assert list((out / "tune").glob("experiment_state-*.json"))
