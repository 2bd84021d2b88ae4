"""Signal pieces of the formant synthesiser (`emovae.data.synthetic`): the glottal source,
formant resonators, band-pass noise filters and fades. Pure functions of their arguments; every
random draw comes from the generator passed in.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import butter, lfilter


def resonator_sos(formants: np.ndarray, bandwidths: np.ndarray, sr: int) -> np.ndarray:
    """Klatt resonators (unity gain at DC) as second-order sections, one per formant."""
    # Resonances at or above Nyquist would alias or blow up at low sample rates.
    formants = np.minimum(formants, 0.45 * sr)
    r = np.exp(-np.pi * bandwidths / sr)
    b1 = 2.0 * r * np.cos(2.0 * np.pi * formants / sr)
    b2 = -(r**2)
    gain = 1.0 - b1 - b2
    sos = np.zeros((len(formants), 6))
    sos[:, 0] = gain
    sos[:, 3] = 1.0
    sos[:, 4] = -b1
    sos[:, 5] = -b2
    return sos


@lru_cache(maxsize=64)
def bandpass_sos(low: float, high: float, sr: int) -> np.ndarray:
    """A second-order Butterworth band-pass as second-order sections, kept below Nyquist."""
    high = min(high, 0.45 * sr)
    low = min(low, 0.5 * high)
    return butter(2, [low, high], btype="band", fs=sr, output="sos")


def fade(n: int, attack: int, release: int) -> np.ndarray:
    """A raised-cosine envelope of `n` samples: `attack` samples in, `release` samples out."""
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release > 0:
        env[n - release :] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return env


def _rosenberg(frac: np.ndarray, open_quotient: float) -> np.ndarray:
    """Rosenberg glottal flow over the cycle phase `frac` in [0, 1): rise, faster fall, closed."""
    rise = open_quotient * 2.0 / 3.0
    fall = open_quotient / 3.0
    flow = np.zeros_like(frac)
    opening = frac < rise
    flow[opening] = 0.5 - 0.5 * np.cos(np.pi * frac[opening] / rise)
    closing = (frac >= rise) & (frac < rise + fall)
    flow[closing] = np.cos(0.5 * np.pi * (frac[closing] - rise) / fall)
    return flow


def glottal_source(
    rng: np.random.Generator,
    f0: np.ndarray,
    sr: int,
    jitter: float,
    shimmer: float,
    creak: float,
    breath: float,
    open_quotient: float,
    tilt: float,
) -> np.ndarray:
    """The voice source along the F0 contour `f0` (Hz per sample): Rosenberg pulses with
    per-cycle jitter and shimmer, creak as period doubling, aspiration noise, then a one-pole
    spectral tilt; unit RMS."""
    # Jitter is drawn per glottal cycle: cycles are counted on the unperturbed phase, which is
    # close enough to the perturbed one and keeps the whole pulse train vectorised.
    cycle = np.floor(np.cumsum(f0 / sr)).astype(np.int64)
    n_cycles = int(cycle[-1]) + 2
    period_factor = 1.0 + rng.normal(0.0, jitter, n_cycles)
    period_factor += creak * 0.12 * (np.arange(n_cycles) % 2)  # period doubling sounds creaky
    phase = np.cumsum(f0 / np.maximum(period_factor[cycle], 0.5) / sr)
    cycle = np.floor(phase).astype(np.int64)
    amplitude = 1.0 + rng.normal(0.0, shimmer, int(cycle[-1]) + 2)
    amplitude *= 1.0 - creak * 0.6 * (np.arange(len(amplitude)) % 2)
    flow = _rosenberg(phase - cycle, open_quotient)
    # Flow derivative = source as radiated from the lips (+6 dB/octave on the flow spectrum).
    voiced = np.diff(flow, prepend=0.0) * amplitude[cycle]
    voiced /= np.std(voiced) + 1e-12
    aspiration = rng.normal(0.0, 1.0, len(f0)) * (0.3 + flow)
    source = lfilter([1.0 - tilt], [1.0, -tilt], voiced + breath * aspiration)
    # Unit level after the tilt, so tilt changes the voice's colour and not the vowel level
    # relative to the consonant noise.
    return source / (np.std(source) + 1e-12)
