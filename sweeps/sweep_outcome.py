"""What a sweep ended with: its result (the best feasible trial), trials.csv, and the outcome
recorded on the MLflow parent run; the errors for a sweep that failed, found nothing feasible
or was interrupted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from sweeps.databases import masked
from sweeps.pareto import feasible_front, leaders
from sweeps.space import SweepSpec
from sweeps.sweep_folder import BACKLOG_FILE, SweepState, resume_command
from sweeps.tracking import (
    TrackingError,
    child_runs,
    flatten,
    mark_interrupted_trials,
    tag_feasibility,
    tag_forgotten_trials,
    tracking_client,
)
from sweeps.trials import (
    Constraint,
    TrialRecord,
    TrialStatus,
    at_best_key,
    best_key,
    best_value,
    epochs_run,
    feasible,
    ranked,
    values_at_best,
)


class SweepFailedError(RuntimeError):
    """Every trial of the sweep failed, or none met the sweep's constraints."""


class NoFeasibleTrialError(SweepFailedError):
    """Trials ran and reported the objective, but none met `sweep.constraints`: nothing to
    finalise, though no trial failed."""


class SweepInterruptedError(RuntimeError):
    """The driver was stopped (Ctrl-C, SIGTERM) before every trial had run."""


@dataclass
class SweepResult:
    sweep_dir: Path
    metric: str
    mode: str
    trials: list[TrialRecord]
    best: TrialRecord | None
    best_value: float | None
    tracking_uri: str
    parent_run_id: str
    # A `--resume` found every trial already run: nothing was trained or logged again.
    already_complete: bool = False
    experiment_id: str = ""
    # sweep.constraints: `best` is the best trial that meets them (None: none does).
    constraints: tuple[Constraint, ...] = ()
    # finalise.enabled: whether `sweeps/run.py` retrains the best config after the sweep.
    finalise_enabled: bool = True


def sweep_result(
    spec: SweepSpec,
    state: SweepState,
    sweep_dir: Path,
    trials: list[TrialRecord],
    already_complete: bool = False,
) -> SweepResult:
    constraints = spec.sweep.parsed_constraints()
    leading = leaders(trials, spec.sweep.objectives, constraints, spec.finalise.pick)
    best, best_score = (leading[0][0], leading[0][1]) if leading else (None, None)
    return SweepResult(
        sweep_dir,
        spec.sweep.metric,
        spec.sweep.mode,
        trials,
        best,
        best_score,
        state.tracking_uri,
        state.parent_run_id,
        already_complete,
        state.experiment_id,
        constraints,
        spec.finalise.enabled,
    )


def no_best_reason(spec: SweepSpec, trials: list[TrialRecord]) -> str | None:
    """When trials have a value but none meets the constraints: a sentence saying so, with how
    close the trials came to each bound; else None (no trial has a value: they failed)."""
    constraints = spec.sweep.parsed_constraints()
    metric, mode = spec.sweep.metric, spec.sweep.mode
    scored = [record for record, _, _ in ranked(trials, metric, mode)]
    if not constraints or not scored:
        return None
    reached = []
    for constraint in constraints:
        values = [values_at_best(t, metric, mode, [constraint.metric]) for t in scored]
        found = [v[constraint.metric] for v in values if v[constraint.metric] is not None]
        if constraint.operator in (">=", ">"):
            closest = f"the most any trial reached: {max(found):g}" if found else "no value"
        else:
            closest = f"the least any trial reached: {min(found):g}" if found else "no value"
        reached.append(f"{constraint} ({closest})")
    return (
        f"no trial met the constraints, judged at each trial's best epoch of {metric}: "
        f"{'; '.join(reached)}; {len(scored)} of {len(trials)} trials reported {metric}. "
        "Relax sweep.constraints or widen the search"
    )


def write_trials_csv(sweep_dir: Path, trials: list[TrialRecord], spec: SweepSpec) -> Path:
    """One row per trial: its best value of the (first) objective; with several objectives,
    the others at that epoch and whether it is on the Pareto front; with constraints,
    `feasible` and each constrained metric at that epoch (`at_best_<metric>`)."""
    import pandas as pd

    (metric, mode), *others = spec.sweep.objectives
    constraints = spec.sweep.parsed_constraints()
    also = [m for m, _ in others]
    at_best = also + [c.metric for c in constraints if c.metric not in also]
    on_front = set()
    if others:
        front = feasible_front(trials, spec.sweep.objectives, constraints)
        on_front = {record.trial_id for record, _ in front}
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            "epochs": epochs_run(t),
            best_key(metric): best_value(t, metric, mode),
        }
        values = values_at_best(t, metric, mode, at_best) if at_best else {}
        row |= {at_best_key(name): value for name, value in values.items()}
        if others:
            row["pareto"] = t.trial_id in on_front
        if constraints:
            row["feasible"] = feasible(t, metric, mode, constraints)
        row |= {f"param.{k}": v for k, v in t.params.items()}
        row["error"] = (t.error or "").splitlines()[-1] if t.error else ""
        rows.append(row)
    path = sweep_dir / "trials.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def close_parent(state: SweepState, status: RunStatus, reason: str) -> None:
    """Best effort: the error being raised matters more than MLflow's answer."""
    try:
        client = tracking_client(state.tracking_uri)
        client.set_tag(state.parent_run_id, "emovae.error", reason[:5000])
        client.set_terminated(state.parent_run_id, RunStatus.to_string(status))
    except Exception:  # noqa: S110 - MLflow down: the run stays as it was, the error still raises
        pass


def stop_interrupted(
    spec: SweepSpec,
    state: SweepState,
    sweep_dir: Path,
    trials: list[TrialRecord],
    n_interrupted: int,
) -> None:
    """A driver stopped mid-sweep (Ctrl-C, SIGTERM): record what ran, finalise nothing."""
    csv_path = write_trials_csv(sweep_dir, trials, spec)
    ended = len(trials) - n_interrupted
    not_started = spec.sweep.num_samples - len(trials)
    summary = (
        f"{ended} of {spec.sweep.num_samples} trials ended, {n_interrupted} interrupted "
        f"(running or queued), {not_started} not proposed yet"
    )
    try:
        client = tracking_client(state.tracking_uri)
        runs = child_runs(client, state.experiment_id, state.parent_run_id)
        cut_short = {t.trial_id for t in trials if t.status == TrialStatus.INTERRUPTED}
        mark_interrupted_trials(client, runs, cut_short)
    except Exception:  # noqa: S110 - MLflow down: the runs stay as they were; resume fixes them
        pass
    close_parent(state, RunStatus.KILLED, f"interrupted: {summary}")
    raise SweepInterruptedError(
        f"the sweep was interrupted: {summary} (trials so far: {csv_path}); nothing was "
        f"finalised. Continue it with: {resume_command(sweep_dir)}"
    )


def record_outcome(
    spec: SweepSpec,
    state: SweepState,
    sweep_dir: Path,
    result: SweepResult,
) -> None:
    """trials.csv and the parent run's outcome; errors when MLflow missed part of the sweep or
    every trial failed. (No per-trial learning-curve PNG: MLflow's UI charts every metric per
    epoch, and drawing them cost more than the trials' MLflow logging itself,
    benchmarks/RESULTS_sweeps.md.)"""
    trials = result.trials
    constraints = spec.sweep.parsed_constraints()
    csv_path = write_trials_csv(sweep_dir, trials, spec)
    backlog = sweep_dir / BACKLOG_FILE
    unlogged = (
        f"; trial logging that never reached it is listed in {backlog}"
        if backlog.exists() and backlog.stat().st_size
        else ""
    )
    client = tracking_client(state.tracking_uri)
    try:
        runs = child_runs(client, state.experiment_id, state.parent_run_id)
        tag_forgotten_trials(client, runs, {t.trial_id for t in trials})
        if constraints:
            verdicts = {
                t.trial_id: feasible(t, spec.sweep.metric, spec.sweep.mode, constraints)
                for t in trials
            }
            tag_feasibility(client, runs, verdicts)
        _log_outcome(client, state, spec, trials, result.best, result.best_value, csv_path)
    except Exception as exc:  # the sweep's results are on disk whatever MLflow says now
        reason = f"{type(exc).__name__}: {exc}"[:300]
        raise TrackingError(
            f"the sweep finished (results: {csv_path}) but MLflow at {masked(state.tracking_uri)} "
            f"failed while recording it ({reason}){unlogged}"
        ) from exc
    if unlogged:
        raise TrackingError(
            f"the sweep finished (results: {csv_path}) but MLflow at {masked(state.tracking_uri)} "
            f"missed some of it{unlogged}"
        )
    if result.best is None:
        infeasible = no_best_reason(spec, trials)
        if infeasible is not None:
            raise NoFeasibleTrialError(f"{infeasible} (trials: {csv_path}); nothing was finalised.")
        first_error = next((t.error for t in trials if t.error), "no trial reported a result")
        raise SweepFailedError(f"all {len(trials)} trials failed; first error:\n{first_error}")


def _log_outcome(
    client: MlflowClient,
    state: SweepState,
    spec: SweepSpec,
    trials: list[TrialRecord],
    best: TrialRecord | None,
    best_score: float | None,
    csv_path: Path,
) -> None:
    client.log_artifact(state.parent_run_id, str(csv_path))
    for status in (TrialStatus.FINISHED, TrialStatus.KILLED_BY_ASHA, TrialStatus.FAILED):
        count = sum(t.status == status for t in trials)
        client.set_tag(state.parent_run_id, f"trials.{status.lower()}", str(count))
    if best is None:
        reason = no_best_reason(spec, trials) or "every trial failed"
        client.set_tag(state.parent_run_id, "emovae.error", reason[:5000])
        client.set_terminated(state.parent_run_id, RunStatus.to_string(RunStatus.FAILED))
        return
    client.log_metric(state.parent_run_id, best_key(spec.sweep.metric), best_score)
    # Tags, not params: a resumed sweep may find a new best, and MLflow params are write-once.
    for key, value in flatten("best", best.params | {"trial_id": best.trial_id}).items():
        client.set_tag(state.parent_run_id, key, value)
    client.set_terminated(state.parent_run_id, RunStatus.to_string(RunStatus.FINISHED))
