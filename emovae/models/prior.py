"""A learned prior over a time-resolved latent: a small conditional diffusion model.

The paper behind this project generates with a diffusion model on the VAE's latent space; this
is that second stage, sized for a CPU. Samples drawn from N(0, I) and decoded give a blur
(no utterance structure) once the latent is time-resolved, because the aggregate posterior is
far from N(0, I); the diffusion model learns the aggregate posterior itself.

- Data: the encoder's posterior means (B, C, T), detached, z-scored per channel with running
  statistics kept in buffers (the latent's scale drifts while the VAE trains, and beta sets it).
- Network: dilated 1-D residual blocks over latent time (receptive field > 120 latent frames),
  the noise level and the emotion added through FiLM; an extra "withheld" emotion row lets one
  network give both the conditional and the unconditional prediction, which classifier-free
  guidance (Ho & Salimans, 2022) mixes at sampling time.
- Objective: v-prediction (Salimans & Ho, 2022) under a cosine schedule in continuous time.
- Sampling: deterministic DDIM (Song et al., 2021) from seeded noise; `convert` starts from a
  real utterance's latent noised to `strength` instead (SDEdit, Meng et al., 2022), which keeps
  its timing and content and lets the requested emotion shape the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

DILATIONS = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)
STATS_MOMENTUM = 0.05
# The cosine schedule is clipped away from t = 0 and 1, where alpha or sigma would vanish.
T_MIN, T_MAX = 0.01, 0.99


def _noise_levels(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha(t), sigma(t) with alpha^2 + sigma^2 = 1, shaped (B, 1, 1) for broadcasting."""
    alpha = torch.cos((T_MIN + (T_MAX - T_MIN) * t) * math.pi / 2)
    sigma = torch.sqrt((1 - alpha**2).clamp_min(0.0))
    return alpha[:, None, None], sigma[:, None, None]


def _draw(
    sample: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """`sample` (torch.rand or torch.randn) from `generator` drawn on the CPU, or from the
    global generator on `device`."""
    if generator is None:
        return sample(shape, device=device)
    return sample(shape, generator=generator).to(device)


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) in [0, 1] -> (B, dim) sinusoidal features (as in Vaswani et al. for positions)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _FilmBlock(nn.Module):
    """(B, C, T) -> (B, C, T): norm, dilated conv, FiLM from the conditioning, conv, skip."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.film = nn.Linear(channels, 2 * channels)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(condition)[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class Denoiser(nn.Module):
    """(z_t (B, C, T), t (B,), labels (B,)) -> v prediction (B, C, T)."""

    def __init__(self, latent_channels: int, channels: int, n_classes: int):
        super().__init__()
        if channels % 8:
            raise ValueError(f"prior_channels: expected a multiple of 8, got {channels}")
        self.channels = channels
        self.inp = nn.Conv1d(latent_channels, channels, 3, padding=1)
        self.time = nn.Sequential(
            nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels)
        )
        # Row n_classes is "emotion withheld"; an unconditional prior has only that row.
        self.emotion = nn.Embedding(n_classes + 1, channels)
        self.blocks = nn.ModuleList(_FilmBlock(channels, d) for d in DILATIONS)
        self.out = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv1d(channels, latent_channels, 3, padding=1)
        )
        # Zero output at start: the first prediction is v = 0, a stable starting point.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        condition = self.time(_time_embedding(t, self.channels)) + self.emotion(labels)
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, condition)
        return self.out(h)


class LatentDiffusionPrior(nn.Module):
    """p(z | emotion) for latents (B, latent_channels, T); see the module docstring."""

    def __init__(
        self,
        latent_channels: int,
        channels: int = 128,
        n_classes: int = 0,
        label_dropout: float = 0.0,
        sample_steps: int = 40,
        guidance: float = 1.0,
        eta: float = 0.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.n_classes = n_classes
        self.label_dropout = label_dropout
        self.sample_steps = sample_steps
        self.guidance = guidance
        self.eta = eta
        self.temperature = temperature
        self.denoiser = Denoiser(latent_channels, channels, n_classes)
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))
        self.register_buffer("stats_seen", torch.zeros((), dtype=torch.bool))

    @property
    def withheld(self) -> int:
        return self.n_classes

    def _labels(self, labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if labels is None:
            return torch.full((n,), self.withheld, dtype=torch.int64, device=device)
        return labels.to(device)

    @torch.no_grad()
    def _track_statistics(self, z: torch.Tensor) -> None:
        mean = z.mean(dim=(0, 2))
        std = z.std(dim=(0, 2)).clamp_min(1e-3)
        if not bool(self.stats_seen):
            self.latent_mean.copy_(mean)
            self.latent_std.copy_(std)
            self.stats_seen.fill_(True)
        else:
            self.latent_mean.lerp_(mean, STATS_MOMENTUM)
            self.latent_std.lerp_(std, STATS_MOMENTUM)

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean[:, None]) / self.latent_std[:, None]

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std[:, None] + self.latent_mean[:, None]

    def loss(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None,
        generator: torch.Generator | None = None,
        encoder_weight: float = 0.0,
    ) -> torch.Tensor:
        """Diffusion loss on latents `z`. Its gradient reaches `z` scaled by `encoder_weight`
        (0: detached, the prior follows the encoder without shaping it); the prior's own
        gradient is unscaled. In training mode it also updates the latent statistics. Label
        dropout, noise levels and noise are drawn from `generator` (on the CPU) when one is
        given, else from torch's global generator on z's device (as the VAE's own sampling is)."""
        if self.training:
            self._track_statistics(z.detach())
        z = z.detach() + encoder_weight * (z - z.detach()) if encoder_weight else z.detach()
        x0 = self._normalise(z)
        n = x0.shape[0]
        labels = self._labels(labels, n, x0.device)
        if self.training and self.label_dropout > 0:
            dropped = _draw(torch.rand, (n,), generator, x0.device) < self.label_dropout
            labels = labels.masked_fill(dropped, self.withheld)
        t = _draw(torch.rand, (n,), generator, x0.device)
        alpha, sigma = _noise_levels(t)
        noise = _draw(torch.randn, x0.shape, generator, x0.device)
        target = alpha * noise - sigma * x0
        return F.mse_loss(self.denoiser(alpha * x0 + sigma * noise, t, labels), target)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        conditional = self.denoiser(x, t, labels)
        if self.guidance == 1.0 or self.n_classes == 0:
            return conditional
        unconditional = self.denoiser(x, t, torch.full_like(labels, self.withheld))
        return unconditional + self.guidance * (conditional - unconditional)

    @torch.no_grad()
    def _ddim(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        start: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoise `x` from time `start` to 0. With `eta` > 0 each step swaps a share of the
        predicted noise for fresh noise drawn on the CPU from `generator` (Song et al., 2021,
        eq. 16, alpha-bar = alpha^2; eta 1 is ancestral sampling, as in DDPM)."""
        times = torch.linspace(start, 0.0, self.sample_steps + 1, device=x.device)
        x0 = x
        for t_now, t_next in zip(times[:-1], times[1:], strict=True):
            t = t_now.expand(x.shape[0])
            alpha, sigma = _noise_levels(t)
            v = self._velocity(x, t, labels)
            x0 = alpha * x - sigma * v
            noise = sigma * x + alpha * v
            alpha_next, sigma_next = _noise_levels(t_next.expand(x.shape[0]))
            if self.eta == 0:
                x = alpha_next * x0 + sigma_next * noise
                continue
            # The fresh noise's scale (sigma_t of the paper's eq. 16).
            fresh = (
                self.eta * sigma_next / sigma * (1 - (alpha / alpha_next) ** 2).clamp_min(0).sqrt()
            )
            fresh_noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = (
                alpha_next * x0
                + (sigma_next**2 - fresh**2).clamp_min(0).sqrt() * noise
                + fresh * fresh_noise
            )
        return x0

    @torch.no_grad()
    def sample(
        self,
        n: int,
        length: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`n` latents (n, C, length) for the given emotions (None: emotion withheld). The
        starting noise is drawn on the CPU, so a seeded generator gives the same latents on
        any device. `temperature` < 1 shrinks that noise towards the prior's modes
        (reduced-temperature sampling, as in Kingma & Dhariwal's Glow)."""
        device = self.latent_mean.device
        shape = (n, self.latent_mean.shape[0], length)
        x = self.temperature * torch.randn(shape, generator=generator).to(device)
        return self._denormalise(self._ddim(x, self._labels(labels, n, device), 1.0, generator))

    @torch.no_grad()
    def convert(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        strength: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latents of real utterances `z` re-generated towards `labels`: noised to time
        `strength` in (0, 1] and denoised with the requested emotion (SDEdit)."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength: expected a value in (0, 1], got {strength}")
        x0 = self._normalise(z)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        alpha, sigma = _noise_levels(torch.full((x0.shape[0],), strength, device=x0.device))
        x = alpha * x0 + sigma * noise
        return self._denormalise(self._ddim(x, labels.to(x0.device), strength, generator))
