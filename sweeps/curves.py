"""Recorded learning curves for replaying a sweep without training (sweeps.simulator).

A curve table holds, per configuration of the searched parameters, one row per epoch: the
parameters' values, `epoch`, the trainer's metrics (the objective among them) and the epoch's
seconds. It comes from `benchmarks/record_curves.py` (a grid, every configuration trained to
the full budget) or from a finished sweep's own trials (`curves_from_sweep`).

A searcher proposes values anywhere in the space's ranges; the replay charges each proposal
the curve of the nearest recorded configuration (per parameter, on a log scale for a log
distribution). So the space's ranges must lie within the recorded values and its choices among
them, or the replay would be charging curves nobody recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeps.space import searched_params

# Per epoch: training and validation, and the emotion and sample metrics (which a sweep computes
# every `sweep.emotion_every` epochs); a sweep's own results have one total per epoch.
EPOCH_SECONDS = "epoch_seconds"
METRICS_SECONDS = "metrics_seconds"
# Relative slack when checking a space's bounds against recorded values written with 6 digits.
BOUND_SLACK = 1e-5


class CurveError(ValueError):
    """A curve table that cannot replay a space: it names the table and what is missing."""


@dataclass(frozen=True)
class Curve:
    """One configuration's recorded epochs 1..n: metric name -> values by epoch."""

    params: dict[str, Any]
    metrics: dict[str, np.ndarray]

    @property
    def epochs(self) -> int:
        return len(self.metrics[EPOCH_SECONDS])


@dataclass(frozen=True)
class CurveTable:
    source: str  # where the curves came from, for messages
    params: tuple[str, ...]  # the parameter columns
    curves: tuple[Curve, ...]

    def values(self, name: str) -> list[Any]:
        """The recorded values of parameter `name`, sorted."""
        return sorted({curve.params[name] for curve in self.curves})

    @property
    def epochs(self) -> int:
        """The budget every configuration was recorded for (the shortest curve)."""
        return min(curve.epochs for curve in self.curves)


def read_curves(path: str | Path, params: list[str]) -> CurveTable:
    """The table at `path` (CSV, gzip allowed) for a space searching `params`, checked: every
    configuration has each epoch from 1 to its last exactly once. The parameter columns are
    `params` and any others the table's `.meta.json` lists in its grid (so a table that varies
    a parameter the space holds constant is caught)."""
    path = Path(path)
    if not path.is_file():
        raise CurveError(f"curves {path}: no such file")
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError) as exc:  # pandas' parser errors are ValueErrors
        raise CurveError(f"curves {path}: not a readable CSV table ({exc})") from exc
    meta = Path(f"{path}.meta.json")
    recorded = list(json.loads(meta.read_text())["grid"]) if meta.is_file() else []
    columns = tuple(dict.fromkeys([*params, *recorded]))
    return table_from_frame(frame, columns, str(path))


def table_from_frame(frame: pd.DataFrame, params: tuple[str, ...], source: str) -> CurveTable:
    for column in ("epoch", EPOCH_SECONDS, *params):
        if column not in frame.columns:
            what = "a parameter the space searches" if column in params else "needed"
            raise CurveError(f"curves {source}: no '{column}' column ({what})")
    curves = []
    for values, rows in frame.groupby(list(params), sort=True):
        key = dict(zip(params, values, strict=True))
        epochs = rows["epoch"].astype(int).tolist()
        expected = list(range(1, max(epochs) + 1))
        if sorted(epochs) != expected:
            missing = sorted(set(expected) - set(epochs))
            repeated = sorted({e for e in epochs if epochs.count(e) > 1})
            problems = [f"missing {missing}"] * bool(missing) + [f"repeated {repeated}"] * bool(
                repeated
            )
            raise CurveError(
                f"curves {source}: configuration {_describe(key)}: expected epochs 1 to "
                f"{max(epochs)} once each; {', '.join(problems)}"
            )
        rows = rows.sort_values("epoch")
        numeric = rows.drop(columns=list(params)).select_dtypes("number")
        curves.append(
            Curve(
                {k: _plain(v) for k, v in key.items()},
                {c: numeric[c].to_numpy(dtype=float) for c in numeric.columns},
            )
        )
    if not curves:
        raise CurveError(f"curves {source}: no rows")
    return CurveTable(source, params, tuple(curves))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _describe(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def check_replayable(
    table: CurveTable, params: dict[str, Any], metric: str, max_epochs: int, every: int = 0
) -> None:
    """Raise CurveError unless `table` can replay a sweep over `params` (a space's `params`
    section) scored by `metric` for `max_epochs` epochs."""
    where = f"curves {table.source}"
    searched = searched_params(params)
    for name in searched:
        _check_domain(table, name, params[name], where)
    fixed = [name for name in table.params if name not in searched and len(table.values(name)) > 1]
    if fixed:
        raise CurveError(
            f"{where}: the table varies {fixed}, which the space does not search: set it in "
            "the space's params (a choice of one recorded value) so the replay knows which curves"
        )
    names = set().union(*(curve.metrics for curve in table.curves))
    if metric not in names:
        raise CurveError(f"{where}: no '{metric}' column (the space's sweep.metric)")
    if every and METRICS_SECONDS not in names:
        raise CurveError(f"{where}: no '{METRICS_SECONDS}' column for the emotion metrics' time")
    short = [c for c in table.curves if c.epochs < max_epochs]
    if short:
        raise CurveError(
            f"{where}: {len(short)} configuration(s) stop before the space's train.max_epochs "
            f"({max_epochs}), e.g. {_describe(short[0].params)} at epoch {short[0].epochs}"
        )


def _check_domain(table: CurveTable, name: str, spec: Any, where: str) -> None:
    recorded = table.values(name)
    if not isinstance(spec, dict):  # a constant of the space
        if spec not in recorded:
            raise CurveError(f"{where}: params.{name} = {spec!r} is not among {recorded}")
        return
    ((kind, args),) = spec.items()
    if kind == "choice":
        outside = [v for v in args if not any(_same(v, r) for r in recorded)]
        if outside:
            raise CurveError(
                f"{where}: params.{name}: choices {outside} were not recorded ({recorded})"
            )
        return
    low, high = args
    if low < recorded[0] * (1 - BOUND_SLACK) or high > recorded[-1] * (1 + BOUND_SLACK):
        raise CurveError(
            f"{where}: params.{name}: the space's range [{low:.4g}, {high:.4g}] reaches "
            f"outside the recorded values [{recorded[0]:.4g} .. {recorded[-1]:.4g}]"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=BOUND_SLACK)
    return a == b


class CurveLookup:
    """Proposals -> recorded curves: the nearest recorded configuration, each parameter scaled
    to [0, 1] over its recorded values (log-scaled for a log distribution; a categorical value
    is 0 or 1 away). On a full grid this is the nearest recorded value of each parameter."""

    def __init__(self, table: CurveTable, params: dict[str, Any]) -> None:
        self._table = table
        self._params = params
        self._scales = {name: _scale(table.values(name), params.get(name)) for name in table.params}
        self._points = np.array(
            [[self._scales[n](c.params[n]) for n in table.params] for c in table.curves]
        )

    def curve(self, proposal: Mapping[str, Any]) -> Curve:
        """The recorded curve a proposal is charged with."""
        point = []
        for name in self._table.params:
            value = proposal.get(name, self._params.get(name))
            point.append(self._scales[name](value))
        distances = np.abs(self._points - np.array(point)).sum(axis=1)
        return self._table.curves[int(np.argmin(distances))]


@dataclass(frozen=True)
class _Scale:
    """A parameter's values mapped to [0, 1] over its recorded ones (picklable, so a lookup
    can go to worker processes)."""

    log: bool
    low: float
    width: float
    categories: tuple = ()  # non-numeric values: their index

    def __call__(self, value: Any) -> float:
        if self.categories:
            return float(self.categories.index(value)) if value in self.categories else -1.0
        number = math.log(value) if self.log else float(value)
        return (number - self.low) / self.width


def _scale(recorded: list[Any], spec: Any) -> _Scale:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in recorded):
        return _Scale(False, 0.0, 1.0, tuple(recorded))
    log = isinstance(spec, dict) and next(iter(spec)).startswith("log")
    low, high = (math.log(v) if log else float(v) for v in (recorded[0], recorded[-1]))
    return _Scale(log, low, (high - low) or 1.0)


def curves_from_sweep(sweep_dir: str | Path, params: list[str]) -> CurveTable:
    """A finished sweep's trials that ran the full budget (the most epochs any trial ran) as
    a curve table: each trial's epochs from its Tune result.json, its epoch time being the
    trial's wall time per epoch, metrics included. A trial stopped early has no curve past its
    stop, so it is left out."""
    sweep_dir = Path(sweep_dir)
    frames = []
    for path in sorted((sweep_dir / "tune").glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            frame = pd.DataFrame([{**row.get("config", {}), **_numbers(row)} for row in rows])
            frames.append(frame.assign(**{EPOCH_SECONDS: frame["time_this_iter_s"]}))
    if not frames:
        raise CurveError(f"curves {sweep_dir}: no trials (tune/*/result.json)")
    budget = max(int(frame["epoch"].max()) for frame in frames)
    full = [frame for frame in frames if int(frame["epoch"].max()) == budget]
    # Two trials of the same values (a choice space): the first is the configuration's curve.
    unique = {tuple(frame[p].iloc[0] for p in params if p in frame): frame for frame in full[::-1]}
    return table_from_frame(
        pd.concat(unique.values(), ignore_index=True), tuple(params), str(sweep_dir)
    )


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "config"
    }
