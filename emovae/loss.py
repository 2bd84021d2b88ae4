"""VAE loss: reconstruction MSE + spectral_weight x spectral + beta x KL, each term reported.

The reconstruction term that trains can be L1 instead (`recon_loss: l1`, a Laplace rather than
Gaussian likelihood: small errors weigh more than under the MSE); the reported "recon" is the
MSE either way, so a sweep's `val_recon` compares every option on one scale. On EmoDB, L1 did
not make the exported audio better (benchmarks/RESULTS_quality.md, "An L1 reconstruction term").
`contrast_weight` adds the local-contrast term (`local_contrast_loss`) to the sum; it is not
reported on its own, and "recon" stays the MSE.

KL reduction (defined once, here): summed over latent dimensions, averaged over the batch.
The reference code averaged over latent dimensions instead, so its beta shrank as latent_dim
grew; its beta maps to ours as beta_ours = beta_reference / latent_dim (the reference's 0.1 at
latent_dim 32 is 0.003125 here). With the sum, beta means the same thing at every latent_dim,
so a sweep over both compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from emovae.config import TrainConfig, check_choice

TERMS = ("loss", "recon", "spectral", "kl")
# A latent unit whose mean KL over a split exceeds this carries information about the input;
# below it the encoder ignores the unit (posterior collapse). The threshold of the sweeps'
# `val_active_units` (sweep.constraints: {val_active_units: ">= 4"} guards against collapse).
ACTIVE_UNIT_NATS = 0.01


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over every latent dimension of a clip (a vector,
    or channels x latent frames for the temporal architecture), mean over batch.

    Closed form from Kingma & Welling (2014), appendix B:
    -0.5 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(dim=1)).mean()


def kl_per_unit(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean KL(N(mu, sigma^2) || N(0, 1)) of each latent unit over the batch, in nats: (B, units)
    or (B, units, frames) -> (units,). The per-element terms are those `kl_divergence` sums. A
    temporal model's unit is a channel, its KL averaged over the latent frames, so a unit's
    figure does not grow with the clip's length."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    return kl.reshape(kl.shape[0], kl.shape[1], -1).mean(dim=(0, 2))


def spectral_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the frequency profile (mean over time) + MSE of the temporal envelope (mean over
    frequency), for (batch, 1, freq, time) tensors. The reference averaged over the channel axis
    for one term, which is the identity; these reduce over the real frequency and time axes."""
    frequency_profile = F.mse_loss(recon.mean(dim=-1), target.mean(dim=-1))
    temporal_envelope = F.mse_loss(recon.mean(dim=-2), target.mean(dim=-2))
    return frequency_profile + temporal_envelope


def local_contrast_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the steps between neighbouring mel bins plus that of the steps between frames.

    A harmonic's peak and valley is a large step along frequency that the plain MSE, averaging
    over plausible outputs, flattens; this term pays for the flattening directly."""
    return sum(F.mse_loss(recon.diff(dim=axis), target.diff(dim=axis)) for axis in (-2, -1))


@dataclass(frozen=True)
class LossWeights:
    """How `vae_loss` sums its terms: the TrainConfig fields of that name, beta as of an epoch
    (KL warm-up changes it while training; validation uses the configured one)."""

    beta: float
    spectral_weight: float = 0.5
    recon_loss: str = "mse"
    contrast_weight: float = 0.0

    def __post_init__(self) -> None:
        check_choice(self.recon_loss, "recon_loss", "recon_loss")

    @classmethod
    def of(cls, train: TrainConfig, beta: float | None = None) -> LossWeights:
        return cls(
            train.beta if beta is None else beta,
            train.spectral_weight,
            train.recon_loss,
            train.contrast_weight,
        )


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """Named terms (TERMS); 'loss' is their weighted sum and the only one to backpropagate.
    With `recon_loss` "l1" the sum holds the L1 error where it would hold "recon" (the MSE);
    with a `contrast_weight` it also holds that multiple of `local_contrast_loss`."""
    terms = {
        "recon": F.mse_loss(recon, target),
        "spectral": spectral_loss(recon, target),
        "kl": kl_divergence(mu, logvar),
    }
    trained_recon = terms["recon"] if weights.recon_loss == "mse" else F.l1_loss(recon, target)
    loss = trained_recon + weights.spectral_weight * terms["spectral"] + weights.beta * terms["kl"]
    if weights.contrast_weight > 0:
        loss = loss + weights.contrast_weight * local_contrast_loss(recon, target)
    terms["loss"] = loss
    return terms
