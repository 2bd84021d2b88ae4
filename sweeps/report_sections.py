"""The sweep's sections of the report (sweeps.report), in report order: one function each, from
a `SweepAnalysis` to Markdown lines (and the section's PNG in out_dir). A figure that cannot be
drawn is replaced by a sentence saying why."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from sweeps.pareto import feasible_front, leaders
from sweeps.report_analysis import KnownImportances, Ranked, SweepAnalysis
from sweeps.report_markdown import MISSING, drawn_or_not, first_line, image, not_drawn, table
from sweeps.report_plots import draw, optuna_plot, plot_curves, plot_pareto, plot_rungs
from sweeps.trials import (
    Constraint,
    TrialRecord,
    TrialStatus,
    epochs_run,
    feasible,
    ranked,
    values_at_best,
)

STATUS_LABELS = {
    TrialStatus.FINISHED: "finished",
    TrialStatus.KILLED_BY_ASHA: "stopped by ASHA",
    TrialStatus.FAILED: "failed",
    TrialStatus.INTERRUPTED: "interrupted",
}
TOP_N = 5

Section = Callable[[SweepAnalysis, Path], list[str]]


# ---------------------------------------------------------------------------------------------
# Summary


def summary(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """Trials by status, the epochs early stopping saved, the objective, the best trial."""
    lines = ["## Summary", "", _trials_line(a.records), _epochs_line(a)]
    direction = "minimise" if a.mode == "min" else "maximise"
    lines.append(f"- Objective: `{a.metric}` ({direction}; a trial's value is its best epoch)")
    if a.constraints:
        lines.append(
            f"- Constraints: {', '.join(f'`{c}`' for c in a.constraints)} at each trial's best "
            f"epoch: {len(a.scored)} of {len(a.candidates)} trials with a value meet them"
        )
    return lines + [_best_line(a), ""]


def _trials_line(records: list[TrialRecord]) -> str:
    counts = {status: sum(1 for r in records if r.status == status) for status in STATUS_LABELS}
    other = len(records) - sum(counts.values())
    parts = [
        f"{counts[status]} {label}"
        for status, label in STATUS_LABELS.items()
        if counts[status]
        or status != TrialStatus.INTERRUPTED  # shown only where a sweep was cut short
    ]
    if other:
        parts.append(f"{other} with another status")
    return f"- Trials: {len(records)} ({', '.join(parts)})"


def _epochs_line(a: SweepAnalysis) -> str:
    trained = sum(epochs_run(r) for r in a.records)
    budget = len(a.records) * a.max_t
    if budget <= 0:
        return f"- Epochs trained: {trained} (no full budget: no trials or max_t = 0)"
    share = trained / budget
    return (
        f"- Epochs trained: {trained} of a full budget of {budget} "
        f"({len(a.records)} trials × {a.max_t} epochs) = {share:.1%}; "
        f"early stopping saved {1 - share:.1%}"
    )


def _best_line(a: SweepAnalysis) -> str:
    if a.scored:
        best_record, value, at = a.scored[0]
        return (
            f"- Best: {a.metric} = {value:.6g} in trial `{best_record.trial_id}` "
            f"({best_record.status}, epoch {at})"
        )
    if a.records and len(a.failed) == len(a.records):
        return "- Best: none — every trial failed, so there is nothing to rank or plot"
    if a.candidates:
        return "- Best: none — no trial met the constraints, so none is finalised"
    return f"- Best: none — no trial reported a finite `{a.metric}`"


# ---------------------------------------------------------------------------------------------
# Best configurations and failures


def best_configurations(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """The top TOP_N trials with their params; with constraints, better infeasible ones too."""
    lines = [f"## Best configurations (top {TOP_N})", ""]
    header = ["rank", "trial", "status", "epochs", f"best {a.metric}"]
    if a.constraints and a.candidates:
        lines += [
            "Infeasible trials (a constraint not met at their best epoch) that score better "
            "than a listed feasible one are shown unranked, marked in the `feasible` column.",
            "",
        ]
        marked = _marked_rows(a.candidates, a.metric, a.mode, a.constraints)
        rows = [
            [rank, r.trial_id, r.status, epochs_run(r), value, verdict] + _params(r, a)
            for rank, r, value, verdict in marked
        ]
        return lines + table(header + ["feasible"] + a.param_names, rows)
    if a.scored:
        rows = [
            [rank, r.trial_id, r.status, epochs_run(r), value] + _params(r, a)
            for rank, (r, value, _) in enumerate(a.scored[:TOP_N], start=1)
        ]
        return lines + table(header + a.param_names, rows)
    return lines + ["No trial has a value to rank.", ""]


def _params(record: TrialRecord, a: SweepAnalysis) -> list[Any]:
    return [(record.params or {}).get(name, MISSING) for name in a.param_names]


def _marked_rows(
    candidates: list[Ranked], metric: str, mode: str, constraints: Sequence[Constraint]
) -> list[tuple[Any, TrialRecord, float, str]]:
    """(rank or MISSING, record, value, feasible cell) in objective order: the top TOP_N
    feasible trials, ranked, and at most TOP_N infeasible ones scoring above the last of
    them, unranked and marked with the values that break a constraint."""
    rows: list[tuple[Any, TrialRecord, float, str]] = []
    ranks = infeasible = 0
    for record, value, _ in candidates:
        if ranks == TOP_N:
            break
        if feasible(record, metric, mode, constraints):
            ranks += 1
            rows.append((ranks, record, value, "yes"))
        elif infeasible < TOP_N:
            infeasible += 1
            rows.append((MISSING, record, value, _violations(record, metric, mode, constraints)))
    return rows


def _violations(
    record: TrialRecord, metric: str, mode: str, constraints: Sequence[Constraint]
) -> str:
    """'no: val_active_units 2 (>= 4)' for each constraint the trial breaks at its best epoch."""
    values = values_at_best(record, metric, mode, [c.metric for c in constraints])
    broken = [
        f"{c.metric} {'missing' if values[c.metric] is None else f'{values[c.metric]:.4g}'} "
        f"({c.operator} {c.bound:g})"
        for c in constraints
        if not c.holds(values[c.metric])
    ]
    return "no: " + ", ".join(broken)


def failed_trials(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """Each failed trial's epochs and the first line of its error."""
    lines = ["## Failed trials", ""]
    if not a.failed:
        return lines + ["No trial failed.", ""]
    rows = [[r.trial_id, epochs_run(r), first_line(r.error)] for r in a.failed]
    return lines + table(["trial", "epochs", "error"], rows)


# ---------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """The Pareto section of a multi-objective sweep; nothing for a single objective."""
    if len(a.objectives) <= 1:
        return []
    return pareto_lines(a.records, a.objectives, a.constraints, a.pick, out_dir)


def pareto_lines(
    records: list[TrialRecord],
    objectives: Sequence[tuple[str, str]],
    constraints: Sequence[Constraint],
    pick: str,
    out_dir: Path,
) -> list[str]:
    """The Pareto front of the feasible trials: a scatter of the first two objectives (the
    front joined), and a table of its trials; the one the finaliser retrains is named."""
    metrics, modes = [m for m, _ in objectives], [d for _, d in objectives]
    candidates = [r for r, _, _ in ranked(records, metrics[0], modes[0], constraints)]
    front = feasible_front(records, objectives, constraints)
    chosen = leaders(records, objectives, constraints, pick)
    lines = ["## Pareto front", ""]
    if not front:
        return lines + ["No feasible trial has every objective: no front.", ""]
    rule = "the knee" if pick == "knee" else f"the front's best {pick}"
    lines += [
        f"Objectives: {', '.join(f'`{m}` ({d})' for m, d in objectives)}, each read at the "
        f"trial's best epoch of `{metrics[0]}`. {len(front)} of {len(candidates)} feasible "
        f"trials are on the front; the finaliser retrains {rule} "
        f"(`finalise.pick`): trial {chosen[0][0].trial_id}.",
        "",
    ]
    path = out_dir / "pareto_front.png"
    plot_pareto(candidates, front, metrics, modes, path)
    lines += image("Pareto front", path, out_dir)
    rows = [[r.trial_id, *vector, "yes" if r is chosen[0][0] else ""] for r, vector in front]
    return lines + table(["trial", *metrics, "finalised"], rows)


# ---------------------------------------------------------------------------------------------
# Optuna's plots of the in-memory study


def optimisation_history(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """Each completed trial's value and the best so far, in sweep order."""
    lines = ["## Optimisation history", ""]
    if not a.completed:
        return lines + not_drawn(f"no trial completed with a finite `{a.metric}`")
    path = out_dir / "optimization_history.png"
    error = optuna_plot(
        optuna.visualization.matplotlib.plot_optimization_history,
        path,
        study=a.study,
        target_name=a.metric,
    )
    if error is not None:
        return lines + not_drawn(f"Optuna could not plot it ({error})")
    lines += [
        f"Each completed trial's best `{a.metric}` and the best so far; trial numbers "
        "are positions in the sweep from 0 (failed trials leave gaps).",
        "",
    ]
    return lines + image("Optimisation history", path, out_dir)


def parameters_vs_objective(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """A parallel-coordinate plot of the searched params that vary, and the objective."""
    lines = ["## Parameters vs objective", ""]
    if len(a.completed) < 2:
        reason = f"needs at least 2 completed trials, the sweep has {len(a.completed)}"
        return lines + not_drawn(reason)
    if not a.searched:
        return lines + not_drawn("no parameter was searched (all are constants)")
    if not a.varying:
        return lines + not_drawn("no searched parameter takes more than one value")
    return lines + _study_figure(
        a,
        optuna.visualization.matplotlib.plot_parallel_coordinate,
        "Parallel coordinate",
        out_dir,
        "parallel_coordinate.png",
        size=(max(8.0, 1.6 * (len(a.varying) + 1)), 5.0),
        params=a.varying,
    )


def hyperparameter_importance(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """fANOVA's importances as a table and Optuna's bar chart, or why there are none."""
    lines = ["## Hyperparameter importance", ""]
    importances = a.importances
    if importances.reason is not None:
        return lines + [f"Importance not computed: {importances.reason}.", ""]
    lines += [
        f"fANOVA importance of each varying parameter for `{a.metric}` "
        f"(over {len(a.completed)} completed trials; shares sum to 1).",
        "",
    ]
    lines += table(["parameter", "importance"], [[k, v] for k, v in importances.values.items()])
    return lines + _study_figure(
        a,
        optuna.visualization.matplotlib.plot_param_importances,
        "Parameter importances",
        out_dir,
        "param_importances.png",
        evaluator=KnownImportances(importances.values),
        params=importances.params,
    )


def _study_figure(
    a: SweepAnalysis,
    plot: Callable[..., Any],
    alt: str,
    out_dir: Path,
    file_name: str,
    **kwargs: Any,
) -> list[str]:
    """One of Optuna's plots of the sweep's study (the objective named after the metric),
    saved as out_dir/file_name and linked, or why it is missing; `kwargs` go to `optuna_plot`."""
    path = out_dir / file_name
    error = optuna_plot(plot, path, study=a.study, target_name=a.metric, **kwargs)
    return drawn_or_not(error, alt, path, out_dir, "Optuna could not plot it")


# ---------------------------------------------------------------------------------------------
# ASHA and the best trial


def asha_rung_survival(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """How many trials reached each ASHA rung: a table and a bar chart."""
    lines = ["## ASHA rung survival", ""]
    if not (a.survival and a.records):
        return lines + not_drawn("no trials or no ASHA rungs (max_t < 1)")
    lines += [
        f"grace_period {a.grace_period}, reduction_factor {a.reduction_factor}, max_t "
        f"{a.max_t}: trials whose history reached each rung's epoch.",
        "",
    ]
    rows = [[rung, n, f"{n / len(a.records):.0%}"] for rung, n in a.survival]
    lines += table(["rung (epoch)", "trials reached", "share"], rows)
    path = out_dir / "rung_survival.png"
    error = draw(plot_rungs, a.survival, len(a.records), path)
    return lines + drawn_or_not(error, "ASHA rung survival", path, out_dir, "the chart failed")


def best_trial_curves(a: SweepAnalysis, out_dir: Path) -> list[str]:
    """The best trial's learning curves, its best epoch marked."""
    lines = ["## Learning curves of the best trial", ""]
    if not a.scored:
        return lines + not_drawn("no trial has a value, so there is no best trial")
    best_record, _, at = a.scored[0]
    path = out_dir / "best_trial_curves.png"
    error = draw(plot_curves, best_record, a.metric, at, path)
    alt = f"Learning curves of trial {best_record.trial_id}"
    return lines + drawn_or_not(error, alt, path, out_dir, "the chart failed")


SWEEP_SECTIONS: tuple[Section, ...] = (
    summary,
    best_configurations,
    failed_trials,
    pareto_front,
    optimisation_history,
    parameters_vs_objective,
    hyperparameter_importance,
    asha_rung_survival,
    best_trial_curves,
)
