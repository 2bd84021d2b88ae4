"""Feature cache: cold extraction vs warm cache hit, and serial vs 2-process cold extraction.

* cold: `extract_features(paths, FeatureConfig(duration=2.0), cache_dir)` into a fresh, empty
  cache folder (content hashing, extraction and the cache write included);
* warm: the same call again (stat of every file, cache key, np.load);
* floor: np.load of the cached array alone;
* parallel: `emovae.features.extract_file` over the files, serially and in a 2-process pool
  (spawned workers with OMP/OPENBLAS/MKL threads = 1), with and without the pool's start-up.

"Cold" means a cold feature cache; the WAV files themselves are in the OS page cache after the
first pass (every variant reads them warm, so they are compared like with like).

    python benchmarks/bench_features.py --emodb ../shared/data/emodb/wav
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emovae.config import FeatureConfig  # noqa: E402
from emovae.data.corpus import load_corpus  # noqa: E402
from emovae.features import extract_features, extract_file  # noqa: E402

WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def log(message: str) -> None:
    print(message, flush=True)


def resolve_corpus(emodb: Path, cache_dir: Path) -> tuple[Path, str]:
    if emodb.is_dir() and any(emodb.glob("*.wav")):
        return emodb, "emodb"
    from emovae.data.synthetic import CorpusSpec, ensure_synthetic_corpus

    log(f"EmoDB not found at {emodb}: using the synthetic corpus instead (numbers are not EmoDB's)")
    return ensure_synthetic_corpus(cache_dir, CorpusSpec(duration=2.0)), "synthetic"


def _worker_init() -> None:
    threadpool_limits(1)


def _extract_chunk(paths: list[Path], features: FeatureConfig) -> np.ndarray:
    return np.stack([extract_file(p, features) for p in paths])


def serial(paths: list[Path], features: FeatureConfig) -> np.ndarray:
    with threadpool_limits(1, user_api="blas"):  # as extract_features does
        return _extract_chunk(paths, features)


def pooled(pool: ProcessPoolExecutor, paths: list[Path], features: FeatureConfig) -> np.ndarray:
    chunks = [paths[i::8] for i in range(8)]  # 8 chunks: a slow worker cannot hold up the end
    parts = list(pool.map(_extract_chunk, chunks, [features] * len(chunks)))
    order = [i for c in range(8) for i in range(c, len(paths), 8)]
    out = np.empty((len(paths), *parts[0].shape[1:]), dtype=parts[0].dtype)
    out[order] = np.concatenate(parts)
    return out


def new_pool(workers: int) -> ProcessPoolExecutor:
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)  # spawned workers read these before importing numpy
    try:
        return ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def fmt(times: list[float]) -> str:
    return f"best {min(times):.4g} s, median {statistics.median(times):.4g} s (n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emodb", type=Path, default=REPO / ".." / "shared/data/emodb/wav")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache/emovae"))
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--cold-repeats", type=int, default=2)
    parser.add_argument("--warm-repeats", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-parallel", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    log(f"{os.cpu_count()} CPUs, load average {load()}")
    log(
        "thread pools: "
        + ", ".join(f"{p['internal_api']} ({p['num_threads']} threads)" for p in threadpool_info())
    )
    corpus, kind = resolve_corpus(args.emodb.resolve(), Path(args.cache_dir))
    paths = [item.path for item in load_corpus(corpus, "emodb")]
    features = FeatureConfig(duration=args.duration)
    log(f"corpus: {corpus} ({kind}), {len(paths)} files, duration {args.duration:g} s")

    # Warm-up outside any timing: librosa's lazy imports, the page cache of the WAV files.
    serial(paths[:4], features)
    for p in paths:
        p.read_bytes()

    cold_times, warm_times, load_times = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        for repeat in range(args.cold_repeats):
            cache = Path(tmp) / f"cold{repeat}"  # fresh and empty
            start = time.perf_counter()
            cold = extract_features(paths, features, cache)
            cold_times.append(time.perf_counter() - start)
            log(f"  cold [{repeat + 1}] {cold_times[-1]:.2f} s (load {load()})")
        warm_times, warm = timed(
            lambda: extract_features(paths, features, cache), args.warm_repeats
        )
        assert np.array_equal(warm.log_mels, cold.log_mels)
        (array_path,) = [p for p in cache.glob("*.npy") if not p.name.startswith(".")]
        load_times, _ = timed(lambda: np.load(array_path), args.warm_repeats)
        size_mb = array_path.stat().st_size / 1e6
    # What the warm path spends besides np.load: the hash index keys files by path.resolve().
    resolve_times, _ = timed(lambda: [str(p.resolve()) for p in paths], args.warm_repeats)
    stat_times, _ = timed(lambda: [p.stat() for p in paths], args.warm_repeats)
    abspath_times, _ = timed(lambda: [os.path.abspath(p) for p in paths], args.warm_repeats)
    log(f"cold extraction ({len(paths)} files): {fmt(cold_times)}")
    log(f"warm cache hit: {fmt(warm_times)}")
    log(f"np.load of the cached array ({size_mb:.1f} MB): {fmt(load_times)}")
    log(
        f"inside the warm path, for {len(paths)} files: path.resolve() {fmt(resolve_times)}; "
        f"path.stat() {fmt(stat_times)}; os.path.abspath() {fmt(abspath_times)}"
    )

    rows = [
        ("cold extract_features (fresh cache)", min(cold_times)),
        ("warm extract_features (cache hit)", min(warm_times)),
        ("np.load of the cached array", min(load_times)),
    ]
    if not args.skip_parallel:
        # Serial and pooled rounds alternate, so a change of the machine's load hits both.
        serial_times, startup_times, steady_times = [], [], []
        for repeat in range(args.cold_repeats):
            start = time.perf_counter()
            with new_pool(args.workers) as pool:
                pooled(pool, paths, features)
                startup_times.append(time.perf_counter() - start)
                for _ in range(2):
                    times, reference = timed(lambda: serial(paths, features), 1)
                    serial_times += times
                    times, result = timed(lambda pool=pool: pooled(pool, paths, features), 1)
                    steady_times += times
            log(
                f"  round {repeat + 1}: serial {serial_times[-2]:.2f}, {serial_times[-1]:.2f} s; "
                f"pool {steady_times[-2]:.2f}, {steady_times[-1]:.2f} s "
                f"(start-up incl. {startup_times[-1]:.2f} s) (load {load()})"
            )
            assert np.array_equal(result, reference)
        log(f"serial extract_file loop: {fmt(serial_times)}")
        log(f"{args.workers}-process pool incl. start-up: {fmt(startup_times)} (load {load()})")
        log(f"{args.workers}-process pool, warm workers: {fmt(steady_times)}")
        rows += [
            ("serial extract_file loop", min(serial_times)),
            (f"{args.workers}-process pool, incl. spawn + imports", min(startup_times)),
            (f"{args.workers}-process pool, warm workers", min(steady_times)),
        ]

    cold_best = min(cold_times)
    log("\n| variant | best seconds | cold / this |")
    log("|---|---|---|")
    for name, seconds in rows:
        log(f"| {name} | {seconds:.4g} | {cold_best / seconds:.1f}x |")
    log(
        f"\nwarm vs cold: {cold_best / min(warm_times):.0f}x (target >= 50x); "
        f"np.load floor: {cold_best / min(load_times):.0f}x; "
        f"warm overhead over np.load: {1e3 * (min(warm_times) - min(load_times)):.1f} ms, "
        f"of which path.resolve() of every file {1e3 * min(resolve_times):.1f} ms"
    )
    if not args.skip_parallel:
        log(
            f"parallel speed-up over serial: {min(serial_times) / min(steady_times):.2f}x warm "
            f"workers, {min(serial_times) / min(startup_times):.2f}x including start-up"
        )
    log(f"load average at the end {load()}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
