"""Cost of the emotion metrics against a training epoch, on the quick sweep's setup.

Trains the emotion judge and a conditional VAE of the quick space's size (search_spaces/quick.yaml:
synthetic corpus, 6 speakers x 4 clips per emotion, 128 mels, 1.5 s, base_channels 16,
batch 16) for 3 epochs, then times, on the validation split, `reconstruction_emotion_metrics`
and `generation_emotion_metrics` (n samples per emotion). Reports each as a share of one epoch,
also when computed only every k epochs, and the judge's one-off training and per-trial loading
time. Writes benchmarks/RESULTS_emotion.md.

    python benchmarks/bench_emotion.py [--threads 1] [--n-per-emotion 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from emovae.checkpoint import load_model
from emovae.config import DataConfig, FeatureConfig, TrainConfig
from emovae.dataset import prepare_data
from emovae.emotion import (
    generation_emotion_metrics,
    real_reference,
    reconstruction_emotion_metrics,
)
from emovae.judge import JudgeConfig, ensure_judge, judge_path, load_judge
from emovae.train import train

TARGET = 0.15  # the limit: emotion metrics add at most 15% to a trial's time
EVERY_K = (1, 2, 5)
QUICK_EPOCHS = 6  # search_spaces/quick.yaml train.max_epochs


def _timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls (after one untimed warm-up) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a quick trial: 1)")
    parser.add_argument("--n-per-emotion", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache-dir", default=".cache/emovae")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_emotion.md")))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data_config = DataConfig(
        path="synthetic",
        synthetic_speakers=6,
        synthetic_per_emotion=4,
        cache_dir=args.cache_dir,
    )
    data = prepare_data(data_config, FeatureConfig(n_mels=128, duration=1.5))
    shape = tuple(data.train.features.shape[1:])
    print(
        f"data: train {len(data.train)}, val {len(data.val)}, test {len(data.test)} clips "
        f"of {shape}",
        flush=True,
    )

    judge_config = JudgeConfig(num_threads=args.threads, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        judge = ensure_judge(data, Path(tmp) / "judges", judge_config)
        judge_train_s = time.perf_counter() - started
        cached = judge_path(Path(tmp) / "judges", data.fingerprint, judge_config)
        judge_load_s, _ = _timed(lambda: load_judge(cached), args.repeats)
        print(
            f"judge: trained in {judge_train_s:.1f} s ({len(judge.history)} epochs, best "
            f"{judge.best_epoch}), test accuracy {judge.test_accuracy:.3f}, "
            f"load {judge_load_s * 1000:.0f} ms",
            flush=True,
        )

        vae_config = TrainConfig(
            latent_dim=32,
            base_channels=16,
            batch_size=16,
            lr=1e-3,
            max_epochs=args.epochs,
            conditional=True,
            num_threads=args.threads,
            device="cpu",
        )
        result = train(vae_config, data, Path(tmp) / "vae")
        epoch_times = [row["epoch_seconds"] for row in result.history]
        # The first epoch pays one-off warm-up (allocator, oneDNN kernels); a trial's typical
        # epoch is the later ones.
        epoch_s = statistics.median(epoch_times[1:] or epoch_times)
        vae = load_model(result.last_checkpoint).model
        print(f"VAE epochs: {', '.join(f'{t:.2f}' for t in epoch_times)} s", flush=True)

        # A trial judges its real validation clips once; every later call reuses that.
        ref_s, reference = _timed(lambda: real_reference(judge, data.val), args.repeats)
        recon_s, recon = _timed(
            lambda: reconstruction_emotion_metrics(
                judge, vae, data.val, prefix="val", reference=reference
            ),
            args.repeats,
        )
        half = max(1, args.n_per_emotion // 2)
        gen_times = {}
        for n in (half, args.n_per_emotion):
            gen_times[n], gen = _timed(
                lambda n=n: generation_emotion_metrics(
                    judge, vae, data.label_names, n, 0, data.val, reference=reference
                ),
                args.repeats,
            )
    load_after = os.getloadavg()

    gen_s = gen_times[args.n_per_emotion]
    both_s = recon_s + gen_s
    rows = [
        ("real_reference (val; once per trial)", ref_s),
        ("reconstruction_emotion_metrics (val)", recon_s),
        *((f"generation_emotion_metrics ({n}/emotion)", t) for n, t in gen_times.items()),
        (f"reconstruction + generation ({args.n_per_emotion}/emotion)", both_s),
    ]
    lines = [
        "| metric set | seconds | " + " | ".join(f"every {k} epoch(s)" for k in EVERY_K) + " |",
        "|---|---|" + "---|" * len(EVERY_K),
    ]
    for name, seconds in rows:
        shares = " | ".join(f"{100 * seconds / (k * epoch_s):.1f}%" for k in EVERY_K)
        lines.append(f"| {name} | {seconds:.3f} | {shares} |")
    table = "\n".join(lines)
    every_epoch_share = both_s / epoch_s
    smallest_k = next((k for k in range(1, 101) if both_s / (k * epoch_s) <= TARGET), None)
    trial_s = QUICK_EPOCHS * epoch_s
    recon_share = recon_s / epoch_s
    # The mixed plan: reconstruction metrics every epoch, generation every k_gen epochs.
    k_gen = next((k for k in range(1, 101) if recon_share + gen_s / (k * epoch_s) <= TARGET), None)
    plan = (
        f"reconstruction metrics every epoch + generation every {k_gen} epochs add "
        f"{100 * (recon_share + gen_s / (k_gen * epoch_s)):.1f}%"
        if k_gen
        else "reconstruction metrics alone exceed it; compute them every few epochs"
    )
    verdict = (
        f"Reconstruction metrics every epoch add {100 * recon_share:.1f}% to an epoch; both "
        f"metric sets every epoch add {100 * every_epoch_share:.1f}%: "
        + (
            f"within the {100 * TARGET:.0f}% target."
            if every_epoch_share <= TARGET
            else f"over the {100 * TARGET:.0f}% target. Both every {smallest_k} epochs stay "
            f"within it, and so does the mixed plan: {plan}."
        )
        + f" The judge trains once per sweep ({judge_train_s:.1f} s, "
        f"{100 * judge_train_s / trial_s:.0f}% of one {QUICK_EPOCHS}-epoch quick trial of "
        f"{trial_s:.1f} s, shared by all trials); each trial then loads it in "
        f"{judge_load_s * 1000:.0f} ms."
    )
    curve = ", ".join(
        f"epoch {int(row['epoch'])}: {row['val_accuracy']:.2f}"
        for row in judge.history
        if int(row["epoch"]) % 10 == 0 and "val_accuracy" in row
    )

    print(table)
    print(verdict)
    report = f"""# Emotion metrics: cost against a training epoch

Command: `{" ".join([Path(sys.executable).name, *sys.argv])}`

- date: {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
- machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch thread(s)
- load average (1/5/15 min) before: {" / ".join(f"{v:.2f}" for v in load_before)}; after: {" / ".join(f"{v:.2f}" for v in load_after)}
- data: quick sweep setup (synthetic, 6 speakers x 4 clips per emotion, 128 mels x 1.5 s), train {len(data.train)} / val {len(data.val)} / test {len(data.test)} clips
- VAE: conditional, base_channels 16, latent 32, batch 16; epoch times {", ".join(f"{t:.2f}" for t in epoch_times)} s, median of epochs 2+ = **{epoch_s:.2f} s**
- judge (default JudgeConfig): trained in **{judge_train_s:.1f} s** ({len(judge.history)} epochs, best {judge.best_epoch}), synthetic test accuracy {judge.test_accuracy:.3f}; loading the cached file {judge_load_s * 1000:.0f} ms
- judge validation accuracy by epoch (to choose `JudgeConfig.epochs`): {curve}
- metric times: median of {args.repeats} runs after one warm-up

{table}

Values at this VAE's last epoch: val_emotion_acc_real {recon["val_emotion_acc_real"]:.3f}, val_emotion_acc_recon {recon["val_emotion_acc_recon"]:.3f}, val_fd_recon {recon["val_fd_recon"]:.2f}, gen_emotion_acc {gen.metrics["gen_emotion_acc"]:.3f}, gen_fd {gen.metrics["gen_fd"]:.2f}, gen_diversity_ratio {gen.metrics["gen_diversity_ratio"]:.3f}.

**Verdict.** {verdict}

Shares are of one epoch measured on the same machine in the same run, so the load (above) scales
both alike; on a machine this busy each number is noisier than on a quiet one.
"""
    Path(args.out).write_text(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
