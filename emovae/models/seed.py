"""The seed architecture (`arch: seed`): the reference design of ../shared/SPEC.md, kept as a
searchable baseline. A convolutional VAE with residual blocks for (batch, 1, n_mels, frames)
log-mel spectrograms and one latent vector per clip.

Encoder: four stride-2 stages (1 -> c, 2c, 4c, 8c channels; c = 32 gives the spec's 32..256),
each Conv2d(k3, s2, p1) + BatchNorm + LeakyReLU(0.2) followed by a residual block, then linear
heads for mu and log-variance. The decoder mirrors it with ConvTranspose2d(k3, s2, p1, op1).
Inputs of any size are padded up to a multiple of 16 and the output is cropped back, so the
output always has the input's shape. With `n_classes > 0` encoder heads and decoder input are
conditioned on a one-hot emotion (a conditional VAE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emovae.models.prior import LatentDiffusionPrior

N_STAGES = 4
DOWNSAMPLE = 2**N_STAGES
# The decoder's BatchNorm makes it blind to the scale of z, so only beta x KL holds log-variance
# down; one Adam step on a wide linear head can move it by ~5 and exp() then overflows the loss.
# A soft bound at +-8 (sigma in [0.018, 55]) keeps every trial of a sweep finite.
LOGVAR_LIMIT = 8.0


# Activations run in place: BatchNorm's backward does not need its output, and skipping one
# activation-sized write per layer made a training step faster on the CPU (benchmarks/RESULTS_library.md).


class ResidualBlock(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): two 3x3 conv + BN layers around an identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _down(c_in: int, c_out: int) -> nn.Sequential:
    """(B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
        ResidualBlock(c_out),
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """(B, c_in, H, W) -> (B, c_out, 2H, 2W)."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
        ResidualBlock(c_out),
    )


def padded_size(n: int) -> int:
    return -(-n // DOWNSAMPLE) * DOWNSAMPLE


class LatentVAE(nn.Module):
    """What every architecture does the same way around its own `encode` and `decode`:
    reparameterisation, the forward pass, prior sampling and the prior's loss. A subclass
    sets `latent_dim`, `latent_shape` (one latent, without the batch) and `prior`."""

    latent_dim: int
    latent_shape: tuple[int, ...]
    # Annotation only: a class-level None would shadow the submodule nn.Module registers.
    prior: LatentDiffusionPrior | None

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns reconstruction, mu, logvar. `sample=False` decodes the mean (deterministic)."""
        mu, logvar = self.encode(x, labels)
        z = self.reparameterize(mu, logvar) if sample else mu
        return self.decode(z, labels), mu, logvar

    def prior_loss(
        self,
        mu: torch.Tensor,
        labels: torch.Tensor | None,
        generator: torch.Generator | None = None,
        encoder_weight: float = 0.0,
    ) -> torch.Tensor | None:
        """The learned prior's loss on these posterior means (None without a learned prior);
        `encoder_weight` scales the share of its gradient that reaches the encoder."""
        if self.prior is None:
            return None
        return self.prior.loss(mu, labels, generator, encoder_weight)

    @torch.no_grad()
    def sample_latents(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents (n, *latent_shape) from the prior: the learned one if configured, else
        N(0, I)."""
        if self.prior is not None:
            # The learned prior is a prior over time: its latents are (latent_dim, frames).
            return self.prior.sample(n, self.latent_shape[-1], labels, generator)
        # z is drawn on the CPU so a seeded CPU generator gives the same samples on any device.
        device = next(self.parameters()).device
        return torch.randn(n, *self.latent_shape, generator=generator).to(device)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw latents from the prior and decode: (n, 1, n_mels, frames)."""
        return self.decode(self.sample_latents(n, labels, generator), labels)


class VAE(LatentVAE):
    def __init__(
        self,
        n_mels: int,
        n_frames: int,
        latent_dim: int = 32,
        base_channels: int = 32,
        n_classes: int = 0,
    ):
        super().__init__()
        self.input_shape = (n_mels, n_frames)
        self.latent_dim = latent_dim
        self.n_classes = n_classes
        widths = [base_channels * 2**i for i in range(N_STAGES)]
        self.bottleneck = (
            widths[-1],
            padded_size(n_mels) // DOWNSAMPLE,
            padded_size(n_frames) // DOWNSAMPLE,
        )
        flat = widths[-1] * self.bottleneck[1] * self.bottleneck[2]

        self.encoder = nn.Sequential(
            *[_down(c_in, c_out) for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True)]
        )
        self.to_mu = nn.Linear(flat + n_classes, latent_dim)
        self.to_logvar = nn.Linear(flat + n_classes, latent_dim)
        self.from_latent = nn.Linear(latent_dim + n_classes, flat)
        ups = list(reversed(widths))
        self.decoder = nn.Sequential(
            *[_up(c_in, c_out) for c_in, c_out in zip(ups[:-1], ups[1:], strict=True)]
        )
        # Last layer has no BN/activation: targets are z-scored, any real value is valid.
        self.to_output = nn.ConvTranspose2d(widths[0], 1, 3, stride=2, padding=1, output_padding=1)

    def _condition(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.n_classes == 0:
            return h
        if labels is None:
            raise ValueError("this VAE is conditional: pass the emotion labels")
        return torch.cat([h, F.one_hot(labels, self.n_classes).to(h.dtype)], dim=1)

    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, n_mels, frames) -> mu, logvar, each (B, latent_dim)."""
        n_mels, n_frames = x.shape[-2:]
        x = F.pad(x, (0, padded_size(n_frames) - n_frames, 0, padded_size(n_mels) - n_mels))
        h = self._condition(self.encoder(x).flatten(1), labels)
        logvar = LOGVAR_LIMIT * torch.tanh(self.to_logvar(h) / LOGVAR_LIMIT)
        return self.to_mu(h), logvar

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent_dim) -> (B, 1, n_mels, frames)."""
        h = self.from_latent(self._condition(z, labels)).view(-1, *self.bottleneck)
        out = self.to_output(self.decoder(h))
        return out[..., : self.input_shape[0], : self.input_shape[1]]

    # The seed architecture has no "withheld" label and no learned prior: z ~ N(0, I).
    withheld_label = None
    prior = None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)


class MeanReconstruction(nn.Module):
    """(B, 1, n_mels, frames) -> its reconstruction through the posterior mean: the one-tensor
    interface model servers (MLflow's pyfunc) expect from an unconditional VAE."""

    def __init__(self, vae: VAE):
        super().__init__()
        if vae.n_classes:
            raise ValueError("MeanReconstruction needs an unconditional VAE")
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae(x, sample=False)[0]
