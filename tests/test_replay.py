"""Replaying sweeps on recorded curves: the table's checks, the simulated sweep around Ray's
real schedulers and Optuna's samplers, the efficiency summary and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from replay_tables import (
    EPOCHS,
    GRID,
    curve_frame,
    floor_of,
    replay_overrides,
    replay_spec,
    write_table,
)

from emovae.config import apply_overrides
from sweeps.curves import (
    CurveError,
    CurveLookup,
    check_replayable,
    curves_from_sweep,
    read_curves,
)
from sweeps.efficiency import epochs_to_reach, interval, summarise, target_value
from sweeps.replay import main as replay_main
from sweeps.simulator import REFERENCE_ARM, Arm, Replay, replay_arms, replay_sweep
from sweeps.space import resolve_space_path, searched_params

PARAMS = ["latent_dim", "beta", "lr"]


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    return write_table(tmp_path / "curves.csv")


def lookup_for(path: Path, **space: object) -> tuple:
    spec = replay_spec(**space)
    table = read_curves(path, searched_params(spec.params))
    check_replayable(table, spec.params, spec.sweep.metric, spec.experiment.train.max_epochs)
    return spec, CurveLookup(table, spec.params)


# The table's checks ------------------------------------------------------------------------


def test_a_configuration_missing_an_epoch_is_named(tmp_path: Path) -> None:
    frame = curve_frame()
    frame = frame.drop(frame[(frame.config_id == 4) & (frame.epoch == 7)].index)
    path = write_table(tmp_path / "gap.csv", frame)
    with pytest.raises(
        CurveError,
        match=r"latent_dim=8, beta=0.0001, lr=0.0005: expected epochs 1 to 12 once each; missing \[7\]$",
    ):
        read_curves(path, PARAMS)


def test_a_parameter_the_space_searches_must_be_a_column(tmp_path: Path) -> None:
    path = write_table(tmp_path / "no_lr.csv", curve_frame().drop(columns=["lr"]))
    with pytest.raises(CurveError, match="no 'lr' column .a parameter the space searches"):
        read_curves(path, PARAMS)


def test_a_range_reaching_past_the_recorded_values_is_refused(table_path: Path) -> None:
    with pytest.raises(CurveError, match=r"params.beta: the space's range \[1e-07, 0.0001\]"):
        lookup_for(table_path, **{"params.beta": "{loguniform: [1.0e-7, 1.0e-4]}"})


def test_a_choice_not_recorded_is_refused(table_path: Path) -> None:
    with pytest.raises(CurveError, match=r"params.latent_dim: choices \[64\] were not recorded"):
        lookup_for(table_path, **{"params.latent_dim": "{choice: [8, 64]}"})


def test_the_objective_must_be_recorded(table_path: Path) -> None:
    with pytest.raises(CurveError, match="no 'val_emotion_acc_drop' column"):
        lookup_for(
            table_path,
            **{"sweep.metric": "val_emotion_acc_drop", "sweep.emotion_every": 1},
        )


def test_a_budget_past_the_recorded_epochs_is_refused(table_path: Path) -> None:
    with pytest.raises(CurveError, match=r"stop before the space's train.max_epochs \(20\)"):
        lookup_for(table_path, **{"train.max_epochs": 20, "train.patience": 20})


def test_proposals_are_charged_the_nearest_recorded_configuration(table_path: Path) -> None:
    spec, lookup = lookup_for(table_path)
    # 2e-6 is nearer 1e-6 than 1e-5 on a log scale, though not on a linear one.
    curve = lookup.curve({"latent_dim": 16, "beta": 2e-6, "lr": 2.5e-3})
    assert curve.params == {"latent_dim": 16, "beta": 1e-6, "lr": 3e-3}


# The simulated sweep -----------------------------------------------------------------------


def test_fifo_runs_every_trial_for_the_full_budget(table_path: Path) -> None:
    spec, lookup = lookup_for(table_path)
    replay = replay_sweep(spec, lookup, Arm("fifo", "random"), seed=0)
    assert len(replay.trials) == spec.sweep.num_samples
    assert {t.epochs for t in replay.trials} == {EPOCHS}
    assert replay.spent[-1] == spec.sweep.num_samples * EPOCHS
    # Two trials at a time: the clock runs about half the serial time, never less.
    serial = sum(1.0 + 0.01 * t.params["latent_dim"] for t in replay.trials) * EPOCHS
    assert serial / 2 <= replay.clock[-1] < serial * 0.6
    # The best so far never gets worse and ends at the best trial's last value.
    assert all(a >= b for a, b in zip(replay.best, replay.best[1:], strict=False))
    best = min(floor_of(t.params) + 2.0 / EPOCHS for t in replay.trials)
    assert replay.best[-1] == pytest.approx(best)


def test_asha_stops_only_trials_below_a_rungs_cutoff(table_path: Path) -> None:
    """One trial at a time, curves that rank configurations the same at every epoch: a
    trial better than every earlier one is never stopped, and ASHA saves epochs."""
    spec, lookup = lookup_for(table_path, **{"sweep.max_concurrent": 1})
    replay = replay_sweep(spec, lookup, Arm("asha", "random", grace_period=1), seed=3)
    assert replay.spent[-1] < spec.sweep.num_samples * EPOCHS
    assert any(t.stopped_by_scheduler for t in replay.trials)
    best_so_far = math.inf
    for trial in sorted(replay.trials, key=lambda t: t.number):
        level = floor_of(trial.params)
        if level < best_so_far:
            assert not trial.stopped_by_scheduler and trial.epochs == EPOCHS, trial
        best_so_far = min(best_so_far, level)
    # Stopped trials stop at rungs: grace period 1, reduction factor 2.
    assert {t.epochs for t in replay.trials if t.stopped_by_scheduler} <= {1, 2, 4, 8}


def test_a_seed_replays_the_same_sweep_and_another_seed_another(table_path: Path) -> None:
    spec, lookup = lookup_for(table_path, **{"sweep.num_samples": 14})
    arm = Arm("asha", "tpe", grace_period=1, tpe_startup_trials=4)
    first, again = replay_sweep(spec, lookup, arm, 0), replay_sweep(spec, lookup, arm, 0)
    assert first.trials == again.trials and first.best == again.best
    other = replay_sweep(spec, lookup, arm, 1)
    assert [t.params for t in other.trials] != [t.params for t in first.trials]


def test_tpe_after_its_start_up_trials_proposes_good_configurations(table_path: Path) -> None:
    """On curves ranked by beta first, TPE's proposals after start-up favour the low beta
    that random search picks a third of the time (over seeds, so no lucky draw decides)."""
    spec, lookup = lookup_for(table_path, **{"sweep.num_samples": 24})
    share = {}
    for searcher in ("tpe", "random"):
        arm = Arm("fifo", searcher, tpe_startup_trials=6)
        params = [
            t.params
            for seed in range(4)
            for t in replay_sweep(spec, lookup, arm, seed).trials
            if t.number >= 6
        ]
        share[searcher] = np.mean([p["beta"] == GRID["beta"][0] for p in params])
    assert share["tpe"] > share["random"] + 0.2, share


def test_emotion_metrics_are_seen_at_the_trainables_cadence(tmp_path: Path) -> None:
    """With sweep.emotion_every = 3 the trainable computes val_gen_fd at epochs 1, 3, 6, ...
    and repeats it in between: a trial's running best moves only at those epochs."""
    path = write_table(tmp_path / "curves.csv")
    spec, lookup = lookup_for(
        path,
        **{"sweep.metric": "val_gen_fd", "sweep.emotion_every": 3, "sweep.num_samples": 1},
    )
    replay = replay_sweep(spec, lookup, Arm("fifo", "random"), seed=0)
    (trial,) = replay.trials
    level = floor_of(trial.params)
    seen = [10 * (level + 2.0 / e) for e in (1, 1, 3, 3, 3, 6, 6, 6, 9, 9, 9, 12)]
    assert replay.best == pytest.approx(seen)


def test_the_trainers_early_stopping_ends_a_trial(tmp_path: Path) -> None:
    frame = curve_frame()
    # The trainer's monitor (train.monitor: val_loss) stops improving after epoch 3.
    frame.loc[frame.epoch > 3, "val_loss"] += 1.0
    spec, lookup = lookup_for(write_table(tmp_path / "plateau.csv", frame), **{"train.patience": 2})
    replay = replay_sweep(spec, lookup, Arm("fifo", "random"), seed=0)
    assert {t.epochs for t in replay.trials} == {5}
    assert not any(t.stopped_by_scheduler for t in replay.trials)


def test_hyperband_spreads_trials_over_brackets(table_path: Path) -> None:
    spec, lookup = lookup_for(table_path, **{"sweep.num_samples": 18})
    asha = replay_sweep(spec, lookup, Arm("asha", "random", grace_period=1), seed=0)
    hyperband = replay_sweep(spec, lookup, Arm("hyperband", "random", grace_period=1), seed=0)
    # Brackets with later first rungs stop fewer trials early: more epochs than one bracket.
    assert hyperband.spent[-1] > asha.spent[-1]


# The summary and the CLI -------------------------------------------------------------------


def _replay(spent: list[int], best: list[float]) -> Replay:
    return Replay(REFERENCE_ARM, 0, spent=spent, clock=[0.0] * len(spent), best=best)


def test_epochs_to_reach_and_the_target() -> None:
    assert target_value(10.0, 0.02, "min") == pytest.approx(10.2)
    assert target_value(0.5, 0.02, "max") == pytest.approx(0.49)
    replay = _replay([1, 2, 3, 4], [12.0, 11.0, 10.1, 9.0])
    assert epochs_to_reach(replay, 10.2, "min") == 3
    assert epochs_to_reach(replay, 8.0, "min") == math.inf


def test_interval_is_a_student_t_interval() -> None:
    result = interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3)
    assert (result.mean, result.high - result.mean) == pytest.approx((2.0, 4.303 / 3**0.5), 1e-3)
    assert math.isnan(interval([]).mean)


def test_summary_scores_arms_against_full_budget_random_search() -> None:
    reference = [_replay([10, 20], [2.0, 1.0]), _replay([10, 20], [3.0, 1.0])]
    fast = [_replay([2, 8], [1.5, 1.01]), _replay([2, 5], [1.0, 1.0])]
    target, summaries = summarise(
        {REFERENCE_ARM.name: reference, "fast": fast}, REFERENCE_ARM.name, 20, "min"
    )
    assert target == pytest.approx(1.02)
    by_name = {s.name: s for s in summaries}
    assert by_name["fast"].share_to_target.mean == pytest.approx((8 / 20 + 2 / 20) / 2)
    assert by_name["fast"].reached == 2
    # 8 of 20 epochs is more than a third: one seed meets the target, one does not.
    assert by_name["fast"].met == 1 and by_name[REFERENCE_ARM.name].met == 0
    assert by_name[REFERENCE_ARM.name].median_share == 1.0


def test_replay_arms_puts_the_reference_first_once(table_path: Path) -> None:
    spec, lookup = lookup_for(table_path)
    replays = replay_arms(spec, lookup, [Arm("asha", "random"), REFERENCE_ARM], seeds=2)
    assert list(replays) == [REFERENCE_ARM.name, "random+asha(g1,r2)"]
    assert all(len(runs) == 2 for runs in replays.values())


def _cli(table: Path, out: Path, *extra: str) -> list[str]:
    overrides = [a for o in replay_overrides() for a in ("--set", o)]
    return ["--curves", str(table), "--space", "quick", *overrides, "--out", str(out), *extra]


def test_cli_writes_the_table_the_plot_and_every_replay(
    table_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "replay"
    arms = ["--scheduler", "asha", "fifo", "--grace-period", "1", "2", "--seeds", "3"]
    code = replay_main(_cli(table_path, out, *arms))
    assert code == 0
    text = (out / "efficiency.md").read_text()
    for arm in ("random+fifo", "tpe(s10)+asha(g1,r2)", "tpe(s10)+asha(g2,r2)", "tpe(s10)+fifo"):
        assert f"| {arm} | 3 |" in text and text.count("/3 |") >= 8
    assert (out / "regret.png").stat().st_size > 10_000
    curves = pd.read_csv(out / "best_so_far.csv")
    assert set(curves.arm) == {"random+fifo", "tpe(s10)+asha(g1,r2)", "tpe(s10)+asha(g2,r2)",
                               "tpe(s10)+fifo"}  # fmt: skip
    assert (curves["low"] <= curves["mean"]).all() and (curves["mean"] <= curves["high"]).all()
    replays = json.loads((out / "replays.json").read_text())
    assert len(replays) == 4 and all(len(seeds) == 3 for seeds in replays.values())
    assert "Target: within 2%" in capsys.readouterr().out


def test_cli_names_a_bad_table_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frame = curve_frame().drop(columns=["beta"])
    path = write_table(tmp_path / "curves.csv", frame)
    assert replay_main(_cli(path, tmp_path / "out")) == 2
    assert f"error: curves {path}: no 'beta' column" in capsys.readouterr().err


def test_a_finished_sweeps_full_budget_trials_are_its_curves(tmp_path: Path) -> None:
    """Tune's result.json rows (config, epoch, time_this_iter_s, metrics): trials that ran
    the full budget are kept, one stopped early is not."""
    for index, (latent_dim, epochs) in enumerate([(8, 4), (16, 4), (32, 2)]):
        folder = tmp_path / "tune" / f"trial_{index}"
        folder.mkdir(parents=True)
        rows = [
            {
                "config": {"latent_dim": latent_dim, "beta": 1e-5, "lr": 1e-3},
                "epoch": epoch,
                "time_this_iter_s": 2.0,
                "val_recon": 1.0 / epoch,
                "trial_id": f"t{index}",
            }
            for epoch in range(1, epochs + 1)
        ]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = curves_from_sweep(tmp_path, PARAMS)
    assert sorted(c.params["latent_dim"] for c in table.curves) == [8, 16]
    assert table.epochs == 4
    assert table.curves[0].metrics["epoch_seconds"].tolist() == [2.0] * 4


def test_cli_replays_a_finished_sweep_in_its_own_space(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--from without --space: the sweep's own space (sweep.json), its full-budget trials."""
    sweep = tmp_path / "old"
    frame = curve_frame()
    for index, (_, rows) in enumerate(frame.groupby("config_id")):
        folder = sweep / "tune" / f"trial_{index}"
        folder.mkdir(parents=True)
        lines = [
            json.dumps(
                {
                    "config": {k: row[k] for k in PARAMS},
                    "epoch": int(row["epoch"]),
                    "time_this_iter_s": float(row["epoch_seconds"]),
                    "val_recon": float(row["val_recon"]),
                    "val_loss": float(row["val_loss"]),
                }
            )
            for _, row in rows.iterrows()
        ]
        (folder / "result.json").write_text("\n".join(lines) + "\n")
    raw = apply_overrides(
        yaml.safe_load(resolve_space_path("quick").read_text()), replay_overrides()
    )
    state = {"space": raw, "name": "old", "source": "quick.yaml", "tracking_uri": "",
             "experiment_id": "", "parent_run_id": ""}  # fmt: skip
    (sweep / "sweep.json").write_text(json.dumps(state))
    out = tmp_path / "replay"
    assert replay_main(["--from", str(sweep), "--seeds", "2", "--out", str(out)]) == 0
    assert f"18 recorded configurations from {sweep}" in capsys.readouterr().out
    assert "| tpe(s10)+asha(g1,r2) | 2 |" in (out / "efficiency.md").read_text()


def test_replays_in_worker_processes_are_the_same_replays(table_path: Path) -> None:
    spec, lookup = lookup_for(table_path)
    arms = [Arm("asha", "tpe", grace_period=1, tpe_startup_trials=4)]
    alone = replay_arms(spec, lookup, arms, seeds=2)
    pooled = replay_arms(spec, lookup, arms, seeds=2, workers=2)
    assert {n: [r.trials for r in rs] for n, rs in alone.items()} == {
        n: [r.trials for r in rs] for n, rs in pooled.items()
    }
