"""What a sample's DNSMOS can reach: the speech the prior learns from, through the same pipe.

The prior's samples are decoded latents of the *training* speakers' kind, so their ceiling is
not the test clips' (whose DNSMOS the targets quote) but the training clips'. For one finished
checkpoint this scores, on the training split (and the test split beside it), DNSMOS of:
the real WAVs; their HiFi-GAN copy synthesis (their own mels, no model); the model's
reconstructions (posterior mean, decoded with the clip's emotion, as a sample is). If the
training reconstructions reach a score the samples do not, the gap is the prior's.

    python benchmarks/bench_sample_ceiling.py --checkpoint CK --out benchmarks/results/quality/ceiling

Record: OUT/results.json. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from bench_sampling import exported_clips

from emovae.checkpoint import load_model
from emovae.dataset import prepare_data
from emovae.evaluate import reconstruct
from emovae.evaluation.audio_quality import DnsMos
from emovae.evaluation.exported_audio import read_clips
from sweeps.space import load_space


def scores(dnsmos: DnsMos, clips: list[np.ndarray], rate: int) -> dict[str, float]:
    quality = dnsmos.score(clips, rate)
    return {k: float(np.mean(quality[k])) for k in ("ovrl", "sig", "bak")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="../shared/data/emodb/wav")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    loaded.model.eval()
    spec = load_space("emodb_cpu", [f"data.path={args.data}"])
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    rate = loaded.features.sample_rate
    dnsmos = DnsMos(num_threads=args.threads)

    denormalize = loaded.normalizer.denormalize
    results = {"checkpoint": str(args.checkpoint)}
    for name, split in (("train", data.train), ("test", data.test)):
        real = read_clips(split.paths, loaded.features)
        # Decoded with each clip's own emotion, as a sample is decoded with the one asked for.
        decoded, _ = reconstruct(loaded.model, split, label_mode="true")
        copies = exported_clips(loaded, denormalize(split.features[:, 0].numpy()))
        recons = exported_clips(loaded, denormalize(decoded[:, 0].numpy()))
        results[name] = {
            "n": len(real),
            "real": scores(dnsmos, real, rate),
            "copy_synthesis": scores(dnsmos, copies, rate),
            "reconstruction": scores(dnsmos, recons, rate),
        }
        print(name, json.dumps(results[name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
