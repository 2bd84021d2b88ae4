"""MLflow tracking of a sweep: one parent run, one nested child run per Ray trial.

The store's side: checking a tracking URI before Ray starts, the experiment, child runs and
their batched logging, and the tags set on trial runs after the sweep from Ray's records.
The trials' runs are written during the sweep by the Tune callback in sweeps.trial_logger.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from sweeps.databases import (
    DatabaseError,
    check_database,
    check_mlflow_schema,
    has_literal_password,
    is_database_url,
    masked,
    resolved_uri,
)
from sweeps.trials import TrialStatus

TAG_TRIAL_ID = "ray.trial_id"
TAG_ROLE = "emovae.role"  # sweep | trial | final
TAG_TRIAL_STATUS = "emovae.trial_status"  # a sweeps.trials.TrialStatus
TAG_ERROR = "emovae.error"
# On a run whose trial Ray no longer knows: see tag_forgotten_trials.
TAG_FORGOTTEN = "emovae.forgotten_by_ray"
# true/false: whether the trial meets sweep.constraints at its best epoch (sweeps.trials.feasible)
TAG_FEASIBLE = "emovae.feasible"


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


def tag_forgotten_trials(client: MlflowClient, runs: list, trial_ids: set[str]) -> list[str]:
    """Tag the child runs (among `runs`, from `child_runs`) whose trial is not among
    `trial_ids` (Ray's trials after the sweep); their trial ids. Ray saves its experiment
    state every few seconds (sweeps.tuner.TUNE_SAVE_PERIOD_S), so a driver killed between two
    saves resumes without the trials started since the last one, and reruns their slots as new
    trials; the runs keep what those trials did, marked, not deleted."""
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


def __getattr__(name: str) -> Any:
    # Tuners pickled before the callback moved to sweeps.trial_logger name it by this module,
    # and `--resume` unpickles them. Imported on demand: sweeps.trial_logger imports this module.
    if name == "MlflowTrialLogger":
        from sweeps.trial_logger import MlflowTrialLogger

        return MlflowTrialLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
