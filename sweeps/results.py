"""Ray Tune's experiment folder -> one `TrialRecord` per trial (status, params, epoch history)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sweeps.trials import TrialRecord, TrialStatus

# Ray's bookkeeping columns; the rest of a trial's progress rows are the trainer's metrics.
_RAY_COLUMNS = frozenset(
    {
        "timestamp",
        "checkpoint_dir_name",
        "should_checkpoint",
        "done",
        "training_iteration",
        "trial_id",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "time_since_restore",
        "iterations_since_restore",
    }
)


def trial_status(ray_status: str, last_result: dict[str, Any] | None) -> TrialStatus:
    """A trial's end from Ray's status and its last result's `is_last_epoch` flag."""
    if ray_status == "ERROR":
        return TrialStatus.FAILED
    if ray_status != "TERMINATED":
        return TrialStatus.INTERRUPTED
    if (last_result or {}).get("is_last_epoch", 0.0) >= 1.0:
        return TrialStatus.FINISHED
    return TrialStatus.KILLED_BY_ASHA


def trial_error_text(trial: Any) -> str | None:
    """The trial's error trace: the local error file (written before Ray's callbacks run),
    else the copy in storage (a restored sweep), else a placeholder."""
    if trial.status != "ERROR":
        return None
    text = None
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text()
        else:
            text = trial.get_error()
        if not text and trial.path and (Path(trial.path) / "error.txt").is_file():
            # Where Tune writes it in the trial's storage folder, also for errors (such as a
            # failed restore) whose file name the Trial does not record.
            text = (Path(trial.path) / "error.txt").read_text()
    except Exception:  # the error file may be gone with a lost node; the status still stands
        text = None
    return str(text).strip() if text else "trial raised an error (no trace saved)"


def _history(frame: Any) -> list[dict[str, float]]:
    if frame is None or len(frame) == 0:
        return []
    columns = [c for c in frame.columns if c not in _RAY_COLUMNS and not c.startswith("config/")]
    rows = []
    for row in frame[columns].to_dict("records"):
        clean = {
            k: float(v)
            for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        rows.append(clean)
    # A trial restored from a checkpoint re-reports epochs after it: keep the latest row per epoch.
    by_epoch = {int(r.get("epoch", i + 1)): r for i, r in enumerate(rows)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def load_trial_records(tune_dir: str | Path) -> list[TrialRecord]:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(tune_dir))
    frames = analysis.trial_dataframes
    return [
        TrialRecord(
            trial_id=trial.trial_id,
            params={k: (v.item() if hasattr(v, "item") else v) for k, v in trial.config.items()},
            status=trial_status(trial.status, trial.last_result),
            history=_history(frames.get(trial.trial_id)),
            error=trial_error_text(trial),
        )
        for trial in analysis.trials
    ]
