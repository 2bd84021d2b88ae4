"""What the local-contrast term costs a training step: the `emodb_cpu` space's model (its
`train` settings, 32 latent channels, six emotions, 2 s HiFi-GAN mels), one batch, forward +
loss + backward + clipping + Adam, with `contrast_weight` 0 and 5 interleaved, side by side.

    python benchmarks/bench_loss_cost.py            # --steps 20 --repeats 5 --threads 2

Prints one JSON line: seconds per step of each arm (median over repeats) and their ratio.
Numbers: benchmarks/RESULTS_quality.md ("A local-contrast term, trained from scratch").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from emovae.config import clip_frames
from emovae.loss import LossWeights, vae_loss
from emovae.models import build_model
from sweeps.space import load_space


def seconds_per_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: LossWeights,
    steps: int,
) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        recon, mu, logvar = model(x, y)
        loss = vae_loss(recon, x, mu, logvar, weights)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_space("emodb_cpu", ["data.path=unused"])
    features, train = spec.experiment.features, spec.experiment.train
    train = dataclasses.replace(train, latent_dim=32)
    torch.manual_seed(0)
    model = build_model(train, features, 6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(train.batch_size, 1, features.n_mels, clip_frames(features))
    y = torch.randint(6, (train.batch_size,))
    arms = {w: LossWeights(1e-5, train.spectral_weight, contrast_weight=w) for w in (0.0, 5.0)}
    seconds_per_step(model, optimizer, x, y, arms[0.0], 3)  # warm-up: oneDNN's first calls
    times: dict[float, list[float]] = {w: [] for w in arms}
    for _ in range(args.repeats):
        for weight, weights in arms.items():
            times[weight].append(seconds_per_step(model, optimizer, x, y, weights, args.steps))
    plain, contrast = (statistics.median(times[w]) for w in arms)
    print(
        json.dumps(
            {
                "seconds_per_step": {
                    "contrast_0": round(plain, 4),
                    "contrast_5": round(contrast, 4),
                },
                "ratio": round(contrast / plain, 4),
                "all": {str(w): [round(t, 4) for t in v] for w, v in times.items()},
                "batch": train.batch_size,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()
