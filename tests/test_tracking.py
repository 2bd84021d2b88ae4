"""sweeps.tracking against a real MLflow store (sqlite in a temporary folder)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from sweeps.tracking import (
    TAG_FORGOTTEN,
    TAG_ROLE,
    TAG_TRIAL_ID,
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
