"""The Pareto front and its knee, from trial records (sweeps.pareto)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from test_sweep_e2e import by_role, mlflow_runs, run, sweep_command

from emovae.config import ConfigError
from sweeps.driver import read_state
from sweeps.finaliser import _retrain_pareto_points
from sweeps.pareto import dominates, knee, leaders, objective_vector, pareto_front
from sweeps.results import load_trial_records
from sweeps.space import load_space, to_tune_space
from sweeps.study import (
    JOURNAL_FILE,
    StudyLocation,
    SweepSearch,
    claim_study,
    open_storage,
    search_distributions,
)
from sweeps.trials import Constraint, TrialRecord, TrialStatus
from sweeps.warm_start import seed_study, warm_start_points

METRICS, MODES = ("val_recon", "val_gen_emotion_acc"), ("min", "max")


def _record(trial_id: str, rows: list[tuple[float, float]], status=TrialStatus.FINISHED):
    history = [
        {"epoch": i + 1, "val_recon": recon, "val_gen_emotion_acc": acc}
        for i, (recon, acc) in enumerate(rows)
    ]
    return TrialRecord(trial_id, {}, status, history)


def test_the_vector_is_read_at_the_first_objectives_best_epoch() -> None:
    # Best val_recon at epoch 2: the accuracy of epoch 2, not the best accuracy (epoch 3).
    record = _record("a", [(0.9, 0.2), (0.5, 0.4), (0.7, 0.9)])
    assert objective_vector(record, METRICS, MODES) == (0.5, 0.4)
    missing = TrialRecord("b", {}, TrialStatus.FINISHED, [{"epoch": 1, "val_recon": 0.5}])
    assert objective_vector(missing, METRICS, MODES) is None


def test_dominance_respects_each_direction() -> None:
    assert dominates((0.4, 0.6), (0.5, 0.6), MODES)
    assert not dominates((0.4, 0.5), (0.5, 0.6), MODES)  # a trade-off
    assert not dominates((0.5, 0.6), (0.5, 0.6), MODES)  # equal: neither


def test_front_leaves_out_dominated_and_failed_trials_and_the_knee_balances() -> None:
    records = [
        _record("low_recon", [(0.30, 0.20)]),
        _record("balanced", [(0.40, 0.70)]),
        _record("high_acc", [(0.90, 0.80)]),
        _record("dominated", [(0.50, 0.60)]),
        _record("failed", [(0.10, 0.99)], TrialStatus.FAILED),
    ]
    front = pareto_front(records, METRICS, MODES)
    assert [record.trial_id for record, _ in front] == ["low_recon", "balanced", "high_acc"]
    assert knee(front, MODES).trial_id == "balanced"
    assert knee([], MODES) is None


# ---- multi-objective settings, the finaliser's pick, the searcher ------------------------------

VAL_RECON = ["sweep.emotion_every=0", "sweep.metric=val_recon"]


def _multi(*extra: str):
    return load_space(
        "quick",
        ["sweep.emotion_every=0", "sweep.metric=[val_recon, val_spectral]", "sweep.mode=[min, min]"]
        + list(extra),
    )


def test_a_list_of_objectives_splits_into_the_primary_and_the_rest() -> None:
    spec = _multi()
    assert spec.sweep.objectives == [("val_recon", "min"), ("val_spectral", "min")]
    assert (spec.sweep.metric, spec.sweep.mode) == ("val_recon", "min")
    assert spec.sweep.multi_objective and spec.finalise.pick == "knee"
    copy = dataclasses.replace(spec.sweep, num_samples=3)  # as the driver's callers copy it
    assert copy.objectives == spec.sweep.objectives
    assert not load_space("quick", VAL_RECON).sweep.multi_objective


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["sweep.metric=[val_recon, val_spectral]", "sweep.mode=min"],
            r"1 mode\(s\) \['min'\] for 2",
        ),
        (
            [
                "sweep.metric=[val_recon, val_spectral, val_fd_recon, val_gen_fd]",
                "sweep.mode=[min, min, min, min]",
            ],
            "a list of 2 or 3 different ones",
        ),
        (["sweep.metric=[val_recon, val_recon]", "sweep.mode=[min, min]"], "2 or 3 different"),
        (
            ["sweep.metric=[val_recon, val_spectral]", "sweep.mode=[min, max]"],
            "'max' contradicts val_spectral",
        ),
        (
            ["sweep.metric=[val_recon, val_loss]", "sweep.mode=[min, min]"],
            "'val_loss' is not a valid",
        ),
        (["sweep.objectives=[]"], "sweep.objectives is derived"),
        (
            ["sweep.metric=val_recon", "finalise.pareto=true"],
            "finalise.pareto: a Pareto front needs",
        ),
        (
            [
                "sweep.metric=[val_recon, val_spectral]",
                "sweep.mode=[min, min]",
                "finalise.pick=middle",
            ],
            r"finalise.pick: expected 'knee' or one of the objectives \['val_recon', 'val_spectral'\]",
        ),
    ],
)
def test_bad_objectives_are_named_before_ray_starts(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_space("quick", ["sweep.emotion_every=0", *overrides])


def test_leaders_put_the_picked_point_of_the_feasible_front_first() -> None:
    records = [
        _record("low_recon", [(0.30, 0.20)]),
        _record("balanced", [(0.40, 0.70)]),
        _record("high_acc", [(0.90, 0.80)]),
    ]
    objectives = list(zip(METRICS, MODES, strict=True))
    assert leaders(records, objectives)[0][0].trial_id == "balanced"
    first = leaders(records, objectives, pick="val_gen_emotion_acc")[0]
    assert (first[0].trial_id, first[1]) == ("high_acc", 0.90)  # its first objective's value
    assert leaders(records, objectives[:1])[0][0].trial_id == "low_recon"
    # A constraint leaves the knee out: the front of the rest decides.
    bound = Constraint("val_gen_emotion_acc", ">=", 0.75)
    assert [r.trial_id for r, _, _ in leaders(records, objectives, [bound])] == ["high_acc"]


def test_the_searcher_tells_optuna_every_objective(tmp_path: Path) -> None:
    location = StudyLocation(str(tmp_path / "sweep"), "id")
    Path(location.sweep_dir).mkdir()
    claim_study(location, ["min", "max"])
    objectives = [("best_val_recon", "min"), ("at_best_val_gen_emotion_acc", "max")]
    searcher = SweepSearch(location, optuna.samplers.TPESampler(seed=0), objectives=objectives)
    # Tune passes its single (ASHA) metric: the searcher keeps its own.
    searcher.set_search_properties(
        "best_val_recon", "min", to_tune_space({"lr": {"uniform": [0.1, 1.0]}})
    )
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"best_val_recon": 0.5, "at_best_val_gen_emotion_acc": 0.8})
    study = optuna.load_study(study_name="sweep", storage=open_storage(location))
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert study.trials[0].values == [0.5, 0.8]


def test_warm_start_seeds_every_objective(tmp_path: Path) -> None:
    old = load_space("quick", VAL_RECON)
    spec = _multi()
    records = [
        TrialRecord(
            "t1",
            {
                name: 16 if name == "latent_dim" else 1.0e-3
                for name in ("latent_dim", "beta", "lr", "grad_clip")
            }
            | {"beta": 1.0e-6, "grad_clip": 1.0},
            TrialStatus.FINISHED,
            [
                {"epoch": 1, "val_recon": 0.9, "val_spectral": 0.3},
                {"epoch": 2, "val_recon": 0.7, "val_spectral": 0.4},
            ],
        )
    ]
    distributions = search_distributions(spec.params)
    warm = warm_start_points("runs/old", old, records, spec, distributions)
    assert warm.points[0].value == (0.7, 0.4)
    location = StudyLocation(str(tmp_path / "new"), "n")
    Path(location.sweep_dir).mkdir()
    study = claim_study(location, ["min", "min"])
    seed_study(study, warm, distributions)
    assert study.trials[0].values == [0.7, 0.4]


@pytest.mark.slow
def test_a_multi_objective_sweep_finalises_the_picked_front_point(
    tmp_path: Path, sweep_cache: Path
) -> None:
    out = tmp_path / "sweep"
    command = sweep_command(
        out,
        sweep_cache,
        "sweep.num_samples=4",
        "sweep.tpe_startup_trials=2",
        "sweep.metric=[val_recon, val_spectral]",
        "sweep.mode=[min, min]",
        "finalise.pick=val_spectral",
        "finalise.pareto=true",
        "finalise.max_epochs=1",
        "finalise.n_samples=4",
        "sweep.emotion_every=0",
        "finalise.audio_metrics=false",
    )
    result = run(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    table = pd.read_csv(out / "trials.csv")
    front = table[table["pareto"]]
    assert len(front) >= 1
    picked = front.loc[front["at_best_val_spectral"].idxmin(), "trial_id"]
    client, runs = mlflow_runs(out)
    (parent,) = by_role(runs, "sweep")
    assert parent.data.tags["best.trial_id"] == picked
    (final,) = by_role(runs, "final")
    chosen = table[table["trial_id"] == picked].iloc[0]
    assert float(final.data.params["lr"]) == pytest.approx(chosen["param.lr"])
    study = optuna.load_study(
        study_name="sweep", storage=JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))
    )
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 for t in study.trials)
    report = (out / "final" / "report" / "report.md").read_text()
    assert "## Pareto front" in report and f"trial {picked}." in report
    assert (out / "final" / "report" / "pareto_front.png").is_file()
    # finalise.pareto: every other front point retrained, each in its own folder and run.
    retrained = (
        sorted(p.name for p in (out / "final" / "pareto").glob("*")) if len(front) > 1 else []
    )
    assert retrained == sorted(set(front["trial_id"]) - {picked})
    assert len(by_role(runs, "final-pareto")) == len(retrained)

    # A front of two whatever the trials reached: their histories set by hand, real params.
    state = read_state(out)
    spec = state.spec()
    first, second = load_trial_records(out / "tune")[:2]
    first.history = [{"epoch": 1, "val_recon": 0.5, "val_spectral": 0.9}]
    second.history = [{"epoch": 1, "val_recon": 0.9, "val_spectral": 0.3}]
    folders = _retrain_pareto_points(out, state, spec, [first, second], first, "cpu", False)
    assert folders == [out / "final" / "pareto" / second.trial_id]
    assert (folders[0] / "checkpoints" / "best.pt").is_file()
    assert (folders[0] / "evaluation" / "metrics.json").is_file()
    _, runs = mlflow_runs(out)
    (point,) = [
        r
        for r in by_role(runs, "final-pareto")
        if r.data.tags["pareto_trial_id"] == second.trial_id and r.info.status == "FINISHED"
    ][-1:]
    assert float(point.data.params["lr"]) == pytest.approx(second.params["lr"])
    assert "test_recon" in point.data.metrics
