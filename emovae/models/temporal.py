"""A VAE with a time-resolved latent: one latent vector per 2^time_downsample frames.

The seed architecture squeezes a whole utterance into one vector and decodes smooth blobs
without harmonics (benchmarks/RESULTS_quality.md). Here the mel bins are the channels of 1-D
convolutions over time, so the encoder keeps the utterance's timing and the decoder only has
to draw each short stretch: reconstructions keep harmonics and onsets. A latent shaped like
this has no useful N(0, I) prior, so sampling goes through a learned prior
(`emovae.models.prior.LatentDiffusionPrior`) when one is configured.

Emotion conditioning, when on, enters the decoder only, with an extra "withheld" row that
training uses for a share of the steps (label dropout). The encoder never sees the label, so
what a reconstruction with the label withheld keeps of the emotion is what the latent carries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emovae.models.prior import LatentDiffusionPrior
from emovae.models.seed import LOGVAR_LIMIT, LatentVAE


class _ResidualBlock1d(nn.Module):
    """(B, C, T) -> (B, C, T): BN, LeakyReLU, conv k5 twice, around an identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.BatchNorm1d(channels),
            nn.LeakyReLU(0.2),
            nn.Conv1d(channels, channels, 5, padding=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TemporalVAE(LatentVAE):
    """(B, 1, n_mels, frames) <-> latent (B, latent_dim, ceil(frames / 2^time_downsample))."""

    def __init__(
        self,
        n_mels: int,
        n_frames: int,
        latent_dim: int = 16,
        hidden_channels: int = 256,
        time_downsample: int = 1,
        n_classes: int = 0,
        prior: LatentDiffusionPrior | None = None,
    ):
        super().__init__()
        self.input_shape = (n_mels, n_frames)
        self.latent_dim = latent_dim
        self.n_classes = n_classes
        self.stride = 2**time_downsample
        self.latent_frames = -(-n_frames // self.stride)
        c = hidden_channels
        down: list[nn.Module] = [nn.Conv1d(n_mels, c, 5, padding=2), _ResidualBlock1d(c)]
        for _ in range(time_downsample):
            down += [nn.Conv1d(c, c, 4, stride=2, padding=1), _ResidualBlock1d(c)]
        self.encoder = nn.Sequential(*down, nn.BatchNorm1d(c), nn.LeakyReLU(0.2))
        self.to_posterior = nn.Conv1d(c, 2 * latent_dim, 3, padding=1)
        self.from_latent = nn.Conv1d(latent_dim, c, 3, padding=1)
        # Row n_classes is "emotion withheld" (label dropout, and decoding without a label).
        self.emotion = nn.Embedding(n_classes + 1, c) if n_classes else None
        up: list[nn.Module] = [_ResidualBlock1d(c)]
        for _ in range(time_downsample):
            up += [nn.ConvTranspose1d(c, c, 4, stride=2, padding=1), _ResidualBlock1d(c)]
        self.decoder = nn.Sequential(*up, nn.BatchNorm1d(c), nn.LeakyReLU(0.2))
        self.to_output = nn.Conv1d(c, n_mels, 5, padding=2)
        self.prior = prior

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim, self.latent_frames)

    @property
    def withheld_label(self) -> int | None:
        """The label index that means "emotion withheld" (None: unconditional model)."""
        return self.n_classes if self.n_classes else None

    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, n_mels, frames) -> mu, logvar, each (B, latent_dim, latent_frames). The
        label is not used: the encoder is unconditional by design (see the module docstring)."""
        pad = self.latent_frames * self.stride - x.shape[-1]
        h = self.encoder(F.pad(x[:, 0], (0, pad)))
        mu, logvar = self.to_posterior(h).chunk(2, dim=1)
        return mu, LOGVAR_LIMIT * torch.tanh(logvar / LOGVAR_LIMIT)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent_dim, latent_frames) -> (B, 1, n_mels, frames); labels None = withheld."""
        h = self.from_latent(z)
        if self.emotion is not None:
            if labels is None:
                labels = torch.full((z.shape[0],), self.n_classes, device=z.device)
            h = h + self.emotion(labels)[:, :, None]
        out = self.to_output(self.decoder(h))
        return out[:, None, :, : self.input_shape[1]]
