"""The sweep's Markdown report: a summary, ranked configs, Optuna plots, ASHA rungs, curves.

`write_report` turns the trials' per-epoch histories into `report.md` plus PNGs next to it.
A trial's objective is its best epoch (not its last): ASHA judges trials at rungs, and the
finaliser retrains the best configuration, so the best epoch is what a configuration can reach.
With constraints, the best trial is the best feasible one (its constrained metrics meet their
bounds at that epoch); infeasible trials stay in the ranking table, unranked and marked.

The Optuna plots come from an in-memory study rebuilt from the records (Ray's OptunaSearch
study is not kept after the sweep). Every plot that cannot be drawn (no finished trial, a single
trial, no searched parameter that varies) is replaced by a sentence saying why, so the report is
always written.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from sweeps.pareto import feasible_front, leaders, objective_vector
from sweeps.trials import (
    Constraint,
    TrialRecord,
    TrialStatus,
    best_value,
    check_mode,
    epoch_rows,
    epochs_run,
    feasible,
    finite_number,
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
DPI = 90
FINAL_IMAGES = (
    ("learning_curves", "Learning curves"),
    ("reconstructions", "Reconstructions"),
    ("latent_pca", "Latent space (PCA)"),
)
_PRIMITIVES = (type(None), bool, int, float, str)
_MISSING = object()  # a param absent from a record, shown apart from a sampled None


def asha_rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """ASHA's milestones grace * rf**k <= max_t, plus max_t itself (where trials finish)."""
    rungs: list[int] = []
    if grace_period >= 1 and reduction_factor >= 2:
        rung = grace_period
        while rung <= max_t:
            rungs.append(rung)
            rung *= reduction_factor
    if max_t >= 1 and max_t not in rungs:
        rungs.append(max_t)
    return rungs


def rung_survival(records: list[TrialRecord], asha: dict[str, int]) -> list[tuple[int, int]]:
    """(rung epoch, trials whose history reached it) for each ASHA rung."""
    reached = [epochs_run(record) for record in records]
    rungs = asha_rungs(
        int(asha.get("grace_period") or 1),
        int(asha.get("reduction_factor") or 2),
        int(asha.get("max_t") or 0),
    )
    return [(rung, sum(1 for epochs in reached if epochs >= rung)) for rung in rungs]


# ---------------------------------------------------------------------------------------------
# The in-memory Optuna study


def _plain(value: Any) -> Any:
    """numpy scalars as Python scalars, so they compare equal to the YAML choices."""
    return value.item() if isinstance(value, np.generic) else value


def _choice_key(value: Any, as_text: bool) -> Any:
    value = _plain(value)
    return repr(value) if as_text else value


@dataclass
class _SearchSpace:
    distributions: dict[str, BaseDistribution]
    # Choices Optuna cannot hold (lists, dicts) are shown as their repr.
    textual_choices: set[str]

    def optuna_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The record's params Optuna accepts: missing or out-of-range values are left out."""
        accepted = {}
        for name, dist in self.distributions.items():
            if name not in params:
                continue
            value = _plain(params[name])
            if isinstance(dist, CategoricalDistribution):
                value = _choice_key(value, name in self.textual_choices)
                try:
                    if value in dist.choices:
                        accepted[name] = value
                except TypeError:
                    continue
                continue
            number = finite_number(value)
            if number is None or not dist.low <= number <= dist.high:
                continue
            if isinstance(dist, IntDistribution):
                if number != int(number):
                    continue
                accepted[name] = int(number)
            else:
                accepted[name] = number
        return accepted


def _search_space(params_spec: dict[str, Any]) -> _SearchSpace:
    distributions: dict[str, BaseDistribution] = {}
    textual: set[str] = set()
    for name, spec in params_spec.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            continue  # a constant: nothing was searched
        ((kind, args),) = spec.items()
        try:
            if kind == "choice":
                values = [_plain(v) for v in args]
                as_text = not all(isinstance(v, _PRIMITIVES) for v in values)
                choices: list[Any] = []
                for value in values:
                    key = _choice_key(value, as_text)
                    if key not in choices:
                        choices.append(key)
                distributions[name] = CategoricalDistribution(choices)
                if as_text:
                    textual.add(name)
            elif kind in ("uniform", "loguniform"):
                distributions[name] = FloatDistribution(
                    float(args[0]), float(args[1]), log=kind == "loguniform"
                )
            elif kind in ("int", "logint"):
                distributions[name] = IntDistribution(
                    int(args[0]), int(args[1]), log=kind == "logint"
                )
        except (TypeError, ValueError, IndexError):
            continue  # space.py validates specs; a malformed one only loses its plots
    return _SearchSpace(distributions, textual)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logs and ExperimentalWarnings (the matplotlib module) meanwhile."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def build_study(
    records: list[TrialRecord], metric: str, mode: str, params_spec: dict[str, Any]
) -> optuna.Study:
    """One Optuna trial per record, in record order (so trial numbers are record positions).

    Finished and ASHA-stopped trials with a value are COMPLETE with their best value; failed
    trials and trials that never reported the metric are FAIL.
    """
    check_mode(mode)
    space = _search_space(params_spec)
    with _quiet_optuna():
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
        for record in records:
            params = space.optuna_params(record.params or {})
            distributions = {name: space.distributions[name] for name in params}
            value = (
                None if record.status == TrialStatus.FAILED else best_value(record, metric, mode)
            )
            state = TrialState.COMPLETE if value is not None else TrialState.FAIL
            trial = optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=distributions,
                user_attrs={"trial_id": str(record.trial_id), "status": record.status},
            )
            study.add_trial(trial)
    return study


def _varying(trials: list[Any], names: list[str]) -> list[str]:
    """The params with more than one value among `trials` (an axis of one value says nothing)."""
    return [
        name
        for name in names
        if len({repr(t.params[name]) for t in trials if name in t.params}) > 1
    ]


def _importance_params(study: optuna.Study, names: list[str]) -> tuple[list[str], str | None]:
    """Params fit for fANOVA (present in every complete trial, more than one value), or why not."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        return [], f"needs at least 2 completed trials, the sweep has {len(completed)}"
    if not names:
        return [], "no parameter was searched (all are constants)"
    # fANOVA only uses trials holding every param asked for, so one missing value would drop
    # a whole trial; params some trial lacks are left out instead.
    present = [name for name in names if all(name in trial.params for trial in completed)]
    usable = _varying(completed, present)
    if not usable:
        return [], "no searched parameter takes more than one value across the completed trials"
    if len({trial.value for trial in completed}) < 2:
        return [], "the objective has the same value in every completed trial"
    return usable, None


class _KnownImportances(optuna.importance.BaseImportanceEvaluator):
    """Hands plot_param_importances the numbers in the table: fANOVA is the slow step."""

    def __init__(self, importances: dict[str, float]) -> None:
        self._importances = dict(importances)

    def evaluate(
        self, study: optuna.Study, params: list[str] | None = None, *, target: Any = None
    ) -> dict[str, float]:
        return dict(self._importances)


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    """pyplot on the Agg backend, unless the caller already chose a backend by importing it."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        # Switching later would close the caller's figures, so only before the first import.
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _optuna_plot(
    plot: Any, path: Path, size: tuple[float, float] | None = None, **kwargs: Any
) -> str | None:
    """Draw one optuna.visualization.matplotlib plot into `path`; the error text if it fails."""
    import matplotlib

    plt = _pyplot()
    before = set(plt.get_fignums())
    try:
        # Optuna's plots switch the global style to ggplot; rc_context puts the caller's back.
        with matplotlib.rc_context(), _quiet_optuna():
            # Optuna lets matplotlib warn about flat axes (one value); the plot is still right.
            warnings.simplefilter("ignore", UserWarning)
            ax = plot(**kwargs)
            figure = ax.figure if not isinstance(ax, np.ndarray) else ax.flat[0].figure
            if size is not None:
                figure.set_size_inches(*size)
            # Optuna places its own axes (the parallel plot's twins), so tight_layout would
            # move them; a tight bounding box only trims the canvas around what is drawn.
            figure.savefig(path, dpi=DPI, bbox_inches="tight")
    except Exception as exc:  # a plot failing must not lose the rest of the report
        return f"{type(exc).__name__}: {exc}"
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
    return None


def _draw(plot: Any, *args: Any) -> str | None:
    """Run one of this module's plotters; the error text if it fails, so the report survives."""
    try:
        plot(*args)
    except Exception as exc:  # a plot failing must not lose the rest of the report
        return f"{type(exc).__name__}: {exc}"
    return None


def _figure(width: float, height: float) -> Any:
    # A pyplot-free Figure: nothing registered globally, nothing to close.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _plot_rungs(survival: list[tuple[int, int]], total: int, path: Path) -> None:
    figure = _figure(7, 4)
    ax = figure.add_subplot()
    labels = [str(rung) for rung, _ in survival]
    counts = [count for _, count in survival]
    bars = ax.bar(labels, counts, color="tab:blue")
    ax.bar_label(bars)
    ax.set_xlabel("ASHA rung (epoch)")
    ax.set_ylabel("trials reaching it")
    ax.set_ylim(0, max([total, *counts, 1]) * 1.15)
    ax.set_title(f"Trials reaching each rung (of {total})")
    figure.tight_layout()
    figure.savefig(path)


def _train_name(metric: str) -> str | None:
    return "train_" + metric[len("val_") :] if metric.startswith("val_") else None


def _plot_curves(record: TrialRecord, metric: str, best_at: int | None, path: Path) -> None:
    # A checkpoint restore may repeat epochs; the last report of an epoch wins.
    by_epoch: dict[int, dict[str, Any]] = {}
    for epoch, row in epoch_rows(record):
        by_epoch[epoch] = row
    epochs = sorted(by_epoch)

    def series(name: str) -> list[float]:
        values = (finite_number(by_epoch[epoch].get(name)) for epoch in epochs)
        return [value if value is not None else math.nan for value in values]

    panels = [(metric, [_train_name(metric), metric])]
    if metric != "val_loss":
        panels.append(("total loss", ["train_loss", "val_loss"]))
    figure = _figure(5.5 * len(panels), 4)
    for index, (title, names) in enumerate(panels, start=1):
        ax = figure.add_subplot(1, len(panels), index)
        drawn = False
        for name in names:
            if name is None:
                continue
            values = series(name)
            if any(not math.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
                drawn = True
        if best_at is not None:
            ax.axvline(best_at, color="grey", linestyle="--", linewidth=1, label="best epoch")
        if drawn:
            ax.legend()
        else:
            ax.text(
                0.5, 0.5, "no values reported", ha="center", va="center", transform=ax.transAxes
            )
        ax.set_xlabel("epoch")
        ax.set_title(title)
    figure.suptitle(f"Trial {record.trial_id}")
    figure.tight_layout()
    figure.savefig(path)


# ---------------------------------------------------------------------------------------------
# Markdown


def _cell(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, pipes and newlines escaped."""
    value = _plain(value)
    if value is _MISSING:
        text = "—"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _first_line(error: str | None) -> str:
    if not error:
        return "(no error message)"
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return "(no error message)"


def _image(lines: list[str], alt: str, path: Path, out_dir: Path) -> None:
    lines += [f"![{alt}]({path.relative_to(out_dir).as_posix()})", ""]


def _not_drawn(lines: list[str], reason: str) -> None:
    lines += [f"_Not drawn: {reason}._", ""]


def _place_image(source: Any, key: str, out_dir: Path) -> Path | None:
    """The image inside out_dir (copied there if it lies elsewhere); None if it is missing."""
    path = Path(source)
    if not path.is_file():
        return None
    resolved, root = path.resolve(), out_dir.resolve()
    if resolved.is_relative_to(root):
        return out_dir / resolved.relative_to(root)
    target = out_dir / f"final_{key}{path.suffix or '.png'}"
    shutil.copyfile(path, target)
    return target


def write_report(
    records: list[TrialRecord],
    metric: str,
    mode: str,
    params_spec: dict[str, Any],
    asha: dict[str, int],
    out_dir: Path,
    title: str = "Sweep report",
    final: dict[str, Any] | None = None,
    constraints: Sequence[Constraint] = (),
    objectives: Sequence[tuple[str, str]] = (),
    pick: str = "knee",
) -> Path:
    """Write `out_dir/report.md` and its PNGs; return the report's path.

    `asha` holds grace_period, reduction_factor and max_t (epochs). `final` (optional) holds
    "config", "metrics" and optional image paths "learning_curves", "reconstructions" and
    "latent_pca" from retraining the best configuration, and optionally "emotion": {"metrics":
    the emotion-preservation metrics on the test speakers, "confusion": the judge's confusion
    matrix PNG on generated samples or None}.

    `constraints` (sweep.constraints): the best trial is the best that meets them; the ranking
    table marks the others. `objectives`: a multi-objective sweep's (metric, mode) pairs, the
    first being `metric`: a Pareto section (front plot, table, the trial `pick` chose).
    """
    check_mode(mode)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    direction = "minimise" if mode == "min" else "maximise"
    max_t = int(asha.get("max_t") or 0)
    space = _search_space(params_spec)
    searched = list(space.distributions)
    extra = sorted({k for r in records for k in (r.params or {}) if k not in space.distributions})
    param_names = searched + extra
    scored = ranked(records, metric, mode, constraints)
    candidates = ranked(records, metric, mode)  # feasible or not
    failed = [r for r in records if r.status == TrialStatus.FAILED]

    lines = [f"# {title}", ""]

    # 1. Summary
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
    trained = sum(epochs_run(r) for r in records)
    budget = len(records) * max_t
    lines += ["## Summary", ""]
    lines.append(f"- Trials: {len(records)} ({', '.join(parts)})")
    if budget > 0:
        share = trained / budget
        lines.append(
            f"- Epochs trained: {trained} of a full budget of {budget} "
            f"({len(records)} trials × {max_t} epochs) = {share:.1%}; "
            f"early stopping saved {1 - share:.1%}"
        )
    else:
        lines.append(f"- Epochs trained: {trained} (no full budget: no trials or max_t = 0)")
    lines.append(f"- Objective: `{metric}` ({direction}; a trial's value is its best epoch)")
    if constraints:
        lines.append(
            f"- Constraints: {', '.join(f'`{c}`' for c in constraints)} at each trial's best "
            f"epoch: {len(scored)} of {len(candidates)} trials with a value meet them"
        )
    if scored:
        best_record, value, at = scored[0]
        lines.append(
            f"- Best: {metric} = {value:.6g} in trial `{best_record.trial_id}` "
            f"({best_record.status}, epoch {at})"
        )
    elif records and len(failed) == len(records):
        lines.append("- Best: none — every trial failed, so there is nothing to rank or plot")
    elif candidates:
        lines.append("- Best: none — no trial met the constraints, so none is finalised")
    else:
        lines.append(f"- Best: none — no trial reported a finite `{metric}`")
    lines.append("")

    # 2. Best configs and failures
    lines += [f"## Best configurations (top {TOP_N})", ""]
    if constraints and candidates:
        lines += [
            "Infeasible trials (a constraint not met at their best epoch) that score better "
            "than a listed feasible one are shown unranked, marked in the `feasible` column.",
            "",
        ]
        header = ["rank", "trial", "status", "epochs", f"best {metric}", "feasible"]
        rows = [
            [rank, r.trial_id, r.status, epochs_run(r), value, verdict]
            + [(r.params or {}).get(name, _MISSING) for name in param_names]
            for rank, r, value, verdict in _marked_rows(candidates, metric, mode, constraints)
        ]
        lines += _table(header + param_names, rows)
    elif scored:
        header = ["rank", "trial", "status", "epochs", f"best {metric}", *param_names]
        rows = [
            [rank, r.trial_id, r.status, epochs_run(r), value]
            + [(r.params or {}).get(name, _MISSING) for name in param_names]
            for rank, (r, value, _) in enumerate(scored[:TOP_N], start=1)
        ]
        lines += _table(header, rows)
    else:
        lines += ["No trial has a value to rank.", ""]
    lines += ["## Failed trials", ""]
    if failed:
        rows = [[r.trial_id, epochs_run(r), _first_line(r.error)] for r in failed]
        lines += _table(["trial", "epochs", "error"], rows)
    else:
        lines += ["No trial failed.", ""]

    if len(objectives) > 1:
        lines += pareto_lines(records, objectives, constraints, pick, out_dir)

    # 3. Optuna plots
    study = build_study(records, metric, mode, params_spec)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    lines += ["## Optimisation history", ""]
    if completed:
        path = out_dir / "optimization_history.png"
        error = _optuna_plot(
            optuna.visualization.matplotlib.plot_optimization_history,
            path,
            study=study,
            target_name=metric,
        )
        if error is None:
            lines += [
                f"Each completed trial's best `{metric}` and the best so far; trial numbers "
                "are positions in the sweep from 0 (failed trials leave gaps).",
                "",
            ]
            _image(lines, "Optimisation history", path, out_dir)
        else:
            _not_drawn(lines, f"Optuna could not plot it ({error})")
    else:
        _not_drawn(lines, f"no trial completed with a finite `{metric}`")

    lines += ["## Parameters vs objective", ""]
    if len(completed) < 2:
        _not_drawn(lines, f"needs at least 2 completed trials, the sweep has {len(completed)}")
    elif not searched:
        _not_drawn(lines, "no parameter was searched (all are constants)")
    elif not (varying := _varying(completed, searched)):
        _not_drawn(lines, "no searched parameter takes more than one value")
    else:
        path = out_dir / "parallel_coordinate.png"
        error = _optuna_plot(
            optuna.visualization.matplotlib.plot_parallel_coordinate,
            path,
            size=(max(8.0, 1.6 * (len(varying) + 1)), 5.0),
            study=study,
            params=varying,
            target_name=metric,
        )
        if error is None:
            _image(lines, "Parallel coordinate", path, out_dir)
        else:
            _not_drawn(lines, f"Optuna could not plot it ({error})")

    lines += ["## Hyperparameter importance", ""]
    usable, reason = _importance_params(study, searched)
    importances: dict[str, float] = {}
    if reason is None:
        try:
            with _quiet_optuna():
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                importances = optuna.importance.get_param_importances(
                    study, evaluator=evaluator, params=usable
                )
            if not all(finite_number(v) is not None for v in importances.values()):
                importances, reason = {}, "fANOVA returned non-finite importances"
        except Exception as exc:  # importance is optional; the report must still be written
            importances, reason = {}, f"fANOVA failed ({type(exc).__name__}: {exc})"
    if reason is not None:
        lines += [f"Importance not computed: {reason}.", ""]
    else:
        lines += [
            f"fANOVA importance of each varying parameter for `{metric}` "
            f"(over {len(completed)} completed trials; shares sum to 1).",
            "",
        ]
        lines += _table(["parameter", "importance"], [[k, v] for k, v in importances.items()])
        path = out_dir / "param_importances.png"
        error = _optuna_plot(
            optuna.visualization.matplotlib.plot_param_importances,
            path,
            study=study,
            evaluator=_KnownImportances(importances),
            params=usable,
            target_name=metric,
        )
        if error is None:
            _image(lines, "Parameter importances", path, out_dir)
        else:
            _not_drawn(lines, f"Optuna could not plot it ({error})")

    # 4. ASHA rungs
    survival = rung_survival(records, asha)
    lines += ["## ASHA rung survival", ""]
    if survival and records:
        lines += [
            f"grace_period {asha.get('grace_period')}, reduction_factor "
            f"{asha.get('reduction_factor')}, max_t {max_t}: trials whose history reached each "
            "rung's epoch.",
            "",
        ]
        rows = [[rung, n, f"{n / len(records):.0%}"] for rung, n in survival]
        lines += _table(["rung (epoch)", "trials reached", "share"], rows)
        path = out_dir / "rung_survival.png"
        error = _draw(_plot_rungs, survival, len(records), path)
        if error is None:
            _image(lines, "ASHA rung survival", path, out_dir)
        else:
            _not_drawn(lines, f"the chart failed ({error})")
    else:
        _not_drawn(lines, "no trials or no ASHA rungs (max_t < 1)")

    # 5. Best trial's curves
    lines += ["## Learning curves of the best trial", ""]
    if scored:
        best_record, _, at = scored[0]
        path = out_dir / "best_trial_curves.png"
        error = _draw(_plot_curves, best_record, metric, at, path)
        if error is None:
            _image(lines, f"Learning curves of trial {best_record.trial_id}", path, out_dir)
        else:
            _not_drawn(lines, f"the chart failed ({error})")
    else:
        _not_drawn(lines, "no trial has a value, so there is no best trial")

    if final is not None:
        lines += _final_section(final, out_dir)

    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report


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
    _plot_pareto(candidates, front, metrics, modes, path)
    _image(lines, "Pareto front", path, out_dir)
    rows = [[r.trial_id, *vector, "yes" if r is chosen[0][0] else ""] for r, vector in front]
    return lines + _table(["trial", *metrics, "finalised"], rows)


def _plot_pareto(
    candidates: list[TrialRecord],
    front: list[tuple[TrialRecord, tuple[float, ...]]],
    metrics: list[str],
    modes: list[str],
    path: Path,
) -> None:
    figure = _figure(5.5, 4.0)
    ax = figure.add_subplot()
    points = [v for r in candidates if (v := objective_vector(r, metrics, modes)) is not None]
    ax.scatter([v[0] for v in points], [v[1] for v in points], color="0.6", label="trials")
    ordered = sorted(vector for _, vector in front)
    ax.plot([v[0] for v in ordered], [v[1] for v in ordered], "o-", color="C3", label="front")
    ax.set_xlabel(f"{metrics[0]} ({modes[0]})")
    ax.set_ylabel(f"{metrics[1]} ({modes[1]})")
    ax.legend()
    ax.set_title("Pareto front of the feasible trials")
    figure.tight_layout()
    figure.savefig(path)


def _marked_rows(
    candidates: list[tuple[TrialRecord, float, int]],
    metric: str,
    mode: str,
    constraints: Sequence[Constraint],
) -> list[tuple[Any, TrialRecord, float, str]]:
    """(rank or _MISSING, record, value, feasible cell) in objective order: the top TOP_N
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
            rows.append((_MISSING, record, value, _violations(record, metric, mode, constraints)))
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


def _final_section(final: dict[str, Any], out_dir: Path) -> list[str]:
    lines = ["## Final model (best configuration retrained)", ""]
    config = final.get("config") or {}
    metrics = final.get("metrics") or {}
    lines += ["### Configuration", ""]
    if config:
        lines += _table(["field", "value"], [[k, v] for k, v in config.items()])
    else:
        lines += ["No configuration recorded.", ""]
    lines += ["### Test metrics", ""]
    if metrics:
        lines += _table(["metric", "value"], [[k, v] for k, v in metrics.items()])
    else:
        lines += ["No test metrics recorded.", ""]
    for key, caption in FINAL_IMAGES:
        source = final.get(key)
        if not source:
            continue
        lines += [f"### {caption}", ""]
        placed = _place_image(source, key, out_dir)
        if placed is None:
            _not_drawn(lines, f"image not found at {source}")
        else:
            _image(lines, caption, placed, out_dir)
    if final.get("emotion") is not None:
        lines += _emotion_section(final["emotion"], out_dir)
    if final.get("audio") is not None:
        lines += audio_section(final["audio"])
    return lines


# Columns of the exported-audio table: (metric suffix, heading). Accuracy columns are followed
# by their ratio to the real clips' value, the ceiling.
AUDIO_COLUMNS = (
    ("cnn_acc", "CNN judge acc"),
    ("smile_acc", "eGeMAPS judge acc"),
    ("cnn_uar", "CNN UAR"),
    ("smile_uar", "eGeMAPS UAR"),
    ("dnsmos", "DNSMOS ovrl"),
    ("dnsmos_sig", "DNSMOS sig"),
    ("dnsmos_n", "DNSMOS clips"),
    ("fd_cnn", "FD (CNN)"),
    ("fd_smile", "FD (eGeMAPS)"),
    ("stoi", "STOI"),
)
AUDIO_SETS = (
    ("real", "real test clips (ceiling)"),
    ("recon", "reconstructions (label withheld)"),
    ("gen", "generated samples (per emotion asked for)"),
    ("conv", "conversions (neutral -> emotion asked for)"),
)


def audio_section(audio: dict[str, Any]) -> list[str]:
    """The exported WAVs as the two judges and DNSMOS hear them, the real clips first."""
    metrics = dict(audio.get("metrics") or {})
    lines = [
        "### Exported audio (what users get)",
        "",
        f"WAVs written through the {audio.get('vocoder', '?')} vocoder, read back and judged: "
        "the project's CNN judge on log-mels extracted again, an eGeMAPS + scikit-learn judge "
        "(openSMILE), DNSMOS P.835, STOI against the original; both judges learnt from the "
        "real training speakers only. `x real` = the set's accuracy / the real clips'.",
        "",
    ]
    header = ["set"]
    for suffix, heading in AUDIO_COLUMNS:
        header.append(heading)
        if suffix.endswith("_acc"):
            header.append("x real")
    rows = []
    for name, label in AUDIO_SETS:
        if not any(key.startswith(f"wav_{name}_") for key in metrics):
            continue
        row: list[Any] = [label]
        for suffix, _ in AUDIO_COLUMNS:
            value = metrics.get(f"wav_{name}_{suffix}", _MISSING)
            row.append(value)
            if suffix.endswith("_acc"):
                ceiling = metrics.get(f"wav_real_{suffix}")
                usable = isinstance(value, float) and ceiling
                row.append(value / ceiling if usable else _MISSING)
        rows.append(row)
    lines += _table(header, rows) if rows else ["No exported-audio metrics recorded.", ""]
    gains = [[k, v] for k, v in metrics.items() if k.startswith("wav_aug_")]
    if gains:
        lines += [
            "#### Augmentation value (exported samples added to the training speakers)",
            "",
            "Speech emotion recognition trained on real + generated WAVs vs real only, tested "
            "on the real test speakers (one seed; see benchmarks/RESULTS_quality.md for many).",
            "",
        ]
        lines += _table(["metric", "value"], gains)
    return lines


# Groups of the emotion section: (heading, metric-name prefixes, what the numbers say).
EMOTION_GROUPS = (
    (
        "Reconstruction",
        ("test_emotion_", "test_fd_", "test_latent_"),
        "The judge on the real test clips and on the model's reconstructions of them: "
        "`_drop` = real - reconstructed accuracy (positive = emotion lost); `test_fd_recon` = "
        "Frechet distance between the two in the judge's embedding space (lower = closer); "
        "silhouette of the latent means by emotion.",
    ),
    (
        "Judge",
        ("judge_",),
        "The judge's accuracy and unweighted average recall on the real test speakers: the "
        "ceiling for the model's outputs.",
    ),
    (
        "Generation (conditional VAE)",
        ("gen_", "real_"),
        "The judge on samples drawn per emotion: accuracy (overall and per emotion asked for), "
        "Frechet distances to the real test clips, and diversity (generated / real within each "
        "emotion well below 1 = mode collapse).",
    ),
    (
        "Augmentation value",
        ("aug_",),
        "Test accuracy and UAR of a judge trained on real + generated clips vs on real clips "
        "only (one seed: differences of a few points are within seed noise).",
    ),
)


def _emotion_section(emotion: dict[str, Any], out_dir: Path) -> list[str]:
    lines = ["### Emotion preservation", ""]
    metrics = dict(emotion.get("metrics") or {})
    if not metrics:
        lines += ["No emotion metrics recorded.", ""]
    shown: set[str] = set()
    for heading, prefixes, meaning in EMOTION_GROUPS:
        rows = [[k, v] for k, v in metrics.items() if k.startswith(prefixes) and k not in shown]
        if not rows:
            continue
        shown |= {row[0] for row in rows}
        lines += [f"#### {heading}", "", meaning, ""]
        lines += _table(["metric", "value"], rows)
    rest = [[k, v] for k, v in metrics.items() if k not in shown]
    if rest:
        lines += ["#### Other", ""]
        lines += _table(["metric", "value"], rest)
    source = emotion.get("confusion")
    if source:
        caption = "Judge's confusion on generated samples"
        lines += [f"#### {caption}", ""]
        placed = _place_image(source, "emotion_confusion", out_dir)
        if placed is None:
            _not_drawn(lines, f"image not found at {source}")
        else:
            _image(lines, caption, placed, out_dir)
    return lines
