"""The sweep report's figures (sweeps.report): Optuna's matplotlib plots of the in-memory
study, and this module's own charts of ASHA's rungs, a trial's learning curves and the Pareto
front. Each writes one PNG; a plot that fails returns its error text, so the report survives."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sweeps.pareto import objective_vector
from sweeps.report_analysis import quiet_optuna
from sweeps.trials import TrialRecord, epoch_rows, finite_number

DPI = 90


def _pyplot() -> Any:
    """pyplot on the Agg backend, unless the caller already chose a backend by importing it."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        # Switching later would close the caller's figures, so only before the first import.
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def optuna_plot(
    plot: Callable[..., Any], path: Path, size: tuple[float, float] | None = None, **kwargs: Any
) -> str | None:
    """Draw one optuna.visualization.matplotlib plot into `path`; the error text if it fails."""
    import matplotlib

    plt = _pyplot()
    before = set(plt.get_fignums())
    try:
        # Optuna's plots switch the global style to ggplot; rc_context puts the caller's back.
        with matplotlib.rc_context(), quiet_optuna():
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


def draw(plot: Callable[..., None], *args: Any) -> str | None:
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


def plot_rungs(survival: list[tuple[int, int]], total: int, path: Path) -> None:
    """Bars of the trials reaching each ASHA rung, out of `total`."""
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


def _epoch_series(record: TrialRecord) -> tuple[list[int], Callable[[str], list[float]]]:
    """The trial's epochs, and each metric's values over them (NaN where not reported)."""
    # A checkpoint restore may repeat epochs; the last report of an epoch wins.
    by_epoch: dict[int, dict[str, Any]] = {}
    for epoch, row in epoch_rows(record):
        by_epoch[epoch] = row
    epochs = sorted(by_epoch)

    def series(name: str) -> list[float]:
        values = (finite_number(by_epoch[epoch].get(name)) for epoch in epochs)
        return [value if value is not None else math.nan for value in values]

    return epochs, series


def plot_curves(record: TrialRecord, metric: str, best_at: int | None, path: Path) -> None:
    """The objective's train and validation curves (and the total loss's, when the objective
    is another metric), with the best epoch marked."""
    epochs, series = _epoch_series(record)
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


def plot_pareto(
    candidates: list[TrialRecord],
    front: list[tuple[TrialRecord, tuple[float, ...]]],
    metrics: list[str],
    modes: list[str],
    path: Path,
) -> None:
    """The candidates in the first two objectives, the front's points joined."""
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
