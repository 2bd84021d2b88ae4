"""Distances between spectrograms: log-spectral distance, spectral convergence and spectral
SNR, for the evaluation of a VAE's log-mels (`emovae.evaluate`) and of phase reconstruction
(`emovae.griffinlim`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from emovae.config import FeatureConfig
from emovae.features import mel_power_from_log

# 10 log10(x) = DB_PER_LN * ln(x): the features store natural-log power.
DB_PER_LN = 10.0 / math.log(10.0)


def as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A numpy float64 copy (or view) of an array or a tensor on any device."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def per_clip(x: np.ndarray) -> np.ndarray:
    """(N, [1,] n_mels, frames) or (n_mels, frames) -> (N, n_mels, frames)."""
    if x.ndim == 4:
        x = x[:, 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected spectrograms of shape (N, [1,] n_mels, frames), got {x.shape}")
    return x


def log_spectral_distance(
    reference_db: np.ndarray | torch.Tensor, reconstruction_db: np.ndarray | torch.Tensor
) -> float:
    """LSD in dB: per frame the RMS over mel bins of the dB difference, averaged over frames and
    clips. Inputs are dB spectrograms (N, [1,] n_mels, frames); an offset of k dB gives k."""
    ref, rec = per_clip(as_float64(reference_db)), per_clip(as_float64(reconstruction_db))
    return float(np.sqrt(((ref - rec) ** 2).mean(axis=1)).mean())


def spectral_convergence_per_item(
    reference_mag: torch.Tensor, estimate_mag: torch.Tensor
) -> torch.Tensor:
    """|| |S_ref| - |S_est| ||_F / || |S_ref| ||_F per batch item: (B, ...) x 2 -> (B,), on the
    inputs' device; complex inputs are reduced to magnitudes first.

    0 is a perfect match, also of a silent item by a silent one; a silent reference with any
    other estimate scores infinity.
    """
    if reference_mag.shape != estimate_mag.shape:
        raise ValueError(
            f"shapes differ: {tuple(reference_mag.shape)} vs {tuple(estimate_mag.shape)}"
        )
    reference, estimate = reference_mag.abs().flatten(1), estimate_mag.abs().flatten(1)
    error = torch.linalg.vector_norm(reference - estimate, dim=1)
    ratio = error / torch.linalg.vector_norm(reference, dim=1)
    # Silent vs silent is 0 / 0: an exact match, which must not turn a mean over clips to NaN.
    return torch.where(error == 0, torch.zeros_like(ratio), ratio)


def spectral_convergence(
    reference_magnitude: np.ndarray | torch.Tensor,
    reconstruction_magnitude: np.ndarray | torch.Tensor,
) -> float:
    """`spectral_convergence_per_item` of magnitude spectrograms (N, [1,] n_mels, frames),
    averaged over clips, in float64.

    0 is perfect; 1 is what an all-zero reconstruction scores. A silent reference clip (norm 0)
    scores 0 if the reconstruction is silent too, else infinity.
    """
    ref = torch.tensor(per_clip(as_float64(reference_magnitude)))
    rec = torch.tensor(per_clip(as_float64(reconstruction_magnitude)))
    return float(spectral_convergence_per_item(ref, rec).mean())


def spectral_snr_db(
    reference_power: np.ndarray | torch.Tensor, reconstruction_power: np.ndarray | torch.Tensor
) -> float:
    """Spectral SNR in dB on mel power P (our definition; the spec leaves it open):

        SNR_clip = 10 log10( sum_{f,t} P_ref^2 / sum_{f,t} (P_ref - P_rec)^2 )

    per clip, then the mean of the clips' dB values. P is power, not magnitude: on magnitudes
    this would only restate spectral convergence (-20 log10 SC); on power it weighs errors in
    loud time-frequency cells, which dominate what one hears. An exact reconstruction of a clip
    gives +inf (and so does the mean); a reconstruction that is all zeros gives 0 dB.
    """
    ref = per_clip(as_float64(reference_power))
    rec = per_clip(as_float64(reconstruction_power))
    signal = (ref**2).sum(axis=(1, 2))
    noise = ((ref - rec) ** 2).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(noise == 0, np.inf, 10.0 * np.log10(signal / noise))
    return float(snr.mean())


def log_mel_to_db(log_mel: np.ndarray | torch.Tensor) -> np.ndarray:
    """Natural-log mel power `log(mel + floor)` -> dB, `10 log10(mel + floor)`."""
    return as_float64(log_mel) * DB_PER_LN


def spectral_metrics(
    reference_log_mel: np.ndarray | torch.Tensor,
    reconstruction_log_mel: np.ndarray | torch.Tensor,
    features: FeatureConfig,
) -> dict[str, float]:
    """LSD (dB), spectral convergence and spectral SNR (dB) between de-normalised log-mels.

    LSD compares the features' log in dB (of power: a magnitude log-mel counts twice), so the
    floor bounds how much silent bins count; convergence uses magnitudes sqrt(mel power) and SNR
    mel power, with an additive floor removed (`features.mel_power_from_log`).
    """
    ref, rec = as_float64(reference_log_mel), as_float64(reconstruction_log_mel)
    ref_power = mel_power_from_log(ref, features)
    rec_power = mel_power_from_log(rec, features)
    to_power_db = 2.0 / features.power
    return {
        "lsd_db": log_spectral_distance(
            to_power_db * log_mel_to_db(ref), to_power_db * log_mel_to_db(rec)
        ),
        "spectral_convergence": spectral_convergence(np.sqrt(ref_power), np.sqrt(rec_power)),
        "snr_db": spectral_snr_db(ref_power, rec_power),
    }
