"""Replay sweeps on recorded learning curves: Ray Tune's schedulers and the Optuna searcher,
no training. Many seeds in minutes, to choose a space's ASHA and TPE settings before spending
GPU hours (sweeps.simulator, sweeps.efficiency).

python sweeps/replay.py --curves benchmarks/data/curves_emodb.csv.gz --space quick \\
    --set train.max_epochs=30 --set sweep.num_samples=36 --scheduler asha hyperband fifo \\
    --searcher tpe random --seeds 50
python sweeps/replay.py --from runs/old --space runs/old/space.yaml --grace-period 1 2 4
python sweeps/replay.py --curves TABLE --space quick --compare-with runs/real   # check a replay

Full-budget random search (random+fifo) is always replayed: the reference each arm is scored
against (the share of its epochs an arm needs to come within --tolerance of its best).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import optuna
from tqdm import tqdm

from emovae.config import ConfigError, apply_overrides
from sweeps.curves import CurveError, CurveLookup, check_replayable, curves_from_sweep, read_curves
from sweeps.efficiency import curves_frame, markdown_table, plot_regret, summarise
from sweeps.simulator import REFERENCE_ARM, SCHEDULERS, SEARCHERS, Arm, arm_from_spec, replay_arms
from sweeps.space import SweepSpec, load_space, searched_params, spec_from_dict
from sweeps.sweep_folder import read_state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--curves", type=Path, help="a curve table (benchmarks/record_curves.py)")
    source.add_argument(
        "--from",
        dest="sweep",
        type=Path,
        help="a finished sweep whose full-budget trials to replay",
    )
    parser.add_argument(
        "--space",
        help="space name or YAML path (default: with --from, that sweep's own space; else quick)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--scheduler", nargs="+", choices=SCHEDULERS, default=["asha"])
    parser.add_argument("--searcher", nargs="+", choices=SEARCHERS, default=["tpe"])
    parser.add_argument("--grace-period", nargs="+", type=int, help="default: the space's")
    parser.add_argument("--reduction-factor", nargs="+", type=float, help="default: the space's")
    parser.add_argument("--tpe-startup", nargs="+", type=int, help="default: the space's")
    parser.add_argument("--brackets", type=int, default=3, help="hyperband's brackets")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--workers", type=int, default=1, help="processes replaying seeds")
    parser.add_argument("--out", type=Path, help="default: runs/replay/<space>")
    return parser


def arms_from_args(args: argparse.Namespace, spec: SweepSpec) -> list[Arm]:
    """Every combination of the listed settings (FIFO ignores ASHA's), each once."""
    grid = itertools.product(
        args.scheduler,
        args.searcher,
        args.grace_period or [spec.sweep.grace_period],
        args.reduction_factor or [spec.sweep.reduction_factor],
        args.tpe_startup or [spec.sweep.tpe_startup_trials],
    )
    arms: dict[str, Arm] = {}
    for scheduler, searcher, grace, factor, startup in grid:
        arm = arm_from_spec(
            spec,
            scheduler=scheduler,
            searcher=searcher,
            grace_period=grace,
            reduction_factor=factor,
            tpe_startup_trials=startup,
            brackets=args.brackets,
        )
        arms.setdefault(arm.name, arm)
    return list(arms.values())


def _space(args: argparse.Namespace) -> SweepSpec:
    if args.space is None and args.sweep is not None:
        state = read_state(args.sweep)
        return spec_from_dict(
            apply_overrides(state.space, args.overrides), state.name, state.source
        )
    return load_space(args.space or "quick", args.overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per replayed sweep
    try:
        spec = _space(args)
        params = searched_params(spec.params)
        table = (
            read_curves(args.curves, params)
            if args.curves
            else curves_from_sweep(args.sweep, params)
        )
        train = spec.experiment.train
        check_replayable(
            table, spec.params, spec.sweep.metric, train.max_epochs, spec.sweep.emotion_every
        )
        lookup = CurveLookup(table, spec.params)
        arms = arms_from_args(args, spec)
        print(
            f"{len(table.curves)} recorded configurations from {table.source}; "
            f"{spec.sweep.num_samples} trials x {train.max_epochs} epochs, "
            f"{spec.sweep.max_concurrent} at once, {spec.sweep.metric} ({spec.sweep.mode})"
        )
        total = len({a.name for a in [REFERENCE_ARM, *arms]}) * args.seeds
        with tqdm(total=total, unit="sweep", file=sys.stderr) as bar:
            replays = replay_arms(
                spec, lookup, arms, args.seeds, on_replay=bar.update, workers=args.workers
            )
    except (ConfigError, CurveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    full_budget = spec.sweep.num_samples * train.max_epochs
    target, summaries = summarise(
        replays, REFERENCE_ARM.name, full_budget, spec.sweep.mode, args.tolerance
    )
    out = args.out or Path("runs") / "replay" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    table_text = markdown_table(summaries, target, args.tolerance)
    (out / "efficiency.md").write_text(table_text)
    reference_best = next(s for s in summaries if s.name == REFERENCE_ARM.name).final_best.mean
    plot_regret(summaries, reference_best, out / "regret.png", spec.sweep.metric, spec.sweep.mode)
    (out / "replays.json").write_text(json.dumps(_as_json(replays), indent=1) + "\n")
    curves_frame(summaries).to_csv(out / "best_so_far.csv", index=False)
    print(table_text)
    written = ", ".join(str(out / n) for n in ("efficiency.md", "regret.png", "best_so_far.csv"))
    print(f"Written: {written}, {out / 'replays.json'}")
    return 0


def _as_json(replays: dict) -> dict:
    return {
        name: [
            {
                "seed": r.seed,
                "arm": asdict(r.arm),
                "epochs_spent": r.spent[-1],
                "final_best": r.best[-1],
                "simulated_seconds": r.clock[-1],
                "trials": [asdict(t) for t in r.trials],
            }
            for r in arm_replays
        ]
        for name, arm_replays in replays.items()
    }


if __name__ == "__main__":
    raise SystemExit(main())
