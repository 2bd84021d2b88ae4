"""The VAE architectures and their priors, built from a TrainConfig (`build_model`).

Both architectures share one interface: `model(x, labels, sample) -> (recon, mu, logvar)`,
`encode`, `decode(z, labels)`, `sample_latents(n, labels, generator)`, `sample`, `prior_loss`
and `withheld_label` (the label index meaning "emotion withheld", or None). What they do alike
(the forward pass, prior sampling, the prior's loss) is written once, in `seed.LatentVAE`.
"""

from __future__ import annotations

from emovae.config import FeatureConfig, TrainConfig
from emovae.features import n_frames
from emovae.models.prior import LatentDiffusionPrior
from emovae.models.seed import LOGVAR_LIMIT, VAE, MeanReconstruction
from emovae.models.temporal import TemporalVAE

SpeechVAE = VAE | TemporalVAE

__all__ = [
    "LOGVAR_LIMIT",
    "VAE",
    "LatentDiffusionPrior",
    "MeanReconstruction",
    "SpeechVAE",
    "TemporalVAE",
    "build_model",
]


def build_model(train: TrainConfig, features: FeatureConfig, n_classes: int) -> SpeechVAE:
    """The architecture `train.arch` for these features; conditional on `n_classes` emotions
    when `train.conditional`."""
    classes = n_classes if train.conditional else 0
    if train.arch == "seed":
        return VAE(
            n_mels=features.n_mels,
            n_frames=n_frames(features),
            latent_dim=train.latent_dim,
            base_channels=train.base_channels,
            n_classes=classes,
        )
    prior = None
    if train.prior == "diffusion":
        prior = LatentDiffusionPrior(
            train.latent_dim,
            channels=train.prior_channels,
            n_classes=classes,
            label_dropout=train.label_dropout if classes else 0.0,
            sample_steps=train.prior_steps,
            guidance=train.guidance,
            eta=train.prior_eta,
        )
    return TemporalVAE(
        n_mels=features.n_mels,
        n_frames=n_frames(features),
        latent_dim=train.latent_dim,
        hidden_channels=train.hidden_channels,
        time_downsample=train.time_downsample,
        n_classes=classes,
        prior=prior,
    )
