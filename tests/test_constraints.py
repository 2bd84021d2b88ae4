"""sweep.constraints: parsing and the errors before Ray, the active latent units trials report,
what a trial reports at its best epoch, feasibility from its history, the finaliser's ranking,
the Optuna study's constraint values, trials.csv, MLflow tags and the report."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import optuna
import pandas as pd
import pytest
import torch
from torch import nn

from emovae.config import ConfigError
from emovae.loss import LossWeights, kl_per_unit
from emovae.train import evaluate_loss
from sweeps.driver import SweepResult, _no_best_reason, _write_trials_csv
from sweeps.report import analyse_sweep, write_report
from sweeps.space import load_space, to_tune_space
from sweeps.study import StudyLocation, SweepSearch, claim_study, open_storage
from sweeps.tracking import TAG_FEASIBLE, tag_feasibility
from sweeps.trainable import objective_tracker
from sweeps.trials import (
    MISSING_VIOLATION,
    Constraint,
    TrialRecord,
    TrialStatus,
    feasible,
    ranked,
    values_at_best,
)

AT_LEAST_4 = Constraint("val_active_units", ">=", 4.0)
# The quick space without its emotion metrics, as the end-to-end tests shrink it.
VAL_RECON = ["sweep.emotion_every=0", "sweep.metric=val_recon"]


def _constraints(expressions: str, *overrides: str) -> tuple[Constraint, ...]:
    spec = load_space("quick", [f"sweep.constraints={expressions}", *overrides])
    return spec.sweep.parsed_constraints()


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('">= 4"', AT_LEAST_4),
        ('"<0.5"', Constraint("val_active_units", "<", 0.5)),
        ('"> 1e-3"', Constraint("val_active_units", ">", 0.001)),
        ('"  <= 32 "', Constraint("val_active_units", "<=", 32.0)),
    ],
)
def test_a_constraint_is_parsed_into_metric_operator_and_bound(expression, expected) -> None:
    assert _constraints(f"{{val_active_units: {expression}}}") == (expected,)


def test_no_constraints_by_default_and_several_at_once() -> None:
    assert load_space("quick").sweep.parsed_constraints() == ()
    both = _constraints('{val_active_units: ">= 4", val_gen_fd: "< 40"}')
    assert [str(c) for c in both] == ["val_active_units >= 4", "val_gen_fd < 40"]


def test_an_unknown_metric_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        _constraints('{val_activ_units: ">= 4"}', *VAL_RECON)
    message = str(caught.value)
    assert "quick.yaml: sweep.constraints.val_activ_units: unknown metric" in message
    assert "did you mean 'val_active_units'?" in message
    listed = message.split("report each epoch: ")[1]
    for metric in ("val_active_units", "val_recon", "val_kl", "train_loss", "train_prior"):
        assert metric in listed
    assert "val_gen_fd" not in listed  # no emotion metrics with emotion_every 0


def test_an_emotion_metric_needs_emotion_every() -> None:
    with pytest.raises(ConfigError, match=r"sweep.constraints.val_fd_recon: .*emotion_every >= 1"):
        _constraints('{val_fd_recon: "< 30"}', *VAL_RECON)
    _constraints('{val_fd_recon: "< 30"}')  # the quick space computes them every 2 epochs


def test_a_sample_metric_needs_a_conditional_model() -> None:
    with pytest.raises(ConfigError, match=r"val_gen_diversity .*train.conditional: true"):
        _constraints(
            '{val_gen_diversity: "> 0.5"}', "sweep.metric=val_recon", "train.conditional=false"
        )


@pytest.mark.parametrize("expression", ["4", '"=> 4"', '">= four"', '"4 <="', '">= 4 units"'])
def test_a_malformed_expression_names_the_expected_form(expression: str) -> None:
    with pytest.raises(
        ConfigError,
        match=r"sweep.constraints.val_active_units: expected an expression '<op> <number>' "
        r"with op one of >=, <=, >, <",
    ):
        _constraints(f"{{val_active_units: {expression}}}")


def test_constraints_must_be_a_mapping_and_bounds_finite() -> None:
    with pytest.raises(ConfigError, match="sweep.constraints: expected a mapping"):
        load_space("quick", ['sweep.constraints=[">= 4"]'])
    with pytest.raises(ConfigError, match="bound must be a finite number"):
        _constraints('{val_active_units: ">= inf"}')


def test_violation_follows_optunas_sign_convention() -> None:
    assert AT_LEAST_4.violation(6.0) <= 0 and AT_LEAST_4.holds(6.0)
    assert AT_LEAST_4.violation(4.0) <= 0
    assert AT_LEAST_4.violation(1.0) == 3.0 and not AT_LEAST_4.holds(1.0)
    below = Constraint("val_kl", "<", 2.0)
    assert below.violation(1.5) <= 0 and below.violation(2.5) == 0.5
    assert below.violation(2.0) > 0 and not below.holds(2.0)  # strict, met with equality
    assert AT_LEAST_4.violation(None) == MISSING_VIOLATION and not AT_LEAST_4.holds(None)


# --- active latent units ----------------------------------------------------------------------


def test_kl_per_unit_averages_over_clips_and_a_temporal_units_frames() -> None:
    mu = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    logvar = torch.zeros(2, 2)
    assert kl_per_unit(mu, logvar).tolist() == [0.5, 0.0]
    # (B, channels, frames): channel 0 is informative in half its frames.
    temporal = torch.zeros(2, 2, 4)
    temporal[:, 0, :2] = 1.0
    assert kl_per_unit(temporal, torch.zeros(2, 2, 4)).tolist() == [0.25, 0.0]


class CraftedPosterior(nn.Module):
    """Stands in for a VAE: reconstructs perfectly and encodes every clip to the same unit
    posteriors, N(mu, exp(logvar)) per unit."""

    n_classes = 0
    withheld_label = None

    def __init__(self, mu: list[float], logvar: list[float]) -> None:
        super().__init__()
        self.mu, self.logvar = torch.tensor(mu), torch.tensor(logvar)

    def forward(self, x: torch.Tensor, labels: None, sample: bool = True):
        batch = x.shape[0]
        return x, self.mu.expand(batch, -1), self.logvar.expand(batch, -1)


def test_active_units_count_the_units_above_a_hundredth_of_a_nat() -> None:
    # KL per unit: 0.5 (active), 0 (the prior itself), 0.005 (below the threshold), and a
    # unit whose variance alone departs from the prior: 0.5 * (e - 1 - 1) = 0.36 (active).
    model = CraftedPosterior([1.0, 0.0, 0.1, 0.0], [0.0, 0.0, 0.0, 1.0])
    features = torch.zeros(70, 1, 4, 4)  # two evaluation batches (64 + 6 clips)
    terms = evaluate_loss(model, features, torch.zeros(70, dtype=torch.long), LossWeights(1.0))
    assert terms["active_units"].item() == 2.0
    assert terms["kl"].item() == pytest.approx(0.5 + 0.005 + 0.5 * (math.e - 2), rel=1e-5)


# --- what a trial reports ---------------------------------------------------------------------


def test_a_trial_reports_the_constrained_values_at_its_best_epoch() -> None:
    track = objective_tracker({"metric": "val_recon", "mode": "min"}, None, [AT_LEAST_4])
    first = track({"val_recon": 1.0, "val_active_units": 3.0})
    assert first == {"best_val_recon": 1.0, "at_best_val_active_units": 3.0, "feasible": 0.0}
    assert track({"val_recon": 0.8, "val_active_units": 6.0})["feasible"] == 1.0
    # A worse epoch with collapsed units leaves the best epoch, and its verdict, as they were.
    worse = track({"val_recon": 0.9, "val_active_units": 1.0})
    assert worse == {"best_val_recon": 0.8, "at_best_val_active_units": 6.0, "feasible": 1.0}
    tie = track({"val_recon": 0.8, "val_active_units": 0.0})  # the earliest of equal bests
    assert tie["at_best_val_active_units"] == 6.0
    assert track({"val_recon": 0.5, "val_active_units": 2.0})["feasible"] == 0.0


def test_before_any_best_epoch_a_trial_is_not_feasible() -> None:
    track = objective_tracker({"metric": "val_recon", "mode": "min"}, None, [AT_LEAST_4])
    reported = track({"val_recon": math.nan, "val_active_units": 8.0})
    assert math.isnan(reported["at_best_val_active_units"]) and reported["feasible"] == 0.0
    plain = objective_tracker({"metric": "val_recon", "mode": "min"}, None)
    assert plain({"val_recon": 1.0, "val_active_units": 8.0}) == {"best_val_recon": 1.0}


# --- trial records ----------------------------------------------------------------------------


def _record(trial_id: str, recon: list[float], units: list[float], **kw) -> TrialRecord:
    history = [
        {"epoch": float(epoch), "val_recon": r, "val_active_units": u}
        for epoch, (r, u) in enumerate(zip(recon, units, strict=True), start=1)
    ]
    return TrialRecord(trial_id, {"lr": 1e-3}, kw.get("status", TrialStatus.FINISHED), history)


def test_feasibility_is_judged_at_the_best_epoch_of_the_objective() -> None:
    # Best val_recon at epoch 2, where 5 units are active; the last epoch has collapsed.
    kept = _record("kept", [1.0, 0.5, 0.7], [2.0, 5.0, 1.0])
    collapsed = _record("collapsed", [1.0, 0.4, 0.6], [8.0, 3.0, 9.0])
    assert values_at_best(kept, "val_recon", "min", ["val_active_units"]) == {
        "val_active_units": 5.0
    }
    assert feasible(kept, "val_recon", "min", [AT_LEAST_4])
    assert not feasible(collapsed, "val_recon", "min", [AT_LEAST_4])
    assert feasible(collapsed, "val_recon", "min", [])
    unreported = TrialRecord("x", {}, TrialStatus.FINISHED, [{"epoch": 1.0, "val_recon": 0.3}])
    assert not feasible(unreported, "val_recon", "min", [AT_LEAST_4])  # missing: infeasible


def test_ranking_skips_infeasible_trials() -> None:
    records = [
        _record("collapsed", [0.4], [1.0]),
        _record("good", [0.6], [6.0]),
        _record("better", [0.5], [4.0], status=TrialStatus.KILLED_BY_ASHA),
    ]
    assert [r.trial_id for r, _, _ in ranked(records, "val_recon", "min")][0] == "collapsed"
    leaders = ranked(records, "val_recon", "min", [AT_LEAST_4])
    assert [(r.trial_id, value) for r, value, _ in leaders] == [("better", 0.5), ("good", 0.6)]
    assert ranked(records, "val_recon", "min", [Constraint("val_active_units", ">", 6.0)]) == []


def test_a_sweep_without_feasible_trials_says_so_and_not_that_they_failed() -> None:
    spec = load_space("quick", [*VAL_RECON, 'sweep.constraints={val_active_units: ">= 1000"}'])
    records = [_record("a", [0.4], [7.0]), _record("b", [0.5], [12.0])]
    message = _no_best_reason(spec, records)
    assert message.startswith("no trial met the constraints, judged at each trial's best epoch")
    assert "val_active_units >= 1000 (the most any trial reached: 12)" in message
    assert "2 of 2 trials reported val_recon" in message and "failed" not in message
    failed = [TrialRecord("f", {}, TrialStatus.FAILED, [], error="boom")]
    assert _no_best_reason(spec, failed) is None  # the every-trial-failed message applies


# --- the Optuna study -------------------------------------------------------------------------


def test_the_study_keeps_each_trials_constrained_values_and_constraint(tmp_path: Path) -> None:
    location = StudyLocation(str(tmp_path / "sweep"), "id-1")
    Path(location.sweep_dir).mkdir()
    claim_study(location, "min")
    searcher = SweepSearch(
        location, optuna.samplers.TPESampler(seed=0, n_startup_trials=2), [AT_LEAST_4]
    )
    params = {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    assert searcher.set_search_properties("best_val_recon", "min", to_tune_space(params))
    # Tune pickles its searcher: the constraints travel with it.
    assert pickle.loads(pickle.dumps(searcher))._constraints == (AT_LEAST_4,)
    results = {
        "ok": {"best_val_recon": 0.5, "at_best_val_active_units": 6.0},
        "collapsed": {"best_val_recon": 0.3, "at_best_val_active_units": 1.0},
        "unreported": {"best_val_recon": 0.4, "at_best_val_active_units": math.nan},
    }
    for trial_id, result in results.items():
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    searcher.suggest("crashed")
    searcher.on_trial_complete("crashed", None, error=True)

    study = optuna.load_study(study_name=location.name, storage=open_storage(location))
    trials = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert trials["ok"].user_attrs["at_best_val_active_units"] == 6.0
    assert trials["ok"].constraints == {"val_active_units >= 4": -2.0}
    assert trials["collapsed"].constraints == {"val_active_units >= 4": 3.0}
    assert trials["unreported"].user_attrs["at_best_val_active_units"] is None
    assert trials["unreported"].constraints == {"val_active_units >= 4": MISSING_VIOLATION}
    assert trials["crashed"].state == optuna.trial.TrialState.FAIL
    # Past its start-up trials TPE proposes from them, the infeasible ones apart.
    assert set(searcher.suggest("next")) == {"lr"}


# --- trials.csv, MLflow, the report -----------------------------------------------------------


def test_trials_csv_gets_a_feasible_column_only_with_constraints(tmp_path: Path) -> None:
    records = [_record("a", [0.4, 0.3], [6.0, 2.0]), _record("b", [0.5], [5.0])]
    constrained = load_space("quick", [*VAL_RECON, 'sweep.constraints={val_active_units: ">= 4"}'])
    table = pd.read_csv(_write_trials_csv(tmp_path, records, constrained))
    assert table["feasible"].tolist() == [False, True]
    assert table["at_best_val_active_units"].tolist() == [2.0, 5.0]
    plain = pd.read_csv(_write_trials_csv(tmp_path, records, load_space("quick", VAL_RECON)))
    assert "feasible" not in plain.columns


def test_trial_runs_are_tagged_feasible_or_not() -> None:
    tags: list[tuple[str, str, str]] = []
    client = SimpleNamespace(set_tag=lambda run_id, key, value: tags.append((run_id, key, value)))

    def run(run_id: str, role: str, trial_id: str | None) -> SimpleNamespace:
        info = SimpleNamespace(run_id=run_id)
        data = SimpleNamespace(tags={"emovae.role": role, "ray.trial_id": trial_id})
        return SimpleNamespace(info=info, data=data)

    runs = [run("r1", "trial", "a"), run("r2", "trial", "b"), run("r3", "final", None)]
    tag_feasibility(client, runs, {"a": True, "b": False})
    assert tags == [("r1", TAG_FEASIBLE, "true"), ("r2", TAG_FEASIBLE, "false")]


def test_the_report_marks_infeasible_trials_and_picks_a_feasible_best(tmp_path: Path) -> None:
    records = [
        _record("collapsed", [0.4], [1.0]),
        _record("good", [0.6], [6.0]),
        _record("worse", [0.7], [5.0]),
    ]
    spec = {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}
    asha = {"grace_period": 1, "reduction_factor": 2, "max_t": 1}
    analysis = analyse_sweep(records, "val_recon", "min", spec, asha, constraints=[AT_LEAST_4])
    text = write_report(analysis, tmp_path).read_text()
    assert "Constraints: `val_active_units >= 4` at each trial's best epoch: 2 of 3" in text
    assert "in trial `good`" in text
    table = text.split("## Best configurations")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| — | collapsed |") and "no: val_active_units 1 (>= 4)" in rows[0]
    assert rows[1].startswith("| 1 | good |") and "| yes |" in rows[1]
    assert rows[2].startswith("| 2 | worse |")

    impossible = [Constraint("val_active_units", ">=", 1000.0)]
    analysis = analyse_sweep(records, "val_recon", "min", spec, asha, constraints=impossible)
    none = write_report(analysis, tmp_path / "none").read_text()
    assert "Best: none — no trial met the constraints" in none


def test_the_console_summary_marks_infeasible_trials(capsys: pytest.CaptureFixture) -> None:
    # sweeps.run sets MLflow's client timeouts in the environment on import: not for the
    # tests that run after this one.
    with mock.patch.dict(os.environ):
        from sweeps.run import print_summary

    records = [_record("collapsed", [0.4], [1.0]), _record("good", [0.6], [6.0])]
    result = SweepResult(
        Path("runs/x"), "val_recon", "min", records, records[1], 0.6, "sqlite:///x.db", "p",
        constraints=(AT_LEAST_4,),
    )  # fmt: skip
    print_summary(result)
    lines = capsys.readouterr().out.splitlines()
    assert "feasible" in lines[2]
    assert lines[3].startswith("collapsed") and " no  " in lines[3]
    assert lines[4].startswith("good") and " yes  " in lines[4]
    assert "Constraints at each trial's best epoch: val_active_units >= 4" in lines[5]
    assert "Best trial good: val_recon = 0.60000" in lines


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_infeasible_sweep_says_so_and_marks_every_trial(
    tmp_path: Path, sweep_cache: Path
) -> None:
    """The CLI with a bound no trial can meet: exit 2 with the constraints message (not "all
    trials failed"), nothing finalised, trials.csv and every trial's MLflow run marked."""
    from test_sweep_e2e import NO_EMOTION, by_role, mlflow_runs, run, sweep_command

    out = tmp_path / "sweep"
    result = run(
        sweep_command(
            out,
            sweep_cache,
            *NO_EMOTION,
            "sweep.num_samples=2",
            'sweep.constraints={val_active_units: ">= 1000"}',
        )
    )
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-5000:]
    assert "error: no trial met the constraints" in result.stderr
    assert "val_active_units >= 1000 (the most any trial reached: " in result.stderr
    assert "failed" not in result.stderr.split("error: ", 1)[1].splitlines()[0]
    assert not (out / "final").exists()
    table = pd.read_csv(out / "trials.csv")
    assert len(table) == 2 and not table["feasible"].any()
    assert (table["at_best_val_active_units"] < 1000).all()
    _, runs = mlflow_runs(out)
    trials = by_role(runs, "trial")
    assert [r.data.tags[TAG_FEASIBLE] for r in trials] == ["false", "false"]
    assert all(r.data.metrics["feasible"] == 0.0 for r in trials)  # Ray's result carries it
    parent = by_role(runs, "sweep")[0]
    assert parent.data.tags["emovae.error"].startswith("no trial met the constraints")
