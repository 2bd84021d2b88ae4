"""How the latent diffusion prior's training changes the exported samples of one final model.

From one finished checkpoint (a final model with `prior: diffusion`), train its prior again on
the frozen encoder's latents of the training clips, with the finaliser's own
`emovae.train.finetune_prior`, varying what the finaliser fixes: the prior's width
(`--channels`; a new width starts from fresh weights), whether it starts fresh (`--fresh`) or
continues from the checkpoint's prior, the batch size, the steps, the learning rate and the
moving average, and whether the validation clips' latents join the training clips'
(`--with-validation`: more data for the prior; the VAE never sees them). Then draw
`--per-emotion` samples of every emotion per sample seed and judge them as
`bench_sampling.py` does (HiFi-GAN, CNN and eGeMAPS judges, DNSMOS, Frechet distances to the
real test clips).

    python benchmarks/bench_prior_training.py --checkpoint runs/.../best.pt \
        --out benchmarks/results/quality/prior_training --name batch64 --batch 64 --steps 3000

Results accumulate in OUT/results.json, one entry per (name, sample seed); the retrained
checkpoints go to --work. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_sampling import SampleJudging, Sampler, add_judging_arguments, shown

from emovae.checkpoint import LoadedModel, load_model, read_checkpoint, save_checkpoint
from emovae.config import TrainConfig
from emovae.models import build_model
from emovae.runtime import seed_everything
from emovae.train import finetune_prior

PRIOR_BUFFERS = ("prior.latent_mean", "prior.latent_std", "prior.stats_seen")


def prior_config(args: argparse.Namespace, train: TrainConfig) -> TrainConfig:
    """The checkpoint's training config with this run's prior settings."""
    return dataclasses.replace(
        train,
        prior_channels=args.channels or train.prior_channels,
        batch_size=args.batch or train.batch_size,
        lr=args.lr or train.lr,
        prior_finetune_steps=args.steps,
        prior_ema=args.ema,
        seed=args.train_seed,
    )


def start_checkpoint(
    args: argparse.Namespace, original: LoadedModel, config: TrainConfig, path: Path
) -> None:
    """Copy the checkpoint (`original`, as loaded) to `path` with `config`; a fresh prior when
    asked or resized."""
    state = read_checkpoint(args.checkpoint)
    if args.fresh or config.prior_channels != original.train.prior_channels:
        torch.manual_seed(config.seed)
        n_classes = len(original.label_names)
        fresh = build_model(config, original.features, n_classes).state_dict()
        vae = {k: v for k, v in state["model"].items() if not k.startswith("prior.")}
        # The latent statistics are the data's, not weights: they carry over.
        statistics = {k: state["model"][k] for k in PRIOR_BUFFERS}
        state["model"] = fresh | vae | statistics
    state["train_config"] = dataclasses.asdict(config)
    save_checkpoint(path, state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True, help="this variant's key in results.json")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_prior_training"))
    parser.add_argument("--channels", type=int, help="the prior's width (default: as trained)")
    parser.add_argument("--fresh", action="store_true", help="start from fresh prior weights")
    parser.add_argument("--batch", type=int, help="default: the checkpoint's batch size")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, help="default: the checkpoint's learning rate")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument(
        "--with-validation", action="store_true", help="the validation clips' latents too"
    )
    add_judging_arguments(parser)
    args = parser.parse_args()
    judging = SampleJudging.load(args)

    original = load_model(args.checkpoint)
    config = prior_config(args, original.train)
    retrained = args.work / f"{args.name}.pt"
    retrained.parent.mkdir(parents=True, exist_ok=True)
    start_checkpoint(args, original, config, retrained)
    # The prior's loss draws its noise from torch's global generator: seeded here, the run does
    # not depend on how much of it the judges' preparation used.
    seed_everything(config.seed)
    started = time.perf_counter()
    splits = [judging.data.train] + ([judging.data.val] if args.with_validation else [])
    features = torch.cat([split.features for split in splits])
    labels = torch.cat([split.labels for split in splits])
    loss = finetune_prior(retrained, features, labels, config, torch.device("cpu"), True)
    seconds = time.perf_counter() - started

    loaded = load_model(retrained)
    loaded.model.eval()
    setting = Sampler.of(loaded.model.prior)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for seed in args.sample_seeds:
        metrics, _ = judging.score(loaded, setting, seed, args.per_emotion)
        results[f"{args.name}_seed{seed}"] = {
            "name": args.name,
            "seed": seed,
            "prior": {k: getattr(config, k) for k in ("prior_channels", "batch_size", "lr")}
            | {"steps": args.steps, "ema": args.ema, "fresh": args.fresh}
            | {"clips": len(features)},
            "train_seconds": seconds,
            "final_loss": loss,
            "checkpoint": str(args.checkpoint),
            "metrics": metrics,
        }
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{args.name} seed {seed}: train {seconds:.0f} s, loss {loss:.4f}; {shown(metrics)}")


if __name__ == "__main__":
    main()
