"""How the latent diffusion prior's sampling settings change the exported samples.

From one finished checkpoint (a final model with `prior: diffusion`), for each classifier-free
guidance scale, DDIM step count, DDIM eta (0: deterministic; 1: ancestral) and starting-noise
temperature (1: as trained) asked for, and each sample seed: `--per-emotion` samples of every emotion, decoded (and, with `--reencode N`,
sent N times more through the encoder's mean and the decoder), vocoded with HiFi-GAN and
judged as the finaliser judges its exported WAVs (CNN judge and eGeMAPS judge accuracy, DNSMOS, Frechet distances to the real
test clips), plus the seconds the prior took to draw them (the cost a trial's sample metric
pays on every metric epoch).

    python benchmarks/bench_sampling.py --checkpoint runs/emodb_cpu/final/checkpoints/best.pt \
        --out benchmarks/results/quality/sampling --guidance 1 2 3 4.5 --steps 40 \
        --sample-seeds 0 1

Results accumulate in OUT/results.json, one entry per setting and seed: a finished
entry is not recomputed. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from emovae.audio.export import limit_peak
from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.checkpoint import LoadedModel, load_model
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluation.exported_audio import (
    AudioJudges,
    WavSet,
    clip_set,
    prepare_audio_judges,
    score_set,
    wav_set,
)
from emovae.train import encode_batches
from sweeps.final_evaluation import final_judge
from sweeps.space import load_space

SHOWN = (
    "wav_gen_cnn_acc",
    "wav_gen_smile_acc",
    "wav_gen_dnsmos",
    "wav_gen_fd_cnn",
    "wav_gen_fd_smile",
)


class Sampler(NamedTuple):
    """How the prior draws: the `LatentDiffusionPrior` attributes of the same names."""

    guidance: float
    sample_steps: int
    eta: float = 0.0
    temperature: float = 1.0

    @classmethod
    def of(cls, prior: torch.nn.Module) -> Sampler:
        return cls(*(getattr(prior, name) for name in cls._fields))


def draw(
    loaded: LoadedModel,
    setting: Sampler,
    seed: int,
    per_emotion: int,
    reencode: int = 0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Denormalised log-mels of `per_emotion` samples per emotion drawn with `setting`, their
    labels, the prior's seconds. `reencode` > 0 sends the decoded samples that many times more
    through the encoder's mean and the decoder."""
    model = loaded.model
    for name, value in setting._asdict().items():
        setattr(model.prior, name, value)
    labels = torch.arange(model.n_classes).repeat(per_emotion)
    start = time.perf_counter()
    with torch.no_grad():
        z = model.sample_latents(len(labels), labels, torch.Generator().manual_seed(seed))
        prior_seconds = time.perf_counter() - start
        decoded = decode_batches(model, z, labels)
        for _ in range(reencode):
            means = encode_batches(model, decoded, batch_size=25)[0]
            decoded = decode_batches(model, means, labels)
    return loaded.normalizer.denormalize(decoded[:, 0].numpy()), labels.numpy(), prior_seconds


def decode_batches(model: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Latents -> z-scored log-mels (N, 1, n_mels, frames), 25 at a time, each with its label."""
    return torch.cat(
        [model.decode(z[i : i + 25], labels[i : i + 25]) for i in range(0, len(z), 25)]
    )


def add_judging_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `SampleJudging.load` and of the samples it scores."""
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--per-emotion", type=int, default=10)
    parser.add_argument("--data", default="../shared/data/emodb/wav")
    parser.add_argument("--threads", type=int, default=2)


@dataclasses.dataclass
class SampleJudging:
    """EmoDB's split, both judges and the real test clips: what scoring samples needs."""

    data: PreparedData
    judges: AudioJudges
    real: WavSet

    @classmethod
    def load(cls, args: argparse.Namespace) -> SampleJudging:
        torch.set_num_threads(args.threads)
        spec = load_space("emodb_cpu", [f"data.path={args.data}"])
        data = prepare_data(spec.experiment.data, spec.experiment.features)
        cache = spec.experiment.data.cache_dir
        judges = prepare_audio_judges(data, final_judge(data, spec.judge, cache, "cpu"), cache)
        labels = data.test.labels.numpy()
        return cls(data, judges, wav_set(judges, "real", data.test.paths, labels, Path(cache)))

    def score(
        self,
        loaded: LoadedModel,
        setting: Sampler,
        seed: int,
        per_emotion: int,
        reencode: int = 0,
    ) -> tuple[dict[str, float], float]:
        """`draw`'s samples as WAV-level clips (HiFi-GAN, peak-limited as exported), judged
        against the real test clips; and the prior's seconds."""
        log_mels, labels, prior_seconds = draw(loaded, setting, seed, per_emotion, reencode)
        samples = clip_set(self.judges, "gen", exported_clips(loaded, log_mels), labels)
        return score_set(self.judges, samples, self.real), prior_seconds


def exported_clips(
    loaded: LoadedModel, log_mels: np.ndarray, vocoder: Vocoder | None = None
) -> list[np.ndarray]:
    """Denormalised log-mels (N, n_mels, frames) -> clips as the finaliser exports them
    (`vocoder`, by default the shipped HiFi-GAN; the features' duration, peak-limited), kept
    in memory as float."""
    vocoder = vocoder or load_vocoder("hifigan", loaded.features)
    length = round(loaded.features.duration * loaded.features.sample_rate)
    clips = []
    for i in range(0, len(log_mels), 20):
        audio = vocoder(log_mels[i : i + 20], length=length)
        clips += [limit_peak(np.asarray(a, np.float32)) for a in audio]
    return clips


def write_record(out: Path, args: argparse.Namespace, body: dict[str, Any]) -> None:
    """OUT/results.json: the command's arguments (paths as text) beside `body`."""
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    (out / "results.json").write_text(json.dumps(record | body, indent=1) + "\n")


def shown(metrics: dict[str, float]) -> str:
    return " ".join(f"{k[8:]} {metrics[k]:.3f}" for k in SHOWN if k in metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[40])
    parser.add_argument(
        "--eta", type=float, nargs="+", default=[0.0], help="0: deterministic DDIM, 1: ancestral"
    )
    parser.add_argument(
        "--temperature", type=float, nargs="+", default=[1.0], help="scale of the start noise"
    )
    parser.add_argument(
        "--reencode", type=int, default=0, help="decode(encode(.)) passes after sampling"
    )
    add_judging_arguments(parser)
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    loaded.model.eval()
    if loaded.model.prior is None:
        parser.error(f"--checkpoint {args.checkpoint}: the model has no learned prior to sample")
    judging = SampleJudging.load(args)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    settings = itertools.product(
        args.guidance, args.steps, args.eta, args.temperature, args.sample_seeds
    )
    for guidance, steps, eta, temperature, seed in settings:
        key = f"g{guidance:g}_steps{steps}" + (f"_eta{eta:g}" if eta else "")
        key += f"_temp{temperature:g}" if temperature != 1.0 else ""
        key += (f"_reencode{args.reencode}" if args.reencode else "") + f"_seed{seed}"
        if key in results:
            continue
        setting = Sampler(guidance, steps, eta, temperature)
        metrics, prior_seconds = judging.score(
            loaded, setting, seed, args.per_emotion, args.reencode
        )
        results[key] = {
            "guidance": guidance,
            "steps": steps,
            "eta": eta,
            "temperature": temperature,
            "reencode": args.reencode,
            "seed": seed,
            "n": args.per_emotion * loaded.model.n_classes,
            "prior_seconds": prior_seconds,
            "checkpoint": str(args.checkpoint),
            "metrics": metrics,
        }
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{key}: prior {prior_seconds:.1f} s; {shown(metrics)}", flush=True)
    print(table(results))


def table(results: dict[str, Any]) -> str:
    """Markdown: mean over sample seeds per (guidance, steps, eta, temperature, re-encoding)."""
    groups: dict[tuple[float, int, float, float, int], list[dict[str, Any]]] = {}
    for entry in results.values():
        setting = (
            entry["guidance"],
            entry["steps"],
            entry.get("eta", 0.0),
            entry.get("temperature", 1.0),
            entry.get("reencode", 0),
        )
        groups.setdefault(setting, []).append(entry)
    head = "| guidance | DDIM steps | eta | temperature | re-encode | seeds | prior s | "
    lines = [head + " | ".join(k[8:] for k in SHOWN) + " |", "|" + "---|" * (7 + len(SHOWN))]
    for (guidance, steps, eta, temperature, reencode), entries in sorted(groups.items()):
        means = [np.mean([e["metrics"][k] for e in entries]) for k in SHOWN]
        seconds = np.mean([e["prior_seconds"] for e in entries])
        cells = " | ".join(f"{m:.3f}" for m in means)
        lines.append(
            f"| {guidance:g} | {steps} | {eta:g} | {temperature:g} | {reencode} | {len(entries)}"
            f" | {seconds:.1f}"
            f" | {cells} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
