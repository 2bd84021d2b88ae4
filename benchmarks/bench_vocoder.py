"""Copy synthesis of real EmoDB clips with each vocoder, judged on the audio a user gets.

For every clip of the chosen speakers (default 03 and 16: all their clips, every emotion), runs
`emovae.audio.resynth.resynthesize` (the `python -m emovae resynth` path: audio -> features ->
vocoder -> 16-bit WAV) into a temporary folder, reads the WAVs back and scores them:

- DNSMOS ovrl / sig / bak (no reference; `emovae.evaluation.audio_quality.dnsmos`), with the
  real clips' DNSMOS beside them as the ceiling;
- STOI of each output against its original (`emovae.evaluation.audio_quality.stoi`);
- seconds per clip of the whole resynth call (model loading, reading and writing included).

Arms: Griffin-Lim from the default 128-mel power features, HiFi-GAN from its 80-mel features,
and HiFi-GAN without the half-hop alignment of `emovae.audio.hifigan.synthesize` (its output
as the generator gives it for centred frames, hop / 2 = 128 samples late) to show what that
alignment is worth. Prints a Markdown table and writes every per-clip number to a JSON file.

    python benchmarks/bench_vocoder.py [--speakers 03 16] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from emovae.audio import hifigan
from emovae.audio.resynth import resynthesize
from emovae.audio.vocoder import hifigan_features
from emovae.evaluation.audio_quality import dnsmos, stoi
from emovae.features import log_mel

REPO = Path(__file__).resolve().parents[1]
EMODB_WAV = REPO.parent / "shared" / "data" / "emodb" / "wav"
RATE = 22050


def read_clips(paths: list[Path]) -> list[np.ndarray]:
    clips = []
    for path in paths:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != RATE:
            raise SystemExit(f"{path}: expected {RATE} Hz audio, got {rate}")
        clips.append(audio.mean(axis=1))
    return clips


def run_resynth(folder: Path, names: list[str], vocoder: str, iters: int) -> tuple[list, float]:
    """The resynthesised clips, in `names` order, and the wall seconds of the call."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = resynthesize(folder, out, vocoder=vocoder, n_iter=iters)
        seconds = time.perf_counter() - start
        if result.failures:
            raise SystemExit(f"{vocoder}: resynth failed for {result.failures}")
        return read_clips([Path(out) / name for name in names]), seconds


def hifigan_unaligned(clips: list[np.ndarray]) -> tuple[list, float]:
    """HiFi-GAN without the hop / 2 advance, quantised to 16 bits as resynth writes."""
    features = hifigan_features()
    start = time.perf_counter()
    generator = hifigan.load_generator()
    out = []
    for clip in clips:
        mel = torch.from_numpy(log_mel(clip, features))[None]
        audio = hifigan.synthesize(generator, mel, centered=False)[0, : len(clip)].numpy()
        out.append(np.round(np.clip(audio, -1.0, 1.0) * 32767.0) / 32767.0)
    return [a.astype(np.float32) for a in out], time.perf_counter() - start


def summarize(scores: dict[str, np.ndarray], stoi_values: np.ndarray | None) -> dict:
    summary = {
        key: {"mean": float(np.mean(v)), "std": float(np.std(v))} for key, v in scores.items()
    }
    if stoi_values is not None:
        summary["stoi"] = {
            "mean": float(np.nanmean(stoi_values)),
            "std": float(np.nanstd(stoi_values)),
            "nan": int(np.isnan(stoi_values).sum()),
        }
    return summary


def table(rows: list[dict], n: int) -> str:
    lines = [
        f"| audio ({n} clips) | DNSMOS ovrl | sig | bak | STOI | s/clip |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row["summary"]
        stoi_text = (
            f"{s['stoi']['mean']:.3f} ± {s['stoi']['std']:.3f}" if "stoi" in s else "1 (itself)"
        )
        per_clip = f"{row['seconds'] / n:.2f}" if row["seconds"] is not None else "-"
        lines.append(
            f"| {row['name']} | {s['ovrl']['mean']:.2f} ± {s['ovrl']['std']:.2f} "
            f"| {s['sig']['mean']:.2f} | {s['bak']['mean']:.2f} | {stoi_text} | {per_clip} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=EMODB_WAV, help="EmoDB wav folder")
    parser.add_argument("--speakers", nargs="+", default=["03", "16"])
    parser.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "results" / "vocoder.json"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    paths = sorted(p for s in args.speakers for p in args.data.glob(f"{s}*.wav"))
    if not paths:
        raise SystemExit(f"{args.data}: no clips of speakers {args.speakers}")
    names = [p.name for p in paths]
    originals = read_clips(paths)
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            os.symlink(path.resolve(), Path(folder) / path.name)
        arms = [("real (ceiling)", originals, None)]
        for vocoder, label in (
            ("griffinlim", "Griffin-Lim, 128 mels"),
            ("hifigan", "HiFi-GAN, 80 mels"),
        ):
            clips, seconds = run_resynth(Path(folder), names, vocoder, args.iters)
            arms.append((label, clips, seconds))
    clips, seconds = hifigan_unaligned(originals)
    arms.append(("HiFi-GAN, 80 mels, not aligned (128 samples late)", clips, seconds))

    rows = []
    for label, clips, seconds in arms:
        scores = dnsmos(clips, RATE)
        stoi_values = None if seconds is None else stoi(originals, clips, RATE)
        rows.append(
            {
                "name": label,
                "seconds": seconds,
                "summary": summarize(scores, stoi_values),
                "per_clip": {
                    **{key: value.tolist() for key, value in scores.items()},
                    **({"stoi": stoi_values.tolist()} if stoi_values is not None else {}),
                },
            }
        )
    report = {
        "command": "python benchmarks/bench_vocoder.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("speakers", " ".join(args.speakers)),
                ("iters", args.iters),
                ("threads", args.threads),
            )
        ),
        "clips": names,
        "started_utc": started.isoformat(timespec="seconds"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        "arms": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(table(rows, len(paths)))
    print(f"load average before {load_before}, after {os.getloadavg()}; JSON: {args.json}")


if __name__ == "__main__":
    main()
