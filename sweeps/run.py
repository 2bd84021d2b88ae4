"""Run a hyperparameter sweep of the emovae VAE: Ray Tune + Optuna (TPE) + ASHA, tracked in MLflow.

python sweeps/run.py --space quick
python sweeps/run.py --space default --set data.path=/data/emodb/wav --address auto
python sweeps/run.py --space quick --out runs/quick --resume     # after a crash or kill
python sweeps/run.py --space quick --out runs/quick2 --warm-start runs/quick  # start from its trials
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

# MLflow's client retries a dead server for about two minutes per call by default, and the
# driver logs from Tune's event loop: fail fast instead and let the logger queue and retry.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
from pathlib import Path

from emovae.checkpoint import CheckpointError
from emovae.config import ConfigError
from emovae.data.corpus import CorpusError
from emovae.features import AudioError
from sweeps.cluster import ClusterError
from sweeps.console import LOG_FILE
from sweeps.databases import masked
from sweeps.driver import (
    TUNE_DIR,
    SweepFailedError,
    SweepInterruptedError,
    SweepResult,
    resume_command,
    run_sweep,
)
from sweeps.space import load_space
from sweeps.study import StudyError
from sweeps.tracking import TrackingError
from sweeps.trials import TrialRecord, best_value, epochs_run, feasible
from sweeps.tuner import TUNE_SAVE_PERIOD_S
from sweeps.warm_start import WarmStartRequest

USER_ERRORS = (
    ConfigError,
    CorpusError,
    AudioError,
    CheckpointError,
    TrackingError,
    SweepFailedError,
    ClusterError,
    StudyError,
)
INTERRUPTED_EXIT = 130  # the shell's code for a process stopped by SIGINT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--space", default="quick", help="space name in search_spaces/ or a YAML path"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one space entry, e.g. --set sweep.num_samples=4 (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="sweep folder (default: runs/<space name>)")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI, "
        "else sqlite in the sweep folder)",
    )
    parser.add_argument(
        "--address", help="join a running Ray cluster (e.g. auto); default: start one"
    )
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    parser.add_argument(
        "--warm-start",
        metavar="SWEEP_DIR",
        help="start the search from an earlier sweep's finished trials (compatible spaces)",
    )
    parser.add_argument(
        "--warm-start-skip-incompatible",
        action="store_true",
        help="with --warm-start: leave out (and list) trials or parameters that do not fit "
        "this space instead of failing",
    )
    parser.add_argument(
        "--no-finalise", action="store_true", help="skip retraining the best config"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Ray Tune's own console output (a box per trial result) and the trials' output, "
        "instead of the compact table (they go to the sweep folder's sweep.log and trial folders)",
    )
    return parser


def print_summary(result: SweepResult) -> None:
    print(f"\nSweep finished: {result.sweep_dir}")
    # With constraints, a trial that breaks one at its best epoch is marked and never chosen.
    marked = bool(result.constraints)
    feasible_column = f"{'feasible':>9}" if marked else ""
    print(f"{'trial':<14}{'status':<16}{'epochs':>7}  {result.metric:>12}{feasible_column}  params")
    for t in sorted(result.trials, key=lambda t: _sort_key(t, result)):
        score = best_value(t, result.metric, result.mode)
        value = f"{score:.5f}" if score is not None else "-"
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
        )
        verdict = ""
        if marked:
            ok = feasible(t, result.metric, result.mode, result.constraints)
            verdict = f"{'yes' if ok else 'no':>9}"
        print(f"{t.trial_id:<14}{t.status:<16}{epochs_run(t):>7}  {value:>12}{verdict}  {params}")
    if marked:
        print(f"Constraints at each trial's best epoch: {', '.join(map(str, result.constraints))}")
    if result.best is not None:
        print(f"\nBest trial {result.best.trial_id}: {result.metric} = {result.best_value:.5f}")
    # MLflow 3's UI opens in its GenAI mode unless the link asks for its model-training mode.
    runs_page = f"#/experiments/{result.experiment_id}?workflowType=machine_learning"
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow: {result.tracking_uri.rstrip('/')}/{runs_page}")
    else:
        print(
            f"MLflow: mlflow ui --backend-store-uri {masked(result.tracking_uri)}, then open "
            f"http://127.0.0.1:5000/{runs_page}"
        )


def _sort_key(trial: TrialRecord, result: SweepResult) -> tuple[bool, float]:
    score = best_value(trial, result.metric, result.mode)
    sign = 1 if result.mode == "min" else -1
    return (score is None, sign * (score or 0.0))


def _warm_start(args: argparse.Namespace) -> WarmStartRequest | None:
    if args.warm_start is None:
        if args.warm_start_skip_incompatible:
            raise ConfigError("--warm-start-skip-incompatible needs --warm-start SWEEP_DIR")
        return None
    return WarmStartRequest(args.warm_start, args.warm_start_skip_incompatible)


def _sigterm_as_sigint(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler, `kill`) stops the sweep the way Ctrl-C does: Tune saves its state
    and the driver stops without finalising."""
    signal.raise_signal(signal.SIGINT)


def install_signal_handlers() -> None:
    """SIGTERM stops the sweep as Ctrl-C does. A shell starts a background job (`... &`) with
    SIGINT ignored, which would make both signals do nothing: SIGINT gets Python's default
    handler back."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_sigint)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    sweep_dir = args.out
    try:
        spec = None if args.resume else load_space(args.space, args.overrides)
        sweep_dir = args.out or Path("runs") / (spec.name if spec else args.space)
        if args.address and not sweep_dir.is_absolute():
            raise ConfigError(
                f"--out {sweep_dir}: on a cluster the sweep folder is Ray's storage path and must "
                "be an absolute path on storage every node shares (NFS, EFS), e.g. /app/runs/quick"
            )
        # How often Tune saves what --resume restores from (why: sweeps.tuner).
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(TUNE_SAVE_PERIOD_S))
        # Tune reads it when the sweep starts: its classic engine takes our compact reporter.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if args.verbose else "0"
        if not args.verbose:
            print(
                f"Ray's log: {Path(sweep_dir) / LOG_FILE}; each trial's output: "
                f"{Path(sweep_dir) / TUNE_DIR}/<trial>/stdout and stderr (--verbose: here)",
                flush=True,
            )
        result = run_sweep(
            spec,
            sweep_dir,
            args.tracking_uri,
            args.address,
            resume=args.resume,
            on_stage=lambda message: print(message, flush=True),
            progress=None if args.verbose else sys.stdout,
            warm_start=_warm_start(args),
        )
        print_summary(result)
        if args.no_finalise:
            return 0
        if not result.finalise_enabled:
            print("\nNot finalising: the space sets finalise.enabled to false.")
            return 0
        from sweeps.finalise import print_final  # torch-heavy imports only when needed
        from sweeps.finaliser import finalise, is_finalised

        if result.already_complete and is_finalised(sweep_dir):
            print(
                f"\nThis sweep is complete and finalised: nothing to resume. To retrain and "
                f"export again: python sweeps/finalise.py --sweep {sweep_dir}"
            )
            return 0
        print("\nFinalising: retraining the best configuration ...")
        # A progress bar redraws itself: on a terminal only, never into a log file.
        print_final(finalise(sweep_dir, progress=sys.stdout.isatty()))
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SweepInterruptedError as exc:
        print(f"\n{exc}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:
        where = f": {resume_command(sweep_dir)}" if sweep_dir else ""
        print(f"\nInterrupted; what was saved resumes with{where}", file=sys.stderr)
        return INTERRUPTED_EXIT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
