"""The sweep's Markdown report: a summary, ranked configs, Optuna plots, ASHA rungs, curves.

`analyse_sweep` works out what the trials' per-epoch histories show and `write_report` renders
that analysis as `report.md` plus PNGs next to it.
A trial's objective is its best epoch (not its last): ASHA judges trials at rungs, and the
finaliser retrains the best configuration, so the best epoch is what a configuration can reach.
With constraints, the best trial is the best feasible one (its constrained metrics meet their
bounds at that epoch); infeasible trials stay in the ranking table, unranked and marked.

The Optuna plots come from an in-memory study rebuilt from the records (Ray's OptunaSearch
study is not kept after the sweep). Every plot that cannot be drawn (no finished trial, a single
trial, no searched parameter that varies) is replaced by a sentence saying why, so the report is
always written.

The work is split by what it does: `report_analysis` works out everything shown (ranking, rungs,
the study, importances), `report_sections` and `report_final` render it section by section,
`report_plots` draws the figures and `report_markdown` holds the Markdown pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeps.report_analysis import (
    SweepAnalysis,
    analyse_sweep,
    asha_rungs,
    build_study,
    rung_survival,
)
from sweeps.report_final import (
    AUDIO_COLUMNS,
    AUDIO_SETS,
    EMOTION_GROUPS,
    FINAL_IMAGES,
    audio_section,
    final_lines,
)
from sweeps.report_plots import DPI
from sweeps.report_sections import STATUS_LABELS, SWEEP_SECTIONS, TOP_N, pareto_lines

# The public names from before the report was split into report_* modules: importers keep
# `from sweeps.report import ...`.
__all__ = [
    "AUDIO_COLUMNS",
    "AUDIO_SETS",
    "DPI",
    "EMOTION_GROUPS",
    "FINAL_IMAGES",
    "STATUS_LABELS",
    "TOP_N",
    "SweepAnalysis",
    "analyse_sweep",
    "asha_rungs",
    "audio_section",
    "build_study",
    "pareto_lines",
    "rung_survival",
    "write_report",
]


def write_report(
    analysis: SweepAnalysis,
    out_dir: Path,
    title: str = "Sweep report",
    final: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir/report.md` and its PNGs for an analysed sweep; return the report's path.

    `final` (optional) holds "config", "metrics" and optional image paths "learning_curves",
    "reconstructions" and "latent_pca" from retraining the best configuration, and optionally
    "emotion": {"metrics": the emotion-preservation metrics on the test speakers, "confusion":
    the judge's confusion matrix PNG on generated samples or None}, and "audio" (see
    `audio_section`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for section in SWEEP_SECTIONS:
        lines += section(analysis, out_dir)
    if final is not None:
        lines += final_lines(final, out_dir)
    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
