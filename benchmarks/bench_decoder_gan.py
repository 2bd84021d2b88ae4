"""Does an adversarial term give the decoder the fine structure DNSMOS hears?

The decoder's reconstructions score 0.13 below HiFi-GAN copy synthesis of the same clips, and a
pointwise loss (MSE or L1) does not close it (benchmarks/RESULTS_quality.md). This fine-tunes the
decoder of one finished checkpoint alone, the encoder frozen (so its latent space, and the prior
trained on it, stay valid), on its training loss plus a least-squares GAN term and a
discriminator feature-matching term (as HiFi-GAN trains its generator), against a small 2-D
patch discriminator on the z-scored log-mels. After every `--eval-every` epochs it scores the
test speakers' reconstructions (label withheld, as the finaliser does) and prior samples through
HiFi-GAN with DNSMOS (epoch 0: the checkpoint as it came), and writes the fine-tuned
checkpoint, which `bench_quality.py run --checkpoint` evaluates as the finaliser would.
`--prior-pool N` also has the discriminator judge decodings of N latents drawn once from the
prior (aimed at the samples' gap); `--adv-weight 0 --fm-weight 0` is the control: the same
fine-tuning with the recon loss alone; `--delta-weight W` adds a loss on the log-mel's local
contrast instead of a discriminator; `--ema D` evaluates and saves a moving average of the
decoder's weights instead of the last step's; `--gta-strengths S ...` also trains the decoder on
"teacher-forced" latents: each training clip's latent noised to strength S and denoised by the
prior with the clip's own emotion (as conversions are made), so the decoder learns to turn the
prior's errors into the clip it started from (as Tacotron 2 fine-tunes its vocoder on the
acoustic model's ground-truth-aligned predictions).

    python benchmarks/bench_decoder_gan.py --checkpoint CK --out runs/exp/gan --epochs 80

Record: OUT/results.json. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_sampling import decode_batches, exported_clips, write_record
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from emovae.checkpoint import LoadedModel, load_model, read_checkpoint, save_checkpoint
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluate import reconstruct
from emovae.evaluation.audio_quality import DnsMos
from emovae.loss import LossWeights, local_contrast_loss, spectral_loss, vae_loss
from emovae.train import encode_batches
from sweeps.space import load_space


class PatchDiscriminator(nn.Module):
    """(B, 1, n_mels, frames) -> patch scores, and every layer's activations (for feature
    matching). Weight-normalised, as HiFi-GAN's discriminators."""

    def __init__(self, channels: int = 16):
        super().__init__()
        c = channels
        shapes = [(1, c, 1), (c, c, 2), (c, 2 * c, 2), (2 * c, 2 * c, 1)]
        self.layers = nn.ModuleList(
            weight_norm(nn.Conv2d(i, o, (3, 9), stride=(s, s), padding=(1, 4)))
            for i, o, s in shapes
        )
        self.out = weight_norm(nn.Conv2d(2 * c, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            features.append(x)
        return self.out(x), features


def decoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """A TemporalVAE's decoding half: latent projection, emotion embedding, decoder, output."""
    parts = [model.from_latent, model.decoder, model.to_output]
    if model.emotion is not None:
        parts.append(model.emotion)
    return [p for part in parts for p in part.parameters()]


def prior_pool(model: nn.Module, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` latents from the model's prior, emotions in turn, and their labels."""
    labels = torch.arange(max(model.n_classes, 1)).repeat(-(-n // max(model.n_classes, 1)))[:n]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = [model.sample_latents(len(y), y, generator) for y in labels.split(64)]
    return (torch.cat(z) if z else torch.empty(0)), labels


def teacher_forced_pool(
    model: nn.Module, mu: torch.Tensor, labels: torch.Tensor, strengths: list[float], seed: int
) -> torch.Tensor:
    """(len(strengths), N, C, T): the latents `mu` noised to each strength and denoised by the
    prior towards their own emotions (SDEdit, the prior's `convert`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.stack(
            [
                torch.cat(
                    [
                        model.prior.convert(z, y, strength, generator)
                        for z, y in zip(mu.split(64), labels.split(64), strict=True)
                    ]
                )
                for strength in strengths
            ]
        )


@contextlib.contextmanager
def averaged_weights(
    weights: list[nn.Parameter], average: list[torch.Tensor] | None
) -> Iterator[None]:
    """The averaged weights in place of the current ones for the block (none: unchanged)."""
    if average is None:
        yield
        return
    current = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w, mean in zip(weights, average, strict=True):
            w.copy_(mean)
    try:
        yield
    finally:
        with torch.no_grad():
            for w, kept in zip(weights, current, strict=True):
                w.copy_(kept)


def evaluate(
    loaded: LoadedModel, data: PreparedData, dnsmos: DnsMos, samples_per_emotion: int, seed: int
) -> dict[str, float]:
    """Test MSE, and DNSMOS (overall, sig, bak) of the test reconstructions and of
    `samples_per_emotion` prior samples per emotion, through HiFi-GAN as exported."""
    model = loaded.model
    model.eval()
    decoded, _ = reconstruct(model, data.test)  # label withheld, as the finaliser scores them
    test_mse = float(F.mse_loss(decoded, data.test.features))
    recons = exported_clips(loaded, loaded.normalizer.denormalize(decoded[:, 0].numpy()))
    labels = torch.arange(model.n_classes).repeat(samples_per_emotion)
    with torch.no_grad():
        z = model.sample_latents(len(labels), labels, torch.Generator().manual_seed(seed))
        sampled = decode_batches(model, z, labels)
    samples = exported_clips(loaded, loaded.normalizer.denormalize(sampled[:, 0].numpy()))
    rate = loaded.features.sample_rate
    out = {"test_mse": test_mse}
    for name, clips in (("recon", recons), ("samples", samples)):
        quality = dnsmos.score(clips, rate)
        out |= {f"{name}_{k}": float(np.mean(quality[k])) for k in ("ovrl", "sig", "bak")}
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default="../shared/data/emodb/wav")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--adv-weight", type=float, default=1.0)
    parser.add_argument("--fm-weight", type=float, default=2.0)
    parser.add_argument("--recon-weight", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--disc-channels", type=int, default=16)
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument(
        "--delta-weight",
        type=float,
        default=0.0,
        help="weight of local_contrast_loss (a pointwise loss on the log-mel's steps along "
        "frequency and time, which is where harmonics show)",
    )
    parser.add_argument("--samples-per-emotion", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--prior-pool",
        type=int,
        default=0,
        help="prior latents drawn once (generator seed + 1) whose decodings the discriminator "
        "also judges, so the decoder learns to make them real; 0: none",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="decay of a moving average of the decoder's weights, evaluated and saved in place "
        "of the last step's; 0: none",
    )
    parser.add_argument(
        "--gta-strengths",
        type=float,
        nargs="*",
        default=[],
        help="noise strengths in (0, 1] of the teacher-forced latents the decoder also learns "
        "to decode into their clips (drawn once, generator seed + 2); none: no such term",
    )
    parser.add_argument("--gta-weight", type=float, default=1.0)
    return parser


class FineTuning:
    """The decoder (its encoder frozen) against the discriminator, one batch at a time."""

    def __init__(self, loaded: LoadedModel, x: torch.Tensor, y: torch.Tensor, args):
        self.model, self.config, self.args = loaded.model, loaded.train, args
        self.model.eval()
        self.x, self.y = x, y
        self.mu, self.logvar = encode_batches(self.model, x)
        self.disc = PatchDiscriminator(args.disc_channels)
        self.weights = decoder_parameters(self.model)
        self.g_opt = torch.optim.Adam(self.weights, lr=args.lr, betas=(0.8, 0.99))
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=args.lr, betas=(0.8, 0.99))
        self.generator = torch.Generator().manual_seed(args.seed)
        self.pool_z, self.pool_y = prior_pool(self.model, args.prior_pool, args.seed + 1)
        self.average = [w.detach().clone() for w in self.weights] if args.ema > 0 else None
        self.gta_z = (
            teacher_forced_pool(self.model, self.mu, y, args.gta_strengths, args.seed + 2)
            if args.gta_strengths
            else None
        )

    def epoch(self) -> dict[str, float]:
        """One pass over the training clips: the mean of each loss term."""
        self.model.train()
        self.model.encoder.eval()
        order = torch.randperm(len(self.x), generator=self.generator)
        rows = [
            self.step(order[start : start + self.config.batch_size])
            for start in range(0, len(order) - 1, self.config.batch_size)
        ]
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    def step(self, index: torch.Tensor) -> dict[str, float]:
        x, y, args = self.x[index], self.y[index], self.args
        z = self.mu[index] + torch.randn_like(self.mu[index]) * (0.5 * self.logvar[index]).exp()
        dropped = torch.rand(len(y)) < self.config.label_dropout
        fake = self.model.decode(z, y.masked_fill(dropped, self.model.withheld_label))
        sampled = None
        if len(self.pool_z):
            pick = torch.randint(len(self.pool_z), (len(y),), generator=self.generator)
            sampled = self.model.decode(self.pool_z[pick], self.pool_y[pick])

        d_loss = (self.disc(x)[0] - 1).pow(2).mean() + self.disc(fake.detach())[0].pow(2).mean()
        if sampled is not None:
            d_loss = d_loss + self.disc(sampled.detach())[0].pow(2).mean()
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()

        fake_score, fake_features = self.disc(fake)
        with torch.no_grad():
            real_features = self.disc(x)[1]
        terms = {
            "adv": (fake_score - 1).pow(2).mean(),
            # Summed over the layers, as recorded; the loss takes their mean.
            "fm": sum(F.l1_loss(f, r) for f, r in zip(fake_features, real_features, strict=True)),
            "mse": F.mse_loss(fake, x),
            "prior_adv": torch.zeros(()),
            "delta": local_contrast_loss(fake, x),
            "gta": torch.zeros(()),
        }
        if sampled is not None:
            terms["prior_adv"] = (self.disc(sampled)[0] - 1).pow(2).mean()
        recon = terms["mse"] + self.config.spectral_weight * spectral_loss(fake, x)
        if self.gta_z is not None:
            pick = torch.randint(len(self.gta_z), (len(y),), generator=self.generator)
            forced = self.model.decode(self.gta_z[pick, index], y)
            # The training loss without its KL term (beta 0), local contrast at --delta-weight.
            weights = LossWeights(
                0.0, self.config.spectral_weight, contrast_weight=args.delta_weight
            )
            mu, logvar = self.mu[index], self.logvar[index]
            terms["gta"] = vae_loss(forced, x, mu, logvar, weights)["loss"]
        g_loss = (
            args.gta_weight * terms["gta"]
            + args.recon_weight * recon
            + args.adv_weight * terms["adv"]
            + args.fm_weight * terms["fm"] / len(fake_features)
            + args.prior_weight * terms["prior_adv"]
            + args.delta_weight * terms["delta"]
        )
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.g_opt.step()
        if self.average is not None:
            for mean, w in zip(self.average, self.weights, strict=True):
                mean.lerp_(w.detach(), 1 - args.ema)
        return {"d": float(d_loss.detach())} | {k: float(v.detach()) for k, v in terms.items()}


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = load_space("emodb_cpu", [f"data.path={args.data}"])
    data = prepare_data(spec.experiment.data, spec.experiment.features)
    loaded = load_model(args.checkpoint)
    dnsmos = DnsMos(workers=2)
    tuning = FineTuning(loaded, data.train.features, data.train.labels, args)

    def evaluated() -> dict[str, float]:
        with averaged_weights(tuning.weights, tuning.average):
            return evaluate(loaded, data, dnsmos, args.samples_per_emotion, args.seed)

    history = [{"epoch": 0} | evaluated()]
    print(json.dumps(history[-1]), flush=True)
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        row = {"epoch": epoch} | tuning.epoch() | {"seconds": time.perf_counter() - started}
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            row |= evaluated()
        history.append(row)
        print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    state = read_checkpoint(args.checkpoint, torch.device("cpu"))
    with averaged_weights(tuning.weights, tuning.average):
        state["model"] = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    save_checkpoint(args.out / "best.pt", state)
    write_record(args.out, args, {"history": history})


if __name__ == "__main__":
    main()
