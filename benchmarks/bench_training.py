"""Training throughput of the seed VAE as a share of the machine's matmul FLOP/s (same run).

Measures, for each clip duration (2 s EmoDB clips, 10 s padded clips):

* the matmul reference: torch.mm of 2048x2048 float32 at --threads threads, FLOPs = 2 n^3;
* the model FLOPs of one training step (forward + backward at --batch), counted with
  torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls only);
* (a) a bare loop (forward, loss, backward, clip, Adam) on one fixed batch, plain NCHW and
  channels_last;
* (b) the library's `emovae.train.train` on real prepared data (EmoDB through prepare_data);
  clips/s come from each epoch's `epoch_seconds` minus the time of its validation pass;
* (c) the data pipeline alone: randperm + `features[index]` for every batch of an epoch, as
  train() does it, and a torch DataLoader over a TensorDataset for comparison.

The machine is shared: every measurement is flanked by sustained matmul windows, so each
FLOP share is also reported against the matmul rate measured right beside it ("paired"), and
against CPU time (FLOPs per CPU-second of this process), which other processes affect less.

    python benchmarks/bench_training.py --emodb ../shared/data/emodb/wav
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emovae.config import DataConfig, FeatureConfig, TrainConfig  # noqa: E402
from emovae.dataset import PreparedData, Split, prepare_data  # noqa: E402
from emovae.features import n_frames  # noqa: E402
from emovae.loss import LossWeights, vae_loss  # noqa: E402
from emovae.models import VAE  # noqa: E402
from emovae.train import evaluate_loss, train  # noqa: E402

MATMUL_N = 2048


class Clock:
    """Wall and process CPU time of a block."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# matmul reference


class Matmul:
    def __init__(self, n: int = MATMUL_N):
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen)
        self.b = torch.randn(n, n, generator=gen)
        self.out = torch.empty(n, n)
        self.flops = 2 * n**3
        self.bursts: list[float] = []  # FLOP/s of single products
        self.windows: list[tuple[float, float]] = []  # (wall FLOP/s, CPU FLOP/s) of windows
        for _ in range(2):
            self.one()

    def one(self) -> float:
        start = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        rate = self.flops / (time.perf_counter() - start)
        self.bursts.append(rate)
        return rate

    def window(self, seconds: float) -> tuple[float, float]:
        """Sustained rate over at least `seconds` (and at least 3 products)."""
        count = 0
        with Clock() as clock:
            while count < 3 or time.perf_counter() - clock.wall0 < seconds:
                self.one()
                count += 1
        rates = (count * self.flops / clock.wall, count * self.flops / max(clock.cpu, 1e-9))
        self.windows.append(rates)
        return rates

    @property
    def best(self) -> float:
        return max(self.bursts)

    @property
    def best_window(self) -> float:
        return max(w[0] for w in self.windows)

    @property
    def best_window_cpu(self) -> float:
        return max(w[1] for w in self.windows)


# ---------------------------------------------------------------------------------------------
# data


def resolve_corpus(emodb: Path, cache_dir: Path) -> tuple[Path, str]:
    if emodb.is_dir() and any(emodb.glob("*.wav")):
        return emodb, "emodb"
    from emovae.data.synthetic import CorpusSpec, ensure_synthetic_corpus

    log(f"EmoDB not found at {emodb}: using the synthetic corpus instead (numbers are not EmoDB's)")
    return ensure_synthetic_corpus(cache_dir, CorpusSpec(duration=2.0)), "synthetic"


def take(split: Split, n: int) -> Split:
    return Split(split.features[:n], split.labels[:n], split.speakers[:n], split.paths[:n])


def prepared(corpus: Path, cache_dir: Path, duration: float) -> PreparedData:
    data = DataConfig(path=str(corpus), format="emodb", cache_dir=str(cache_dir))
    with Clock() as clock:
        result = prepare_data(data, FeatureConfig(duration=duration))
    log(
        f"  prepare_data(duration={duration:g}): {clock.wall:.1f} s "
        f"(train {len(result.train)}, val {len(result.val)} clips)"
    )
    return result


# ---------------------------------------------------------------------------------------------
# model FLOPs and the bare loop


def step_flops(frames: int, batch: int, n_mels: int, latent: int, channels: int) -> int:
    model = VAE(n_mels, frames, latent_dim=latent, base_channels=channels)
    x = torch.randn(batch, 1, n_mels, frames)
    with FlopCounterMode(display=False) as counter:
        recon, mu, logvar = model(x)
        vae_loss(recon, x, mu, logvar, LossWeights(0.003125))["loss"].backward()
    return counter.get_total_flops()


class BareLoop:
    """forward + loss + backward + clip + Adam on one fixed batch: the step with no library."""

    def __init__(
        self, frames: int, args: argparse.Namespace, channels_last: bool, compiled: bool = False
    ):
        torch.manual_seed(0)
        self.model = VAE(args.n_mels, frames, args.latent, args.base_channels)
        x = torch.randn(args.batch, 1, args.n_mels, frames)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-4)
        # torch.compile (Inductor's C++ backend) could fuse BatchNorm + LeakyReLU passes.
        self.forward = torch.compile(self.model) if compiled else self.model
        with Clock() as clock:
            self.step()  # warm-up: oneDNN primitives, allocator, Adam state, compilation
            self.step()
        self.warmup_s = clock.wall

    def step(self) -> None:
        self.model.train()
        recon, mu, logvar = self.forward(self.x)
        loss = vae_loss(recon, self.x, mu, logvar, LossWeights(0.003125))["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.optimizer.step()

    def run(self, steps: int) -> tuple[float, float]:
        """Seconds per step (wall, CPU)."""
        with Clock() as clock:
            for _ in range(steps):
                self.step()
        return clock.wall / steps, clock.cpu / steps


# ---------------------------------------------------------------------------------------------
# the library


def library_epochs(data: PreparedData, args: argparse.Namespace) -> dict[str, float]:
    """train() for args.epochs epochs; per-epoch training seconds with validation subtracted."""
    config = TrainConfig(
        batch_size=args.batch,
        latent_dim=args.latent,
        base_channels=args.base_channels,
        max_epochs=args.epochs,
        patience=args.epochs + 1,
        num_threads=args.threads,
        device="cpu",
        channels_last=True,
    )
    marks: list[float] = []  # process CPU time at the end of each epoch (after checkpoints)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out, Clock() as clock:
        marks.append(time.process_time())
        result = train(config, data, out, on_epoch=lambda m, d: marks.append(time.process_time()))
    epoch_seconds = [h["epoch_seconds"] for h in result.history]
    epoch_cpu = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return {"epoch_seconds": epoch_seconds, "epoch_cpu": epoch_cpu, "total": clock.wall}


def val_seconds(data: PreparedData, frames: int, args: argparse.Namespace) -> float:
    """Best time of one validation pass like train()'s (channels_last, EVAL_BATCH)."""
    model = VAE(args.n_mels, frames, args.latent, args.base_channels).to(
        memory_format=torch.channels_last
    )
    x = data.val.features.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        {
            k: float(v)
            for k, v in evaluate_loss(model, x, data.val.labels, LossWeights(0.003)).items()
        }
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------------------------------------
# (c) data pipeline


def index_epoch_seconds(
    features: torch.Tensor, batch: int, repeats: int, index_select: bool = False
) -> float:
    """randperm + features[index] for every batch of one epoch, as emovae.train does it
    (`index_select`: torch.index_select(features, 0, index) instead of advanced indexing)."""
    gen = torch.Generator().manual_seed(0)
    n = features.shape[0]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            index = order[s : s + batch]
            x = features.index_select(0, index) if index_select else features[index]
        best = min(best, time.perf_counter() - start)
    del x
    return best


def dataloader_epoch_seconds(
    features: torch.Tensor, labels: torch.Tensor, batch: int, repeats: int
) -> float:
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=batch, shuffle=True
    )
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch_x, _batch_y in loader:
            last = batch_x
        best = min(best, time.perf_counter() - start)
    del last
    return best


# ---------------------------------------------------------------------------------------------


def share(rate: float, reference: float) -> str:
    return f"{100 * rate / reference:5.1f}%"


def bench_duration(
    duration: float,
    clips: int,
    corpus: Path,
    args: argparse.Namespace,
    mm: Matmul,
) -> dict:
    features = FeatureConfig(duration=duration, n_mels=args.n_mels)
    frames = n_frames(features)
    log(f"\n== {duration:g} s clips: {args.n_mels} x {frames} log-mels, batch {args.batch} ==")
    flops_step = step_flops(frames, args.batch, args.n_mels, args.latent, args.base_channels)
    flops_clip = flops_step / args.batch
    log(
        f"  model FLOPs per training step: {flops_step / 1e9:.1f} GFLOP ({flops_clip / 1e9:.2f}/clip)"
    )

    full = prepared(corpus, Path(args.cache_dir), duration)
    n_train = min(clips, len(full.train)) if clips > 0 else len(full.train)
    n_train -= n_train % args.batch if n_train > args.batch else 0
    data = dataclasses.replace(full, train=take(full.train, n_train), val=take(full.val, args.val))
    log(f"  library run on {len(data.train)} training clips, {len(data.val)} validation clips")

    steps = max(1, round(args.steps * 173 / frames))
    loops = {"nchw": BareLoop(frames, args, False), "channels_last": BareLoop(frames, args, True)}
    if args.compile:
        loops["channels_last_compiled"] = BareLoop(frames, args, True, compiled=True)
        log(
            f"  torch.compile warm-up (2 steps, compilation included): {loops['channels_last_compiled'].warmup_s:.1f} s"
        )
    val_time = val_seconds(data, frames, args)
    log(f"  validation pass (subtracted from epoch_seconds): {val_time:.3f} s")

    window = args.window
    rows: dict[str, list[dict]] = {name: [] for name in loops} | {"library": []}
    for repeat in range(args.repeats):
        before = mm.window(window)
        for name, loop in loops.items():
            wall, cpu = loop.run(steps)
            after = mm.window(window)
            ref, ref_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            rate, rate_cpu = flops_step / wall, flops_step / cpu
            rows[name].append(
                {"step_s": wall, "rate": rate, "paired": rate / ref, "cpu": rate_cpu / ref_cpu}
            )
            log(
                f"  [{repeat + 1}] bare {name:13s} {wall:6.2f} s/step {args.batch / wall:6.2f} clips/s "
                f"{rate / 1e9:6.1f} GFLOP/s | paired mm {ref / 1e9:5.1f} -> {share(rate, ref)} "
                f"| per CPU-s {share(rate_cpu, ref_cpu)} | load {load()}"
            )
            before = after
        lib = library_epochs(data, args)
        after = mm.window(window)
        ref = (before[0] + after[0]) / 2
        ref_cpu = (before[1] + after[1]) / 2
        # The first epoch carries the warm-up (model built fresh); later epochs are steady.
        train_s = [max(s - val_time, 1e-9) for s in lib["epoch_seconds"]]
        steady = min(train_s[1:]) if len(train_s) > 1 else train_s[0]
        clips_s = len(data.train) / steady
        rate = clips_s * flops_clip
        # CPU of the last epoch, its validation pass and checkpoint writes included.
        cpu_rate = len(data.train) * flops_clip / lib["epoch_cpu"][-1]
        rows["library"].append(
            {
                "epoch_train_s": train_s,
                "steady_epoch_s": steady,
                "clips_s": clips_s,
                "rate": rate,
                "paired": rate / ref,
                "cpu": cpu_rate / ref_cpu,
                "call_s": lib["total"],
                "outside_epochs_s": lib["total"] - sum(lib["epoch_seconds"]),
            }
        )
        log(
            f"  [{repeat + 1}] library train() epochs "
            f"{', '.join(f'{s:.1f}' for s in train_s)} s -> {clips_s:6.2f} clips/s "
            f"{rate / 1e9:6.1f} GFLOP/s | paired mm {ref / 1e9:5.1f} -> {share(rate, ref)} "
            f"| last epoch per CPU-s {share(cpu_rate, ref_cpu)} | call {lib['total']:.1f} s, "
            f"outside epochs {lib['total'] - sum(lib['epoch_seconds']):.1f} s | load {load()}"
        )
        before = after

    # (c) data pipeline on the full training split, laid out as train() holds it.
    train_x = full.train.features.contiguous(memory_format=torch.channels_last)
    n_full = train_x.shape[0]
    index_s = index_epoch_seconds(train_x, args.batch, repeats=5)
    select_s = index_epoch_seconds(train_x, args.batch, repeats=5, index_select=True)
    loader_s = dataloader_epoch_seconds(train_x, full.train.labels, args.batch, repeats=3)
    best_lib = max(rows["library"], key=lambda r: r["clips_s"])
    epoch_full_s = n_full / best_lib["clips_s"]
    log(
        f"  data pipeline over a full epoch ({n_full} clips): features[index] "
        f"{1e3 * index_s:.1f} ms ({100 * index_s / epoch_full_s:.3f}% of a {epoch_full_s:.0f} s "
        f"epoch), DataLoader {1e3 * loader_s:.1f} ms ({100 * loader_s / epoch_full_s:.3f}%, "
        f"{loader_s / index_s:.2f}x features[index]), index_select {1e3 * select_s:.2f} ms "
        f"({index_s / select_s:.0f}x faster than features[index], "
        f"{loader_s / select_s:.0f}x faster than the DataLoader)"
    )
    return {
        "duration": duration,
        "frames": frames,
        "flops_step": flops_step,
        "train_clips": len(data.train),
        "val_clips": len(data.val),
        "val_seconds": val_time,
        "bare_steps_per_repeat": steps,
        "rows": rows,
        "index_epoch_s": index_s,
        "dataloader_epoch_s": loader_s,
        "index_select_epoch_s": select_s,
        "full_epoch_clips": n_full,
        "full_epoch_s_est": epoch_full_s,
    }


def summarise(results: list[dict], mm: Matmul, args: argparse.Namespace) -> None:
    targets = {2.0: 0.80, 10.0: 0.60}
    ref = mm.best_window
    log(
        f"\nmatmul {MATMUL_N}^2 float32, {args.threads} threads: best single product "
        f"{mm.best / 1e9:.1f} GFLOP/s, best sustained window {ref / 1e9:.1f} GFLOP/s, median window "
        f"{statistics.median(w[0] for w in mm.windows) / 1e9:.1f} GFLOP/s "
        f"({len(mm.windows)} windows); per CPU-second best {mm.best_window_cpu / 1e9:.1f}"
    )
    log(
        "\n| clips | path | s/step (best) | clips/s (best) | GFLOP/s (best) | share of best mm "
        "window | paired share (median) | per-CPU-s share (median) | target |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    for res in results:
        target = targets.get(res["duration"])
        for name, rows in res["rows"].items():
            if name == "library":
                best = max(rows, key=lambda r: r["clips_s"])
                step_s = args.batch / best["clips_s"]
            else:
                best = min(rows, key=lambda r: r["step_s"])
                step_s = best["step_s"]
            rate = best["rate"]
            log(
                f"| {res['duration']:g} s ({res['frames']} fr) | {name} | {step_s:.2f} | "
                f"{args.batch / step_s:.2f} | {rate / 1e9:.1f} | {100 * rate / ref:.1f}% | "
                f"{100 * statistics.median(r['paired'] for r in rows):.1f}% | "
                f"{100 * statistics.median(r['cpu'] for r in rows):.1f}% | "
                f"{'' if target is None else f'>= {100 * target:.0f}%'} |"
            )
    log(
        "\n| clips | features[index] (train()) / epoch | DataLoader / epoch | "
        "index_select / epoch | target |"
    )
    log("|---|---|---|---|---|")
    for res in results:
        e = res["full_epoch_s_est"]
        log(
            f"| {res['duration']:g} s | {1e3 * res['index_epoch_s']:.1f} ms / {e:.0f} s = "
            f"{100 * res['index_epoch_s'] / e:.3f}% | {1e3 * res['dataloader_epoch_s']:.1f} ms = "
            f"{100 * res['dataloader_epoch_s'] / e:.3f}% | "
            f"{1e3 * res['index_select_epoch_s']:.2f} ms = "
            f"{100 * res['index_select_epoch_s'] / e:.4f}% | <= 5% |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emodb", type=Path, default=REPO / ".." / "shared/data/emodb/wav")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache/emovae"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--durations", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument(
        "--clips",
        type=int,
        nargs="+",
        default=[128, 48],
        help="training clips of the library run, per duration (0: the whole split)",
    )
    parser.add_argument("--val", type=int, default=4, help="validation clips of the library run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="bare-loop steps per repeat at 2 s")
    parser.add_argument("--window", type=float, default=1.5, help="matmul window seconds")
    parser.add_argument("--n-mels", type=int, default=128)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the channels_last bare loop under torch.compile (needs a C++ compiler)",
    )
    args = parser.parse_args()
    if len(args.clips) == 1:
        args.clips = args.clips * len(args.durations)
    if len(args.clips) != len(args.durations):
        parser.error("--clips: one value, or one per --durations value")

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    log(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load()}"
    )
    corpus, kind = resolve_corpus(args.emodb.resolve(), Path(args.cache_dir))
    log(f"corpus: {corpus} ({kind})")
    mm = Matmul()
    mm.window(args.window)
    results = [
        bench_duration(duration, clips, corpus, args, mm)
        for duration, clips in zip(args.durations, args.clips, strict=True)
    ]
    summarise(results, mm, args)
    log(f"\nload average at the end {load()}; total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load_end": os.getloadavg(),
                    "corpus": kind,
                    "matmul": {"bursts": mm.bursts, "windows": mm.windows},
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
