"""Search efficiency over replayed seeds: each arm's best value so far against epochs spent
(mean and 95% interval over seeds), and the share of full-budget random search's epochs an arm
needs to come within `tolerance` of random search's full-budget best.

The reference is random search without early stopping (every trial runs the full budget), the
baseline of the multi-fidelity literature (Li et al. 2018, Falkner et al. 2018): its final best,
averaged over seeds, is the value to reach, and its epochs (num_samples x max_epochs) the budget
to compare with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sweeps.simulator import Replay


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        if not math.isfinite(self.mean):
            return "n/a"
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}]"


def interval(values: list[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval of `values` (NaN where there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = float(values.mean())
    if len(values) == 1:
        return Interval(mean, mean, mean)
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * stats.sem(values)
    return Interval(mean, mean - float(half), mean + float(half))


def best_at(replay: Replay, budgets: np.ndarray) -> np.ndarray:
    """The replay's best value after each of `budgets` epochs (NaN before its first result;
    its final best once it has spent all it spends)."""
    spent = np.asarray(replay.spent)
    best = np.asarray(replay.best, dtype=float)
    index = np.searchsorted(spent, budgets, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.nan)


def epochs_to_reach(replay: Replay, target: float, mode: str) -> float:
    """Epochs spent when the replay's best first came within the target (inf: never)."""
    sign = 1.0 if mode == "min" else -1.0
    for spent, best in zip(replay.spent, replay.best, strict=True):
        if math.isfinite(best) and sign * best <= sign * target:
            return float(spent)
    return math.inf


def target_value(reference_best: float, tolerance: float, mode: str) -> float:
    """The value within `tolerance` (relative) of `reference_best`, on the worse side."""
    slack = tolerance * abs(reference_best)
    return reference_best + slack if mode == "min" else reference_best - slack


@dataclass(frozen=True)
class ArmSummary:
    name: str
    seeds: int
    final_best: Interval
    epochs_spent: Interval
    share_to_target: Interval  # over the seeds that reached it
    reached: int  # seeds that came within the target
    met: int  # seeds that came within it on at most `budget_share` of random's epochs
    median_share: float  # over all seeds (inf for those that never did)
    curve_budgets: np.ndarray
    curve: list[Interval]


def summarise(
    replays: dict[str, list[Replay]],
    reference: str,
    full_budget: int,
    mode: str,
    tolerance: float = 0.02,
    budget_share: float = 1 / 3,
    points: int = 60,
) -> tuple[float, list[ArmSummary]]:
    """(the target value, one summary per arm). `reference` names the full-budget random arm
    in `replays`; `full_budget` is its epochs (num_samples x max_epochs); a seed meets the
    target when it comes within `tolerance` on at most `budget_share` of them."""
    reference_best = interval([r.best[-1] for r in replays[reference]]).mean
    target = target_value(reference_best, tolerance, mode)
    budgets = np.unique(np.linspace(1, full_budget, points).round().astype(int))
    summaries = []
    for name, arm_replays in replays.items():
        needed = np.array([epochs_to_reach(r, target, mode) for r in arm_replays])
        shares = needed / full_budget
        curves = np.array([best_at(r, budgets) for r in arm_replays])
        summaries.append(
            ArmSummary(
                name=name,
                seeds=len(arm_replays),
                final_best=interval([r.best[-1] for r in arm_replays]),
                epochs_spent=interval([r.spent[-1] for r in arm_replays]),
                share_to_target=interval(shares[np.isfinite(shares)]),
                reached=int(np.isfinite(shares).sum()),
                met=int((shares <= budget_share + 1e-12).sum()),
                median_share=float(np.median(shares)),
                curve_budgets=budgets,
                curve=[interval(curves[:, i]) for i in range(len(budgets))],
            )
        )
    return target, summaries


def markdown_table(
    summaries: list[ArmSummary], target: float, tolerance: float, budget_share: float = 1 / 3
) -> str:
    lines = [
        f"Target: within {tolerance:.0%} of full-budget random search's best (value "
        f"{target:.4g}) on at most {budget_share:.3g} of its epochs.",
        "",
        "| arm | seeds | final best (95% CI) | epochs spent | share of random's epochs to "
        "target (seeds that reached it) | reached | median share | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.name} | {s.seeds} | {s.final_best} | {s.epochs_spent} | "
            f"{s.share_to_target} | {s.reached}/{s.seeds} | {_share(s.median_share)} | "
            f"{s.met}/{s.seeds} |"
        )
    return "\n".join(lines) + "\n"


def curves_frame(summaries: list[ArmSummary]) -> pd.DataFrame:
    """Each arm's best value so far against epochs spent: mean and 95% interval over seeds."""
    return pd.DataFrame(
        [
            {"arm": s.name, "epochs": int(b), "mean": c.mean, "low": c.low, "high": c.high}
            for s in summaries
            for b, c in zip(s.curve_budgets, s.curve, strict=True)
        ]
    )


def _share(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:.3f}"


def plot_regret(
    summaries: list[ArmSummary], reference_best: float, path: Path, metric: str, mode: str
) -> Path:
    """Regret (distance from random search's full-budget best) against epochs spent, mean and
    95% band per arm, log-scaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sign = 1.0 if mode == "min" else -1.0
    figure, axes = plt.subplots(figsize=(8, 5))
    for summary in summaries:
        mean = np.array([sign * (c.mean - reference_best) for c in summary.curve])
        low = np.array([sign * (c.low - reference_best) for c in summary.curve])
        high = np.array([sign * (c.high - reference_best) for c in summary.curve])
        (line,) = axes.plot(summary.curve_budgets, mean, label=summary.name)
        axes.fill_between(
            summary.curve_budgets,
            np.minimum(low, high),
            np.maximum(low, high),
            color=line.get_color(),
            alpha=0.15,
        )
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_yscale("symlog", linthresh=max(abs(reference_best) * 0.01, 1e-12))
    axes.set_xlabel("epochs spent (all trials)")
    axes.set_ylabel(f"{metric}: best so far - random's full-budget best")
    axes.set_title("Replayed sweeps: mean and 95% interval over seeds")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
