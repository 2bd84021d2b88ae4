"""The replay against reality, once: a real sweep (Ray Tune, Optuna TPE, ASHA, real training on
EmoDB) and its replay on the recorded curves with the same seed, trial by trial.

The real sweep searches the recorded grid's values (a choice per parameter), with the model,
corpus, feature cache and emotion judge of the recording, so each real trial trains a recorded
configuration; the shipped quick space's search settings otherwise (ASHA grace period and
reduction factor, TPE and its start-up count, 2 trials at once, the objective and its cadence).

    python benchmarks/replay_vs_real.py --trials 18
    python benchmarks/replay_vs_real.py table      # print the comparison again

Compared per trial, in proposal order: the configuration, the epochs it ran and whether ASHA
stopped it; and per epoch, the real curve against the recorded one (the same training?).
Results: benchmarks/results/replay_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweeps.curves import CurveLookup, check_replayable, read_curves  # noqa: E402
from sweeps.results import load_trial_records  # noqa: E402
from sweeps.simulator import arm_from_spec, replay_sweep  # noqa: E402
from sweeps.space import load_space, searched_params  # noqa: E402
from sweeps.study import ATTR_RAY_TRIAL, JOURNAL_FILE  # noqa: E402
from sweeps.trials import TrialStatus  # noqa: E402

TABLE = REPO / "benchmarks" / "data" / "curves_emodb.csv.gz"
RESULTS = REPO / "benchmarks" / "results" / "replay_check.json"


def overrides(meta: dict, trials: int, cache: Path) -> list[str]:
    """The recording's settings, its grid as choices, the quick space's search settings."""
    grid = [
        f"params.{name}={{choice: {json.dumps(values)}}}" for name, values in meta["grid"].items()
    ]
    recorded = [o for o in meta["overrides"] if not o.startswith("params.")]
    return [
        f"data.path={REPO.parent / 'shared' / 'data' / meta['corpus']}",
        f"data.cache_dir={cache}",
        *recorded,
        *grid,
        f"sweep.num_samples={trials}",
    ]


def run_real(out: Path, settings: list[str]) -> None:
    if (out / "trials.csv").is_file():
        return
    command = [
        sys.executable,
        str(REPO / "sweeps" / "run.py"),
        "--space",
        "quick",
        "--out",
        str(out),
    ]
    command += [a for s in settings for a in ("--set", s)] + ["--no-finalise"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def compare(out: Path, settings: list[str]) -> dict:
    spec = load_space("quick", settings)
    table = read_curves(TABLE, searched_params(spec.params))
    train = spec.experiment.train
    check_replayable(
        table, spec.params, spec.sweep.metric, train.max_epochs, spec.sweep.emotion_every
    )
    lookup = CurveLookup(table, spec.params)
    replay = replay_sweep(spec, lookup, arm_from_spec(spec), seed=spec.sweep.seed)
    real = sorted(load_trial_records(out / "tune"), key=_proposal_order(out))
    replayed = sorted(replay.trials, key=lambda t: t.number)
    rows = []
    for record, simulated in zip(real, replayed, strict=False):
        params = {k: record.params[k] for k in searched_params(spec.params)}
        recorded = lookup.curve(params).metrics["val_recon"]
        real_curve = np.array([row["val_recon"] for row in record.history])
        rows.append(
            {
                "trial": record.trial_id,
                "real_params": params,
                "replay_params": simulated.params,
                "same_config": params == simulated.params,
                "real_epochs": len(record.history),
                "replay_epochs": simulated.epochs,
                "real_stopped": record.status == TrialStatus.KILLED_BY_ASHA,
                "replay_stopped": simulated.stopped_by_scheduler,
                # The same configuration's real epochs against the recorded ones.
                "val_recon_max_abs_diff": float(
                    np.max(np.abs(real_curve - recorded[: len(real_curve)]))
                ),
            }
        )
    return {"settings": settings, "trials": rows}


def _proposal_order(out: Path):  # noqa: ANN202
    """Ray trial id -> the Optuna trial number it was proposed as (the sweep's journal)."""
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))
    (name,) = optuna.get_all_study_names(storage)
    numbers = {
        t.user_attrs[ATTR_RAY_TRIAL]: t.number
        for t in optuna.load_study(study_name=name, storage=storage).trials
    }
    return lambda record: numbers[record.trial_id]


def print_table(result: dict) -> None:
    rows = result["trials"]
    print("| # | configuration (real) | same config in replay | epochs real / replay | "
          "ASHA stop real / replay | val_recon max |diff| vs recorded |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for index, row in enumerate(rows):
        params = ", ".join(f"{k}={v:g}" for k, v in row["real_params"].items())
        print(
            f"| {index} | {params} | {'yes' if row['same_config'] else 'no'} | "
            f"{row['real_epochs']} / {row['replay_epochs']} | "
            f"{'yes' if row['real_stopped'] else 'no'} / {'yes' if row['replay_stopped'] else 'no'} | "
            f"{row['val_recon_max_abs_diff']:.2g} |"
        )
    same = [r for r in rows if r["same_config"]]
    agree = sum(r["real_epochs"] == r["replay_epochs"] for r in same)
    print(f"\n{len(same)}/{len(rows)} trials proposed the same configuration; of those, {agree} ran "
          "the same epochs in the replay as in reality")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "table"])
    parser.add_argument("--trials", type=int, default=18)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "replay_check")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "record_curves" / "cache")
    args = parser.parse_args()
    if args.action == "table":
        print_table(json.loads(RESULTS.read_text()))
        return
    meta = json.loads(Path(f"{TABLE}.meta.json").read_text())
    settings = overrides(meta, args.trials, args.cache)
    run_real(args.work / "real", settings)
    result = compare((args.work / "real").resolve(), settings)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


if __name__ == "__main__":
    main()
