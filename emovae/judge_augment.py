"""Training-time augmentation of the emotion judge's clips (`emovae.judge`): a Gaussian blur of
random width on a share of them, then SpecAugment-style frequency and time masks.

Every draw comes from the caller's generator, so a judge trains the same way from one seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from emovae.judge import JudgeConfig


def spec_augment(
    x: torch.Tensor, freq_mask: float, time_mask: float, generator: torch.Generator
) -> torch.Tensor:
    """One random frequency band and one time stretch per clip set to 0, the z-scored mean."""
    n, _, n_mels, n_frames = x.shape

    def mask(size: int, share: float) -> torch.Tensor:
        widest = int(size * share)
        if widest < 1:
            return torch.zeros(n, size, dtype=torch.bool)
        width = torch.randint(0, widest + 1, (n, 1), generator=generator)
        start = (torch.rand(n, 1, generator=generator) * (size - width + 1)).long()
        index = torch.arange(size)[None, :]
        return (index >= start) & (index < start + width)

    masked = mask(n_mels, freq_mask)[:, None, :, None] | mask(n_frames, time_mask)[:, None, None, :]
    return x.masked_fill(masked.to(x.device), 0.0)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / max(sigma, 1e-3)) ** 2)
    return kernel / kernel.sum()


def blur(x: torch.Tensor, sigma_freq: float, sigma_time: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, n_mels, frames), edges replicated."""
    for sigma, dim in ((sigma_freq, 2), (sigma_time, 3)):
        if sigma < 0.3:  # a narrower Gaussian leaves the input practically unchanged
            continue
        kernel = _gaussian_kernel(sigma)
        radius = len(kernel) // 2
        shape = (1, 1, len(kernel), 1) if dim == 2 else (1, 1, 1, len(kernel))
        pad = (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0)
        x = F.conv2d(F.pad(x, pad, mode="replicate"), kernel.view(shape).to(x))
    return x


def augment(x: torch.Tensor, config: JudgeConfig, generator: torch.Generator) -> torch.Tensor:
    """A training batch (B, 1, n_mels, frames) blurred and masked as `config` says."""
    if config.blur_prob > 0:
        # One blur width per batch keeps this to two small convolutions.
        chosen = torch.rand(x.shape[0], generator=generator) < config.blur_prob
        if chosen.any():
            sigma_freq, sigma_time = torch.rand(2, generator=generator).tolist()
            blurred = blur(x[chosen], sigma_freq * config.blur_freq, sigma_time * config.blur_time)
            x = x.clone()
            x[chosen] = blurred
    return spec_augment(x, config.freq_mask, config.time_mask, generator)
