"""How the prior's latents differ from the encoder's: per emotion, in the prior's z-scored units.

For the training clips (what the prior learns) and the same number of prior samples with the
same emotions: the spread, the lag-1 autocorrelation along latent time and the share of the
temporal power in the upper half of the band (white noise: 0 and 0.5). A latent close to white
noise in time is one a diffusion prior must reproduce frame by frame.

    python benchmarks/latent_statistics.py --checkpoint runs/.../best.pt \\
        --out benchmarks/results/quality/latent_statistics/NAME.json

Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emovae.checkpoint import load_model
from emovae.dataset import prepare_data
from emovae.train import encode_batches
from sweeps.space import load_space


def temporal_statistics(z: torch.Tensor) -> dict[str, float]:
    """(N, C, T) -> spread, lag-1 autocorrelation and upper-band power share along T."""
    centred = z - z.mean(dim=-1, keepdim=True)
    lag1 = (centred[..., 1:] * centred[..., :-1]).sum(-1) / centred.pow(2).sum(-1)
    power = torch.fft.rfft(centred, dim=-1).abs().pow(2)
    upper = power[..., power.shape[-1] // 2 :].sum(-1) / power.sum(-1)
    return {
        "std": float(z.std()),
        "lag1_autocorrelation": float(lag1.mean()),
        "upper_band_power": float(upper.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="../shared/data/emodb/wav")
    parser.add_argument("--seed", type=int, default=0, help="the prior samples' generator seed")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = load_space("emodb_cpu", [f"data.path={args.data}"])
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    loaded = load_model(args.checkpoint)
    model, prior = loaded.model, loaded.model.prior
    model.eval()
    mu, logvar = encode_batches(model, data.train.features)
    labels = data.train.labels
    with torch.no_grad():
        sampled = model.sample_latents(
            len(labels), labels, torch.Generator().manual_seed(args.seed)
        )
    scale = prior.latent_std[:, None]
    real, drawn = (
        (mu - prior.latent_mean[:, None]) / scale,
        (sampled - prior.latent_mean[:, None]) / scale,
    )
    rows = {"all": {"real": temporal_statistics(real), "sampled": temporal_statistics(drawn)}}
    for index, name in enumerate(loaded.label_names):
        chosen = labels == index
        rows[name] = {
            "clips": int(chosen.sum()),
            "real": temporal_statistics(real[chosen]),
            "sampled": temporal_statistics(drawn[chosen]),
        }
    record = {
        "checkpoint": str(args.checkpoint),
        "posterior_std_median": float(((0.5 * logvar).exp() / scale).median()),
        "by_emotion": rows,
    }
    for name, row in rows.items():
        cells = [
            f"{row[k][s]:.3f}"
            for s in ("std", "lag1_autocorrelation", "upper_band_power")
            for k in ("real", "sampled")
        ]
        print(
            f"{name:10s} std {cells[0]}/{cells[1]}  lag-1 {cells[2]}/{cells[3]}  upper band {cells[4]}/{cells[5]}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
