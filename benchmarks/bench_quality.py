"""Quality of what users get, against the targets of the generated-speech issue.

Retrains one configuration (a sweep's best trial, or constants given with --set) with several
training seeds, through the finaliser's own steps (retrain -> evaluate -> export -> judge the
WAVs), and records every metric per seed; `augment` repeats the augmentation test over judge
seeds; `table` prints mean and spread per arm beside the targets.

    python benchmarks/bench_quality.py from-final --sweep runs/emodb_cpu --name temporal_diffusion
    python benchmarks/bench_quality.py run --space emodb_cpu \\
        --set data.path=../shared/data/emodb/wav --params-from runs/emodb_cpu \\
        --seeds 1 2 --name temporal_diffusion
    python benchmarks/bench_quality.py run ... --set train.arch=seed --set train.prior=gaussian \\
        --set finalise.max_epochs=60 --seeds 0 --name seed_arch
    python benchmarks/bench_quality.py run ... --checkpoint runs/bench_quality/NAME/seed0/... \\
        --set finalise.vocoder=griffinlim --seeds 0 --name temporal_diffusion_griffinlim
    python benchmarks/bench_quality.py augment --name temporal_diffusion --seed 0 \\
        --judge-seeds 0 1 2 3 4
    python benchmarks/bench_quality.py table

Results: benchmarks/results/quality/<name>/seed<N>.json (and augment_seed<N>.json); models and
WAVs under --work (default runs/bench_quality), not in the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovae.audio.export import read_manifest
from emovae.audio.vocoder import load_vocoder
from emovae.checkpoint import load_model
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluate import evaluate_checkpoint
from emovae.evaluation.exported_audio import (
    AudioJudges,
    WavSet,
    augmentation_control_rows,
    augmentation_gain,
    prepare_audio_judges,
    wav_set,
)
from emovae.generate import export_copy_synthesis
from emovae.runtime import select_device
from emovae.train import train
from sweeps.driver import TUNE_DIR, read_state
from sweeps.finaliser import (
    AUDIO_METRICS_FILE,
    EMOTION_METRICS_FILE,
    audio_evaluation,
    emotion_evaluation,
    export_audio,
    final_judge,
)
from sweeps.results import load_trial_records
from sweeps.space import SweepSpec, load_space, trial_train_config
from sweeps.trials import ranked

RESULTS = Path(__file__).resolve().parent / "results" / "quality"
# (metric, ratio-to key or None, threshold, what the issue asks)
TARGETS = (
    ("wav_gen_cnn_acc", "wav_real_cnn_acc", 0.8, "generated, CNN judge >= 0.8 x real"),
    ("wav_gen_smile_acc", "wav_real_smile_acc", 0.8, "generated, eGeMAPS judge >= 0.8 x real"),
    ("wav_recon_cnn_acc", "wav_real_cnn_acc", 0.9, "reconstructions, CNN judge >= 0.9 x real"),
    (
        "wav_recon_smile_acc",
        "wav_real_smile_acc",
        0.9,
        "reconstructions, eGeMAPS judge >= 0.9 x real",
    ),
    ("wav_gen_dnsmos", None, 2.6, "generated, DNSMOS >= 2.6"),
    ("wav_recon_dnsmos", None, 2.6, "reconstructions, DNSMOS >= 2.6"),
    ("wav_aug_cnn_uar_gain", None, 0.02, "augmentation, CNN judge UAR gain >= +2 pp"),
    ("wav_aug_smile_uar_gain", None, 0.02, "augmentation, eGeMAPS judge UAR gain >= +2 pp"),
)
SHOWN = (
    "test_recon",
    "test_lsd_db",
    "wav_real_cnn_acc",
    "wav_real_smile_acc",
    "wav_real_dnsmos",
    "wav_recon_cnn_acc",
    "wav_recon_smile_acc",
    "wav_recon_dnsmos",
    "wav_recon_stoi",
    "wav_gen_cnn_acc",
    "wav_gen_smile_acc",
    "wav_gen_dnsmos",
    "wav_gen_fd_cnn",
    "wav_gen_fd_smile",
    "wav_conv_cnn_acc",
    "wav_conv_smile_acc",
    "wav_aug_cnn_uar_gain",
    "wav_aug_smile_uar_gain",
    "wav_aug_cnn_uar_gain_over_control",
    "wav_aug_smile_uar_gain_over_control",
)


def _params(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """The searched values: a sweep's best trial, or the space's params if all are constants."""
    if args.params_from:
        # Ray reads the experiment through pyarrow, which needs an absolute path.
        sweep_dir = Path(args.params_from).resolve()
        sweep = read_state(sweep_dir).spec()
        records = load_trial_records(sweep_dir / TUNE_DIR)
        leaders = ranked(records, sweep.sweep.metric, sweep.sweep.mode)
        if not leaders:
            raise SystemExit(f"{args.params_from}: no trial to take the parameters from")
        return dict(leaders[0][0].params)
    searched = [k for k, v in spec.params.items() if isinstance(v, dict)]
    if searched:
        raise SystemExit(
            f"params {searched} are searched in the space: pass --params-from SWEEP or "
            + " ".join(f"--set params.{k}=VALUE" for k in searched)
        )
    return dict(spec.params)


def _run_one(args: argparse.Namespace, spec: Any, params: dict[str, Any], seed: int) -> Path:
    settings = spec.finalise
    config = dataclasses.replace(
        trial_train_config(spec.experiment.train, params),
        max_epochs=settings.max_epochs or spec.experiment.train.max_epochs,
        seed=seed,
        num_threads=0,
        device=args.device,
    )
    data = prepare_data(spec.experiment.data, spec.experiment.features, progress=True)
    work = Path(args.work) / args.name / f"seed{seed}"
    started = time.perf_counter()
    if args.checkpoint:
        checkpoint, history = Path(args.checkpoint), None
    else:
        result = train(config, data, work / "checkpoints", progress=True)
        checkpoint, history = result.best_checkpoint, result.history
    trained = time.perf_counter()
    metrics = evaluate_checkpoint(checkpoint, data, work / "evaluation", history, args.device)
    judge = final_judge(data, spec.judge, spec.experiment.data.cache_dir, args.device)
    emotion = emotion_evaluation(
        checkpoint,
        data,
        judge,
        work / "evaluation",
        settings.emotion_samples,
        seed,
        settings,
        args.device,
    )
    exported = export_audio(checkpoint, data, settings, work, seed, args.device)
    audio = audio_evaluation(
        exported,
        data,
        judge,
        spec.experiment.data.cache_dir,
        work / "evaluation",
        seed,
        settings.dnsmos_clips,
    )
    finished = time.perf_counter()
    record = {
        "name": args.name,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "finalise": dataclasses.asdict(settings),
        "checkpoint": str(checkpoint),
        "metrics": metrics | emotion.metrics | audio,
        "seconds": {"train": trained - started, "evaluate": finished - trained},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
    }
    return _write_record(record)


def from_final(args: argparse.Namespace) -> None:
    """A finished sweep's final model as one seed of an arm: the metrics its finaliser wrote
    (the same steps `run` takes), so the sweep's retraining is not repeated."""
    sweep = Path(args.sweep)
    evaluation = sweep / "final" / "evaluation"
    metrics: dict[str, Any] = {}
    for name in ("metrics.json", EMOTION_METRICS_FILE, AUDIO_METRICS_FILE):
        metrics |= json.loads((evaluation / name).read_text())
    checkpoint = sweep / "final" / "checkpoints" / "best.pt"
    loaded = load_model(checkpoint)
    spec = read_state(sweep).spec()
    record = {
        "name": args.name,
        "seed": loaded.train.seed,
        "config": dataclasses.asdict(loaded.train),
        "finalise": dataclasses.asdict(spec.finalise),
        "checkpoint": str(checkpoint),
        "metrics": metrics,
        "seconds": None,  # the sweep's own run time is in RESULTS_quality.md
        "machine": f"{platform.machine()}, CPU",
    }
    print(f"wrote {_write_record(record)}")


def _write_record(record: dict[str, Any]) -> Path:
    """results/quality/<name>/seed<N>.json, stamped with the command and the date."""
    record |= {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    out = RESULTS / record["name"] / f"seed{record['seed']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=_json_default))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def run(args: argparse.Namespace) -> None:
    spec = load_space(args.space, args.overrides)
    params = _params(args, spec)
    for seed in args.seeds:
        print(f"{args.name}, seed {seed}: params {params}", flush=True)
        print(f"wrote {_run_one(args, spec, params, seed)}", flush=True)


def augment(args: argparse.Namespace) -> None:
    """The augmentation test over judge seeds, on one trained model's exported samples."""
    record = json.loads((RESULTS / args.name / f"seed{args.seed}.json").read_text())
    spec = load_space(args.space, args.overrides)
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    work = Path(args.work) / args.name / f"seed{args.seed}"
    samples = work / "samples" / "manifest.csv"
    judge = final_judge(data, spec.judge, spec.experiment.data.cache_dir, args.device)
    judges = prepare_audio_judges(data, judge, spec.experiment.data.cache_dir)
    rows = read_manifest(samples)
    names = data.label_names
    generated = wav_set(
        judges,
        "gen",
        [samples.parent / r["file"] for r in rows],
        [names.index(r["emotion"]) for r in rows],
    )
    real = wav_set(
        judges, "real", data.test.paths, data.test.labels.numpy(), spec.experiment.data.cache_dir
    )
    control = _control_set(args, spec, data, judges, record, work, generated.labels)
    draws = []
    for judge_seed in args.judge_seeds:
        gains = augmentation_gain(judges, data, generated, real, seed=judge_seed, control=control)
        draws.append({"judge_seed": judge_seed} | gains)
        print(judge_seed, {k: round(v, 4) for k, v in gains.items() if "gain" in k})
    out = RESULTS / args.name / f"augment_seed{args.seed}.json"
    out.write_text(
        json.dumps(
            {"model": record["checkpoint"], "draws": draws, "command": " ".join(sys.argv)},
            indent=1,
        )
    )
    print(f"wrote {out}")


def _control_set(
    args: argparse.Namespace,
    spec: SweepSpec,
    data: PreparedData,
    judges: AudioJudges,
    record: dict[str, Any],
    work: Path,
    sample_labels: np.ndarray,
) -> WavSet:
    """The augmentation test's control, as the finaliser exports it (vocoded copies of real
    training clips, as many per emotion as the samples hold); written first for a model
    exported before the finaliser made it."""
    manifest = work / "augment_control" / "manifest.csv"
    if not manifest.exists():
        loaded = load_model(Path(record["checkpoint"]), select_device(args.device))
        vocoder = load_vocoder(
            spec.finalise.vocoder,
            loaded.features,
            args.device,
            n_iter=spec.finalise.griffin_lim_iters,
            seed=args.seed,
        )
        rows = augmentation_control_rows(data.train.labels.numpy(), sample_labels, args.seed)
        export_copy_synthesis(loaded, data.train, rows, vocoder, manifest.parent)
    rows = read_manifest(manifest)
    names = data.label_names
    paths = [manifest.parent / r["file"] for r in rows]
    return wav_set(judges, "copy", paths, [names.index(r["emotion"]) for r in rows])


def _mean_spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(args: argparse.Namespace) -> None:
    arms = sorted(p for p in RESULTS.iterdir() if p.is_dir()) if RESULTS.is_dir() else []
    for arm in arms:
        records = [json.loads(p.read_text()) for p in sorted(arm.glob("seed*.json"))]
        if not records:
            continue
        print(f"\n### {arm.name} ({len(records)} seed(s): {[r['seed'] for r in records]})\n")
        print("| metric | mean ± sd over seeds |\n|---|---|")
        for key in SHOWN:
            print(f"| {key} | {_mean_spread([r['metrics'].get(key) for r in records])} |")
        print("\n| target | measured (mean over seeds) | met |\n|---|---|---|")
        for key, ratio_of, threshold, text in TARGETS:
            values = [r["metrics"].get(key) for r in records]
            if ratio_of:
                values = [
                    v / r["metrics"][ratio_of] if v is not None else None
                    for v, r in zip(values, records, strict=True)
                ]
            shown = [v for v in values if v is not None]
            if not shown:
                print(f"| {text} | — | — |")
                continue
            mean = statistics.mean(shown)
            unit = " x real" if ratio_of else ""
            print(
                f"| {text} | {_mean_spread(shown)}{unit} | {'yes' if mean >= threshold else 'no'} |"
            )
        for augment_file in sorted(arm.glob("augment_seed*.json")):
            draws = json.loads(augment_file.read_text())["draws"]
            for judge in ("cnn", "smile"):
                for over in ("", "_over_control"):
                    gains = [d.get(f"wav_aug_{judge}_uar_gain{over}") for d in draws]
                    if None in gains:
                        continue
                    print(
                        f"\nAugmentation ({augment_file.stem}, {judge} judge, {len(gains)} judge "
                        f"seeds): UAR gain{over.replace('_', ' ')} {_mean_spread(gains)}; "
                        "per seed " + ", ".join(f"{g:+.3f}" for g in gains)
                    )
        seconds = [r["seconds"] for r in records if r["seconds"]]
        if not seconds:
            continue
        print(
            f"\nTime per seed: train {_mean_spread([s['train'] for s in seconds])} s, "
            f"evaluate {_mean_spread([s['evaluate'] for s in seconds])} s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "augment"):
        sub = commands.add_parser(name)
        sub.add_argument("--space", default="emodb_cpu")
        sub.add_argument("--set", dest="overrides", action="append", default=[])
        sub.add_argument("--name", required=True, help="the arm: a folder under results/quality")
        sub.add_argument("--work", default="runs/bench_quality")
        sub.add_argument("--device", default="auto")
    run_parser = commands.choices["run"]
    run_parser.add_argument("--params-from", help="a sweep folder: take its best trial's params")
    run_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_parser.add_argument("--checkpoint", help="evaluate this checkpoint instead of training")
    augment_parser = commands.choices["augment"]
    augment_parser.add_argument("--seed", type=int, default=0, help="the model's training seed")
    augment_parser.add_argument("--judge-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    final_parser = commands.add_parser("from-final")
    final_parser.add_argument("--sweep", required=True, help="a finalised sweep folder")
    final_parser.add_argument("--name", required=True)
    commands.add_parser("table")
    args = parser.parse_args()
    {"run": run, "augment": augment, "from-final": from_final, "table": table}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
