"""Batched torch Griffin-Lim (emovae.griffinlim) against a per-clip librosa loop.

Times, on the same clips and in one run, best of --repeats with the methods interleaved:

- librosa: a Python loop of `librosa.griffinlim(S, n_iter, hop_length, n_fft, momentum=0.99,
  init="random", random_state=0)` per clip (numpy float32, one core);
- librosa x N processes (--pool): the same loop split over --threads worker processes, the
  core-for-core comparison;
- torch straightforward: the same algorithm batched, torch.stft / torch.istft on the whole batch
  each iteration;
- emovae: `emovae.griffinlim.griffin_lim`.

Equal spectral error is checked by re-STFT-ing every output and computing the spectral
convergence against the target magnitude with one function for all methods. Separately it
times the mel -> linear magnitude step: librosa's NNLS (`librosa.feature.inverse.mel_to_stft`)
on --nnls-clips clips against `mel_to_stft_magnitude` on all clips.

Clips are the first --clips EmoDB recordings (../shared/data/emodb/wav next to the repository,
cut or zero-padded to --seconds) or, without EmoDB, synthetic harmonic signals.

    python benchmarks/bench_griffinlim.py --clips 100 --iters 32 --threads 2 --seconds 2.0
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

import emovae.griffinlim as gl_module
from emovae.griffinlim import griffin_lim, mel_to_stft_magnitude, spectral_convergence

REPO = Path(__file__).resolve().parents[1]
EMODB_WAV = REPO.parent / "shared" / "data" / "emodb" / "wav"


def load_clips(n: int, seconds: float, sr: int) -> tuple[np.ndarray, str]:
    size = round(seconds * sr)
    files = sorted(EMODB_WAV.glob("*.wav")) if EMODB_WAV.is_dir() else []
    clips = []
    if files:
        for i in range(n):
            audio, rate = sf.read(files[i % len(files)], dtype="float32", always_2d=True)
            audio = audio.mean(axis=1)
            if rate != sr:
                audio = librosa.resample(audio, orig_sr=rate, target_sr=sr)
            clips.append(librosa.util.fix_length(audio, size=size))
        source = f"EmoDB, first {min(n, len(files))} files (zero-padded or cut to {seconds} s)"
    else:
        rng = np.random.default_rng(0)
        t = np.arange(size) / sr
        for _ in range(n):
            f0 = 100.0 + 150.0 * rng.random()
            pitch = f0 * (1.0 + 0.1 * np.sin(2 * np.pi * (0.5 + rng.random()) * t))
            phase = 2 * np.pi * np.cumsum(pitch) / sr
            audio = sum(np.sin(k * phase) * rng.random() / k for k in range(1, 20))
            envelope = 0.5 - 0.5 * np.cos(2 * np.pi * (1.0 + 2.0 * rng.random()) * t)
            clips.append(0.2 * envelope * audio + 0.003 * rng.standard_normal(size))
        source = f"synthetic harmonic signals ({seconds} s; no EmoDB at {EMODB_WAV})"
    return np.stack(clips).astype(np.float32), source


def librosa_loop(mags: np.ndarray, n_iter: int, n_fft: int, hop: int) -> np.ndarray:
    return np.stack(
        [
            librosa.griffinlim(
                m,
                n_iter=n_iter,
                hop_length=hop,
                n_fft=n_fft,
                momentum=0.99,
                init="random",
                random_state=0,
            )
            for m in mags
        ]
    )


def _librosa_job(args: tuple[np.ndarray, int, int, int]) -> np.ndarray:
    return librosa_loop(*args)


def torch_straightforward(
    mags: torch.Tensor, n_iter: int, n_fft: int, hop: int, momentum: float = 0.99
) -> torch.Tensor:
    """librosa.griffinlim's loop on the whole batch with torch.stft / torch.istft."""
    window = torch.hann_window(n_fft)
    generator = torch.Generator().manual_seed(0)
    angles = torch.polar(mags, torch.rand(mags.shape, generator=generator) * (2 * math.pi))
    previous = None
    for _ in range(n_iter):
        audio = torch.istft(angles, n_fft, hop, window=window, center=True)
        rebuilt = torch.stft(
            audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True
        )
        angles = rebuilt if previous is None else rebuilt - momentum / (1 + momentum) * previous
        angles = angles / (angles.abs() + 1e-16) * mags
        previous = rebuilt
    return torch.istft(angles, n_fft, hop, window=window, center=True)


def _intra_op_variant(mags: torch.Tensor, n_fft: int, hop: int, n_iter: int) -> torch.Tensor:
    """emovae's griffin_lim with its chunks run one after another, each op on all intra-op
    threads: the design that emovae's worker threads replaced (kept to show why)."""

    def serial(fn, starts, new_state, device) -> None:
        state = new_state()
        for start in starts:
            fn(start, state)

    original = gl_module._for_each_chunk
    gl_module._for_each_chunk = serial
    try:
        return griffin_lim(mags, n_fft, hop, n_iter=n_iter)
    finally:
        gl_module._for_each_chunk = original


def mean_sc(target: torch.Tensor, audio: torch.Tensor | np.ndarray, n_fft: int, hop: int) -> float:
    audio = torch.as_tensor(audio, dtype=torch.float32)
    window = torch.hann_window(n_fft)
    spec = torch.stft(
        audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True
    )
    return spectral_convergence(target, spec.abs()).mean().item()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--iters", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; best")
    parser.add_argument("--sr", type=int, default=22050)
    parser.add_argument("--n-fft", type=int, default=1024)
    parser.add_argument("--hop", type=int, default=256)
    parser.add_argument("--n-mels", type=int, default=128)
    parser.add_argument("--nnls-clips", type=int, default=10, help="clips for librosa's NNLS")
    parser.add_argument("--pool", action="store_true", help="also librosa over --threads procs")
    parser.add_argument("--no-straightforward", action="store_true")
    parser.add_argument(
        "--intra-op",
        action="store_true",
        help="also emovae's chunk loop run serially with torch's intra-op threads",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    clips, source = load_clips(args.clips, args.seconds, args.sr)
    mags_np = np.abs(librosa.stft(clips, n_fft=args.n_fft, hop_length=args.hop)).astype(np.float32)
    mags = torch.from_numpy(mags_np)
    mels = librosa.feature.melspectrogram(
        y=clips, sr=args.sr, n_fft=args.n_fft, hop_length=args.hop, n_mels=args.n_mels
    ).astype(np.float32)
    n, frames = len(clips), mags.shape[-1]
    print(f"{source}: {n} clips x {frames} frames; n_fft {args.n_fft}, hop {args.hop}")
    print(
        f"torch {torch.__version__} threads {torch.get_num_threads()}, librosa "
        f"{librosa.__version__}, numpy {np.__version__}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cpus, load average at start {os.getloadavg()[0]:.1f}"
    )

    methods: dict[str, Callable[[], object]] = {
        "librosa loop (1 process)": lambda: librosa_loop(mags_np, args.iters, args.n_fft, args.hop)
    }
    pool = None
    if args.pool:
        pool = multiprocessing.get_context("fork").Pool(args.threads)
        parts = np.array_split(mags_np, args.threads)

        def pooled() -> np.ndarray:
            jobs = [(p, args.iters, args.n_fft, args.hop) for p in parts]
            return np.concatenate(pool.map(_librosa_job, jobs))

        methods[f"librosa loop ({args.threads} processes)"] = pooled
    if not args.no_straightforward:
        methods["torch straightforward batched"] = lambda: torch_straightforward(
            mags, args.iters, args.n_fft, args.hop
        )
    methods["emovae griffin_lim"] = lambda: griffin_lim(
        mags, args.n_fft, args.hop, n_iter=args.iters
    )
    if args.intra_op:
        methods["emovae chunks, intra-op threads"] = lambda: _intra_op_variant(
            mags, args.n_fft, args.hop, args.iters
        )

    # Warm-up: numba compiles librosa's overlap-add, torch plans its FFTs, the pool forks.
    librosa_loop(mags_np[:1], 2, args.n_fft, args.hop)
    griffin_lim(mags[:2], args.n_fft, args.hop, n_iter=2)
    if pool is not None:
        methods[f"librosa loop ({args.threads} processes)"]()

    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    sc: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            cpu_start = time.process_time()
            seconds, out = timed(fn)
            times[name].append(seconds)
            cpu[name].append(time.process_time() - cpu_start)
            sc[name] = mean_sc(mags, out, args.n_fft, args.hop)
    if pool is not None:
        pool.close()

    base = min(times["librosa loop (1 process)"])
    base_cpu = min(cpu["librosa loop (1 process)"])
    print(f"\nGriffin-Lim, {args.iters} iterations, best of {args.repeats} (median in brackets)")
    print(
        "| method | seconds | clips/s | speedup vs librosa loop | CPU seconds (all threads) "
        "| CPU-time ratio | mean spectral convergence |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, values in times.items():
        best = min(values)
        # Worker processes' CPU time is not this process's; only wall time means something there.
        cpu_text, ratio_text = "n/a", "n/a"
        if "processes" not in name:
            cpu_text = f"{min(cpu[name]):.2f}"
            ratio_text = f"{base_cpu / min(cpu[name]):.1f}x"
        print(
            f"| {name} | {best:.2f} ({statistics.median(values):.2f}) | {n / best:.1f} "
            f"| {base / best:.1f}x | {cpu_text} | {ratio_text} | {sc[name]:.4f} |"
        )

    # mel -> linear magnitude
    k = min(args.nnls_clips, n)
    true = mags
    lib_seconds, lib_mag = timed(
        lambda: np.stack(
            [librosa.feature.inverse.mel_to_stft(m, sr=args.sr, n_fft=args.n_fft) for m in mels[:k]]
        )
    )
    mels_t = torch.from_numpy(mels)
    mel_to_stft_magnitude(mels_t[:2], args.sr, args.n_fft)  # caches the filterbank pieces
    ours_times, ours_k_times = [], []
    for _ in range(args.repeats):
        seconds, ours_mag = timed(lambda: mel_to_stft_magnitude(mels_t, args.sr, args.n_fft))
        ours_times.append(seconds)
        ours_k_times.append(
            timed(lambda: mel_to_stft_magnitude(mels_t[:k], args.sr, args.n_fft))[0]
        )
    start_mag = mel_to_stft_magnitude(mels_t, args.sr, args.n_fft, nnls_iter=0)
    lib_mag_t = torch.from_numpy(lib_mag)
    rows = [
        (f"librosa mel_to_stft (NNLS), loop, {k} clips", lib_seconds, k, lib_mag_t, true[:k]),
        (f"emovae mel_to_stft_magnitude, {k} clips", min(ours_k_times), k, ours_mag[:k], true[:k]),
        (f"emovae mel_to_stft_magnitude, {n} clips", min(ours_times), n, ours_mag, true),
    ]
    print(f"\nmel -> magnitude ({args.n_mels} mels), best of {args.repeats} for emovae")
    print("| method | seconds | clips/s | speedup (clips/s) | error vs true STFT magnitude |")
    print("|---|---|---|---|---|")
    lib_rate = k / lib_seconds
    for name, seconds, count, est, ref in rows:
        err = spectral_convergence(ref, est).mean().item()
        rate = count / seconds
        print(f"| {name} | {seconds:.3f} | {rate:.1f} | {rate / lib_rate:.0f}x | {err:.4f} |")
    diff = spectral_convergence(lib_mag_t, ours_mag[:k]).mean().item()
    diff0 = spectral_convergence(lib_mag_t, start_mag[:k]).mean().item()
    print(
        f"relative difference to librosa's result: {diff:.4f} (default), "
        f"{diff0:.2e} (nnls_iter=0, the pseudo-inverse start)"
    )
    # End to end, mel -> audio, against the true magnitude: librosa's NNLS + librosa.griffinlim
    # versus emovae's two steps, on the same k clips.
    lib_audio = librosa_loop(lib_mag.astype(np.float32), args.iters, args.n_fft, args.hop)
    ours_audio = griffin_lim(ours_mag[:k], args.n_fft, args.hop, n_iter=args.iters)
    print(
        f"end to end mel -> audio, spectral convergence vs the true magnitude ({k} clips): "
        f"librosa {mean_sc(true[:k], lib_audio, args.n_fft, args.hop):.4f}, "
        f"emovae {mean_sc(true[:k], ours_audio, args.n_fft, args.hop):.4f}"
    )
    print(
        f"\n{datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"load average at end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
