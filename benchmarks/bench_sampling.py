"""How the latent diffusion prior's sampling settings change the exported samples.

From one finished checkpoint (a final model with `prior: diffusion`), for each classifier-free
guidance scale and DDIM step count asked for, and each sample seed: `--per-emotion` samples
of every emotion, decoded, vocoded with HiFi-GAN and judged as the finaliser judges its
exported WAVs (CNN judge and eGeMAPS judge accuracy, DNSMOS, Frechet distances to the real
test clips), plus the seconds the prior took to draw them (the cost a trial's sample metric
pays on every metric epoch).

    python benchmarks/bench_sampling.py --checkpoint runs/emodb_cpu/final/checkpoints/best.pt \
        --out benchmarks/results/quality/sampling --guidance 1 2 3 4.5 --steps 40 \
        --sample-seeds 0 1

Results accumulate in OUT/results.json, one entry per (guidance, steps, seed): a finished
entry is not recomputed. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovae.audio.export import limit_peak
from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.checkpoint import LoadedModel, load_model
from emovae.dataset import prepare_data
from emovae.evaluation.exported_audio import (
    AudioJudges,
    WavSet,
    clip_set,
    prepare_audio_judges,
    score_set,
    wav_set,
)
from sweeps.final_evaluation import final_judge
from sweeps.space import load_space

SHOWN = (
    "wav_gen_cnn_acc",
    "wav_gen_smile_acc",
    "wav_gen_dnsmos",
    "wav_gen_fd_cnn",
    "wav_gen_fd_smile",
)


def draw(
    loaded: LoadedModel, guidance: float, steps: int, seed: int, per_emotion: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Denormalised log-mels of `per_emotion` samples per emotion, their labels, the prior's
    seconds."""
    model = loaded.model
    prior = model.prior
    prior.guidance, prior.sample_steps = guidance, steps
    labels = torch.arange(model.n_classes).repeat(per_emotion)
    start = time.perf_counter()
    with torch.no_grad():
        z = model.sample_latents(len(labels), labels, torch.Generator().manual_seed(seed))
        prior_seconds = time.perf_counter() - start
        decoded = torch.cat(
            [model.decode(z[i : i + 25], labels[i : i + 25]) for i in range(0, len(z), 25)]
        )
    return loaded.normalizer.denormalize(decoded[:, 0].numpy()), labels.numpy(), prior_seconds


def judged(
    judges: AudioJudges, vocoder: Vocoder, log_mels: np.ndarray, labels: np.ndarray, length: int
) -> WavSet:
    """The samples as WAV-level clips (HiFi-GAN, peak-limited as exported) seen by both judges."""
    clips = []
    for i in range(0, len(log_mels), 20):
        audio = vocoder(log_mels[i : i + 20], length=length)
        clips += [limit_peak(np.asarray(a, np.float32)) for a in audio]
    return clip_set(judges, "gen", clips, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[40])
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--per-emotion", type=int, default=10)
    parser.add_argument("--data", default="../shared/data/emodb/wav")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = load_space("emodb_cpu", [f"data.path={args.data}"])
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    cache = spec.experiment.data.cache_dir
    judges = prepare_audio_judges(data, final_judge(data, spec.judge, cache, "cpu"), cache)
    loaded = load_model(args.checkpoint)
    loaded.model.eval()
    if loaded.model.prior is None:
        parser.error(f"--checkpoint {args.checkpoint}: the model has no learned prior to sample")
    vocoder = load_vocoder("hifigan", loaded.features)
    length = round(loaded.features.duration * loaded.features.sample_rate)
    labels = data.test.labels.numpy()
    real = wav_set(judges, "real", data.test.paths, labels, Path(cache))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for guidance, steps, seed in itertools.product(args.guidance, args.steps, args.sample_seeds):
        key = f"g{guidance:g}_steps{steps}_seed{seed}"
        if key in results:
            continue
        log_mels, asked, prior_seconds = draw(loaded, guidance, steps, seed, args.per_emotion)
        metrics = score_set(judges, judged(judges, vocoder, log_mels, asked, length), real)
        results[key] = {
            "guidance": guidance,
            "steps": steps,
            "seed": seed,
            "n": len(asked),
            "prior_seconds": prior_seconds,
            "checkpoint": str(args.checkpoint),
            "metrics": metrics,
        }
        path.write_text(json.dumps(results, indent=1) + "\n")
        shown = " ".join(f"{k[8:]} {metrics[k]:.3f}" for k in SHOWN if k in metrics)
        print(f"{key}: prior {prior_seconds:.1f} s; {shown}", flush=True)
    print(table(results))


def table(results: dict[str, Any]) -> str:
    """Markdown: mean over sample seeds per (guidance, steps)."""
    groups: dict[tuple[float, int], list[dict[str, Any]]] = {}
    for entry in results.values():
        groups.setdefault((entry["guidance"], entry["steps"]), []).append(entry)
    head = "| guidance | DDIM steps | seeds | prior s | " + " | ".join(k[8:] for k in SHOWN) + " |"
    lines = [head, "|" + "---|" * (4 + len(SHOWN))]
    for (guidance, steps), entries in sorted(groups.items()):
        means = [np.mean([e["metrics"][k] for e in entries]) for k in SHOWN]
        seconds = np.mean([e["prior_seconds"] for e in entries])
        cells = " | ".join(f"{m:.3f}" for m in means)
        lines.append(f"| {guidance:g} | {steps} | {len(entries)} | {seconds:.1f} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
