"""The sweep folder's bookkeeping: its state file, and the checks that open it for a new sweep or
a `--resume`.

A sweep folder holds everything needed to resume or finalise it:
    sweep.json   the validated space, tracking URI, MLflow ids (written before any trial runs)
    optuna.journal  the Optuna study behind the search (or sweep.optuna_storage's database)
    tune/        Ray Tune's experiment state, trial results and checkpoints
    mlflow.db    the default MLflow store (sqlite), mlartifacts/ its artifacts
    trials.csv   one row per trial after the sweep
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from emovae.config import ConfigError
from emovae.runtime import atomic_write_text
from sweeps.results import load_trial_records
from sweeps.space import SweepSpec, spec_from_dict
from sweeps.study import StudyLocation, check_study, search_distributions
from sweeps.tracking import check_tracking_uri, default_tracking_uri
from sweeps.trials import TrialRecord, TrialStatus
from sweeps.warm_start import WarmStart, WarmStartError, WarmStartRequest, warm_start_points

STATE_FILE = "sweep.json"
BACKLOG_FILE = "mlflow_backlog.jsonl"  # MLflow operations a server outage kept from logging
TUNE_DIR = "tune"


def resume_command(sweep_dir: Path) -> str:
    return f"python sweeps/run.py --out {sweep_dir} --resume"


@dataclass
class SweepState:
    """What `--resume` and the finaliser read back from sweep.json."""

    space: dict[str, Any]  # the validated YAML mapping (overrides applied)
    name: str
    source: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str = ""  # owner mark of the sweep's Optuna study ("": a folder from before it)

    def spec(self) -> SweepSpec:
        return spec_from_dict(self.space, self.name, self.source)


@dataclass
class SweepPlan:
    """What the checks before Ray found; nothing is written yet."""

    spec: SweepSpec
    state: SweepState | None  # None: a new sweep
    study: StudyLocation
    warm: WarmStart | None = None


def read_state(sweep_dir: Path) -> SweepState:
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        raise ConfigError(f"{sweep_dir}: not a sweep folder ({STATE_FILE} missing)")
    return SweepState(**json.loads(path.read_text()))


def write_state(sweep_dir: Path, state: SweepState) -> None:
    atomic_write_text(sweep_dir / STATE_FILE, json.dumps(dataclasses.asdict(state), indent=1))


def sweep_complete(tune_path: Path, num_samples: int) -> list[TrialRecord] | None:
    """The trial records when every trial of the sweep has ended, else None."""
    if not tune.Tuner.can_restore(str(tune_path)):
        return None
    trials = load_trial_records(tune_path)
    if len(trials) < num_samples or any(t.status == TrialStatus.INTERRUPTED for t in trials):
        return None
    return trials


def open_sweep(
    spec: SweepSpec | None,
    sweep_dir: Path,
    tracking_uri: str | None,
    resume: bool,
    warm_start: WarmStartRequest | None,
) -> SweepPlan:
    """The sweep's space, its stored state on resume, its study, the warm start's trials;
    checks only, writes nothing."""
    if resume:
        if warm_start is not None:
            raise WarmStartError(
                f"--warm-start {warm_start.source}: only a new sweep starts warm; a resumed "
                "sweep continues the study it has"
            )
        state = read_state(sweep_dir)
        check_tracking_uri(state.tracking_uri)
        spec = state.spec()
        study = StudyLocation(str(sweep_dir), state.sweep_id, spec.sweep.optuna_storage)
        if state.sweep_id:
            check_study(study, resuming=True)
        return SweepPlan(spec, state, study)
    if spec is None:
        raise ValueError("a new sweep needs a search space")
    # A folder whose sweep never started a trial (it failed before) may be started again.
    if (sweep_dir / STATE_FILE).exists() and tune.Tuner.can_restore(str(sweep_dir / TUNE_DIR)):
        raise ConfigError(
            f"{sweep_dir}: a sweep already exists here; pass --resume to continue it "
            "or --out to start a new one"
        )
    check_tracking_uri(tracking_uri or default_tracking_uri(sweep_dir))  # a typo: no folder
    study = StudyLocation(str(sweep_dir), uuid.uuid4().hex, spec.sweep.optuna_storage)
    check_study(study, resuming=False)
    warm = _read_warm_start(warm_start, spec) if warm_start is not None else None
    return SweepPlan(spec, None, study, warm)


def _read_warm_start(request: WarmStartRequest, spec: SweepSpec) -> WarmStart:
    source = Path(request.source).resolve()
    if not (source / STATE_FILE).is_file() or not tune.Tuner.can_restore(str(source / TUNE_DIR)):
        raise WarmStartError(
            f"--warm-start {request.source}: not a sweep folder (expected {STATE_FILE} and "
            f"{TUNE_DIR}/ with trials, as sweeps/run.py writes them)"
        )
    return warm_start_points(
        str(source),
        read_state(source).spec(),
        load_trial_records(source / TUNE_DIR),
        spec,
        search_distributions(spec.params),
        request.skip_incompatible,
    )
