"""Mel spectrogram -> waveform: mel filterbank inversion and batched fast Griffin-Lim in torch.

The VAE emits mel *power* spectrograms computed like `librosa.feature.melspectrogram` (Slaney
filters, power 2, `center=True`, zero padding). Turning them into audio takes two steps:

1. `mel_to_stft_magnitude`: undo the mel filterbank. librosa solves the non-negative least
   squares problem with L-BFGS-B per block, which takes 0.7-2 s per 2 s clip and often stops at
   its starting point, the clipped pseudo-inverse (8 of 10 EmoDB clips within 1e-4), because
   its objective is scaled down by the problem size. We start from the same point and run a few
   accelerated projected-gradient (FISTA) steps, batched, using the filterbank's sparsity; the
   result reproduces the mel spectrogram 30-100x more closely and the true STFT better.
2. `griffin_lim`: the fast Griffin-Lim of Perraudin et al. (2013) with librosa's update rule
   (momentum 0.99 by default), batched over clips, on the input's device.

On CPU the Griffin-Lim loop is memory-bound, so it runs on a few clips at a time with buffers
that are allocated once and reused (fresh 70 MB tensors cost page faults on every iteration),
and the stft/istft pair is written out as rfft / irfft plus an overlap-add that stays in the
zero-padded frame domain. See benchmarks/RESULTS_library.md for the measurements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import librosa
import numpy as np
import torch

# Per batch item as a tensor, the way a phase-reconstruction test reads it; the implementation
# (with the evaluation's mean over clips beside it) is emovae.spectral's.
from emovae.spectral import spectral_convergence_per_item as spectral_convergence

__all__ = [
    "griffin_lim",
    "mel_to_audio",
    "mel_to_stft_magnitude",
    "spectral_convergence",
]

# Default FISTA steps after the pseudo-inverse start: 30 get within 1 % of the converged
# end-to-end error on EmoDB speech while costing about as much as 3 Griffin-Lim iterations.
NNLS_ITERATIONS = 30

# Working-set budget for one CPU chunk of clips. Measured on a 2-core EPYC (1 MiB L2 per core,
# 32 MiB shared L3): 1-2 clips of 173 frames per chunk were fastest, 100 at once 2.5x slower.
_CPU_CHUNK_BYTES = 8 * 1024 * 1024

# Columns (clip frames) per NNLS block on CPU: 1024 was fastest of 256..17300 for 100 clips,
# as the five (n_freqs, columns) buffers then stay in cache.
_NNLS_CPU_COLUMNS = 1024

_State = TypeVar("_State")

# librosa divides by |x| + tiny(float32) when it normalises the phase; same here.
_TINY = float(np.finfo(np.float32).tiny)


def _for_each_chunk(
    fn: Callable[[int, _State], None],
    starts: list[int],
    new_state: Callable[[], _State],
    device: torch.device,
) -> None:
    """fn(start, state) for every chunk start; state (scratch buffers) is reused within a worker.

    On CPU the chunks go to as many Python threads as torch has intra-op threads (torch and
    numpy release the GIL), each running single-threaded ops: the intra-op thread count is 1
    during the call and restored afterwards. Chunks of a few clips are too small for intra-op
    threads to pay off (1.3x from 2 threads on the 2-core test machine), and when other
    processes kept that machine busy (load ~10) OpenMP's spin-waiting barriers made 2 intra-op
    threads 12x slower than 1, while independent workers degrade gracefully.
    """
    if device.type != "cpu":
        state = new_state()
        for start in starts:
            fn(start, state)
        return
    threads = torch.get_num_threads()
    workers = min(threads, len(starts))

    def work(index: int) -> None:
        state = new_state()
        for start in starts[index::workers]:
            fn(start, state)

    torch.set_num_threads(1)
    try:
        if workers <= 1:
            work(0)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                # list() re-raises the first worker exception here.
                list(pool.map(work, range(workers)))
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# mel power -> linear magnitude


@functools.lru_cache(maxsize=16)
def _mel_inverse_parts(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The float64 pieces that NNLS needs for one filterbank, computed once per setting.

    Returns (filterbank (M, F), its pseudo-inverse (F, M), slot_rows (K, F), slot_weights (K, F),
    Lipschitz constant). Column f of the filterbank has at most K non-zeros (2 for triangular
    filters); slot k lists the row and weight of the k-th one, padded with weight 0, so that
    filterbank.T @ r is K gathers instead of a dense (F, M) product.
    """
    basis = librosa.filters.mel(
        sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64
    )
    filterbank = torch.from_numpy(basis)
    pinv = torch.linalg.pinv(filterbank)
    nonzero = filterbank != 0
    slots = max(int(nonzero.sum(dim=0).max()), 1)
    n_freqs = filterbank.shape[1]
    slot_rows = torch.zeros(slots, n_freqs, dtype=torch.int64)
    slot_weights = torch.zeros(slots, n_freqs, dtype=torch.float64)
    for f in range(n_freqs):
        rows = torch.nonzero(nonzero[:, f]).flatten()
        slot_rows[: len(rows), f] = rows
        slot_weights[: len(rows), f] = filterbank[rows, f]
    lipschitz = float(torch.linalg.matrix_norm(filterbank, ord=2) ** 2)
    return filterbank, pinv, slot_rows, slot_weights, lipschitz


def _nnls_fista(
    target: torch.Tensor,
    filterbank_sparse: torch.Tensor,
    pinv: torch.Tensor,
    slot_rows: torch.Tensor,
    slot_weights: torch.Tensor,
    lipschitz: float,
    n_iter: int,
) -> torch.Tensor:
    """min ||A x - target||^2 s.t. x >= 0 for a (M, N) target -> (F, N), from clip(pinv @ target)."""
    x = torch.mm(pinv, target).clamp_(min=0.0)
    if n_iter <= 0:
        return x
    step = 1.0 / lipschitz
    y = x.clone()
    x_new = torch.empty_like(x)
    grad = torch.empty_like(x)
    gathered = torch.empty_like(x)
    t = 1.0
    for _ in range(n_iter):
        residual = torch.sparse.mm(filterbank_sparse, y).sub_(target)
        # filterbank.T @ residual, one gather per non-zero slot of each column.
        torch.index_select(residual, 0, slot_rows[0], out=grad)
        grad.mul_(slot_weights[0])
        for k in range(1, slot_rows.shape[0]):
            torch.index_select(residual, 0, slot_rows[k], out=gathered)
            grad.addcmul_(gathered, slot_weights[k])
        torch.add(y, grad, alpha=-step, out=x_new).clamp_(min=0.0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        # Nesterov extrapolation y = x_new + beta * (x_new - x), in two passes.
        torch.mul(x, -beta, out=y).add_(x_new, alpha=1.0 + beta)
        x, x_new = x_new, x
        t = t_next
    return x


def mel_to_stft_magnitude(
    mel_power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    *,
    nnls_iter: int = NNLS_ITERATIONS,
    power: float = 2.0,
) -> torch.Tensor:
    """Invert librosa's mel filterbank: (B, n_mels, T) mel power -> (B, 1 + n_fft//2, T) magnitude.

    `power` is the exponent the mel was computed with: 2 (power, the default) or 1 (a mel of
    magnitudes, as HiFi-GAN's features); the NNLS then recovers |S|^power.

    The filterbank is `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
    fmax=fmax)`, as `librosa.feature.melspectrogram` uses by default. The power spectrum is the
    non-negative least-squares solution started, like librosa's, from the clipped pseudo-inverse
    and refined by `nnls_iter` FISTA steps (0 returns the start, which is also what
    `librosa.feature.inverse.mel_to_stft` returns for most clips); the magnitude is its square
    root. Runs in float32 on the input's device; a 2-D (n_mels, T) input gives a 2-D result.
    """
    if mel_power.ndim not in (2, 3):
        raise ValueError(f"mel_power must be (B, n_mels, T) or (n_mels, T), got {mel_power.shape}")
    if mel_power.ndim == 2:
        return mel_to_stft_magnitude(
            mel_power[None], sample_rate, n_fft, fmin, fmax, nnls_iter=nnls_iter, power=power
        )[0]
    power_exponent = float(power)
    batch, n_mels, frames = mel_power.shape
    device = mel_power.device
    filterbank, pinv, slot_rows, slot_weights, lipschitz = _mel_inverse_parts(
        int(sample_rate),
        int(n_fft),
        int(n_mels),
        float(fmin),
        None if fmax is None else float(fmax),
    )
    n_freqs = filterbank.shape[1]
    filterbank_sparse = filterbank.to(device=device, dtype=torch.float32).to_sparse()
    pinv = pinv.to(device=device, dtype=torch.float32)
    slot_rows = slot_rows.to(device)
    slot_weights = slot_weights.to(device=device, dtype=torch.float32)[:, :, None]

    # Frames are independent problems: lay them side by side as columns of one matrix.
    target = mel_power.detach().to(dtype=torch.float32).permute(1, 0, 2).reshape(n_mels, -1)
    columns = target.shape[1]
    block = max(columns, 1)
    if device.type == "cpu":
        block = max(1, min(_NNLS_CPU_COLUMNS, math.ceil(columns / torch.get_num_threads())))
    solved = torch.empty(n_freqs, columns, dtype=torch.float32, device=device)

    def run(start: int, _: None) -> None:
        stop = min(start + block, columns)
        solved[:, start:stop] = _nnls_fista(
            target[:, start:stop].contiguous(),
            filterbank_sparse,
            pinv,
            slot_rows,
            slot_weights,
            lipschitz,
            nnls_iter,
        )

    _for_each_chunk(run, list(range(0, columns, block)), lambda: None, device)
    magnitude = solved.sqrt_() if power_exponent == 2.0 else solved.pow_(1.0 / power_exponent)
    return magnitude.reshape(n_freqs, batch, frames).permute(1, 0, 2).contiguous()


# --------------------------------------------------------------------------------------------
# Griffin-Lim


def _overlap_add(frames: torch.Tensor, signal: torch.Tensor, hop_length: int) -> None:
    """Overlap-add (b, T, n_fft) frames into a (b, T + R - 1, hop) buffer, R = ceil(n_fft / hop).

    Seen as hop-sized segments, frame t's segment r lands on buffer segment t + r, so the whole
    overlap-add is R strided adds instead of a scatter.
    """
    n_frames, n_fft = frames.shape[1], frames.shape[2]
    signal[:, n_frames:].zero_()
    for r in range(signal.shape[1] - n_frames + 1):
        lo = r * hop_length
        width = min(hop_length, n_fft - lo)
        if r == 0:  # width == hop_length here because hop_length <= n_fft
            signal[:, :n_frames].copy_(frames[:, :, :width])
        else:
            signal[:, r : r + n_frames, :width].add_(frames[:, :, lo : lo + width])


def _synthesis_gain(
    window: torch.Tensor, n_frames: int, hop_length: int, length: int
) -> torch.Tensor:
    """(T + R - 1, hop) factors that turn the overlap-added frames into stft(istft(.)) input.

    torch.istft / librosa.istft divide by the overlap-added squared window, drop n_fft // 2
    samples at each end and cut or zero-pad to `length`; the following centred stft pads
    n_fft // 2 zeros at each end again. In the padded domain that is: divide by the envelope
    on [n_fft // 2, n_fft // 2 + length), zero elsewhere. One multiply per iteration.
    """
    n_fft = window.shape[0]
    segments = n_frames + math.ceil(n_fft / hop_length) - 1
    envelope = torch.empty(1, segments, hop_length, dtype=torch.float64, device=window.device)
    squared = (window.to(torch.float64) ** 2).expand(1, n_frames, n_fft)
    _overlap_add(squared, envelope, hop_length)
    envelope = envelope.flatten()
    keep = torch.zeros_like(envelope)
    keep[n_fft // 2 : n_fft // 2 + length] = 1.0
    # Where the envelope vanishes istft cannot divide; librosa leaves those samples as they are,
    # but with a centred window they all lie in the dropped padding anyway.
    usable = envelope > 1e-11
    gain = torch.where(usable, keep / torch.where(usable, envelope, 1.0), 0.0)
    return gain.to(torch.float32).reshape(segments, hop_length)


def _abs_into(spectrum: torch.Tensor, out: torch.Tensor) -> None:
    if spectrum.device.type == "cpu":
        # torch's complex abs is a scalar hypot loop on CPU; numpy's is vectorised (~5x faster
        # measured, and this is the largest cost after the FFTs). Both views share memory.
        np.abs(spectrum.numpy(), out=out.numpy())
    else:
        torch.abs(spectrum, out=out)


def _griffin_lim_chunk(
    target: torch.Tensor,
    phase: torch.Tensor,
    window: torch.Tensor,
    gain: torch.Tensor,
    n_iter: int,
    momentum: float,
    buffers: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Fast Griffin-Lim on (b, T, F) magnitudes; returns the (b, T + R - 1, hop) padded signal.

    Same update as librosa.griffinlim: rebuilt = stft(istft(angles)); angles = rebuilt -
    momentum / (1 + momentum) * previous rebuilt; angles *= target / (|angles| + tiny).
    """
    b, n_frames, _ = target.shape
    n_fft = window.shape[0]
    hop_length = gain.shape[1]
    frames = buffers["frames"][:b]
    signal = buffers["signal"][:b]
    angles = buffers["angles"][:b]
    rebuilt = buffers["rebuilt"][:b]
    previous = buffers["previous"][:b]
    scale = buffers["scale"][:b]
    buffer_len = signal.shape[1] * hop_length
    # Frame t of the padded signal starts at sample t * hop: a strided view, no copy.
    framed = signal.as_strided((b, n_frames, n_fft), (buffer_len, hop_length, 1))

    torch.polar(target, phase, out=angles)
    blend = momentum / (1.0 + momentum)
    for i in range(n_iter):
        torch.fft.irfft(angles, n=n_fft, dim=-1, out=frames)
        frames.mul_(window)
        _overlap_add(frames, signal, hop_length)
        signal.mul_(gain)
        torch.mul(framed, window, out=frames)
        torch.fft.rfft(frames, dim=-1, out=rebuilt)
        if i == 0:
            angles.copy_(rebuilt)
        else:
            torch.sub(rebuilt, previous, alpha=blend, out=angles)
        _abs_into(angles, scale)
        scale.add_(_TINY)
        torch.div(target, scale, out=scale)
        angles.mul_(scale)
        rebuilt, previous = previous, rebuilt
    torch.fft.irfft(angles, n=n_fft, dim=-1, out=frames)
    frames.mul_(window)
    _overlap_add(frames, signal, hop_length)
    signal.mul_(gain)
    return signal


def _checked_length(
    n_freqs: int,
    n_frames: int,
    n_fft: int,
    hop_length: int,
    n_iter: int,
    momentum: float,
    length: int | None,
) -> int:
    """`griffin_lim`'s output length, after checking its arguments."""
    if n_freqs != n_fft // 2 + 1:
        raise ValueError(
            f"magnitude has {n_freqs} frequency bins, n_fft={n_fft} needs {n_fft // 2 + 1}"
        )
    if hop_length <= 0 or hop_length > n_fft:
        raise ValueError(f"hop_length must be in [1, n_fft={n_fft}], got {hop_length}")
    if n_frames == 0:
        raise ValueError("magnitude has no frames")
    if n_iter < 0 or momentum < 0:
        raise ValueError(f"n_iter and momentum must be >= 0, got {n_iter} and {momentum}")
    if length is None:
        length = hop_length * (n_frames - 1)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return length


def griffin_lim(
    magnitude: torch.Tensor,
    n_fft: int,
    hop_length: int,
    n_iter: int = 32,
    momentum: float = 0.99,
    seed: int = 0,
    length: int | None = None,
) -> torch.Tensor:
    """Fast Griffin-Lim: (B, 1 + n_fft//2, T) STFT magnitudes -> (B, samples) float32 waveforms.

    Hann window of n_fft samples, centred frames with zero padding (librosa's and torch's stft
    conventions), librosa.griffinlim's momentum update and its random initial phase, here drawn
    from a torch.Generator seeded with `seed` on the input's device, so equal inputs and seeds
    give equal outputs. `length` cuts or zero-pads the output, and the iterations see the same
    constraint; by default the output has hop_length * (T - 1) samples, and samples past
    hop_length * T are always zero. A 2-D (F, T) input gives a 1-D waveform.
    """
    if magnitude.ndim not in (2, 3):
        raise ValueError(f"magnitude must be (B, F, T) or (F, T), got {tuple(magnitude.shape)}")
    if magnitude.ndim == 2:
        return griffin_lim(magnitude[None], n_fft, hop_length, n_iter, momentum, seed, length)[0]
    batch, n_freqs, n_frames = magnitude.shape
    length = _checked_length(n_freqs, n_frames, n_fft, hop_length, n_iter, momentum, length)

    device = magnitude.device
    if batch == 0:
        return torch.zeros(0, length, dtype=torch.float32, device=device)
    target_all = magnitude.detach().to(torch.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    # Drawn in the (B, F, T) layout of the argument so that the phases do not depend on how the
    # clips are chunked below.
    phase_all = torch.rand(
        target_all.shape, generator=generator, device=device, dtype=torch.float32
    ).mul_(2.0 * math.pi)
    window = torch.hann_window(n_fft, dtype=torch.float32, device=device)
    # Past hop * T samples only the tails of the last frames overlap, where istft's division by
    # the tiny window envelope would blow up; those samples stay zero instead.
    available = min(length, hop_length * n_frames)
    gain = _synthesis_gain(window, n_frames, hop_length, available)
    segments = gain.shape[0]

    if device.type == "cpu":
        # Three complex and two real spectra, the frames and the padded signal, per clip.
        per_clip = n_frames * (n_freqs * (3 * 8 + 2 * 4) + n_fft * 4) + segments * hop_length * 4
        chunk = max(1, _CPU_CHUNK_BYTES // max(per_clip, 1))
        # At least one chunk per worker thread (see _for_each_chunk).
        chunk = min(chunk, math.ceil(batch / torch.get_num_threads()))
    else:
        chunk = max(batch, 1)

    def new_buffers() -> dict[str, torch.Tensor]:
        buffers = {
            "frames": torch.empty(chunk, n_frames, n_fft, device=device),
            "signal": torch.empty(chunk, segments, hop_length, device=device),
            "scale": torch.empty(chunk, n_frames, n_freqs, device=device),
        }
        for name in ("angles", "rebuilt", "previous"):
            buffers[name] = torch.empty(
                chunk, n_frames, n_freqs, dtype=torch.complex64, device=device
            )
        return buffers

    out = torch.zeros(batch, length, dtype=torch.float32, device=device)

    def run(start: int, buffers: dict[str, torch.Tensor]) -> None:
        stop = min(start + chunk, batch)
        # (b, T, F) so that each frame's spectrum is contiguous for rfft / irfft.
        target = target_all[start:stop].transpose(1, 2).contiguous()
        phase = phase_all[start:stop].transpose(1, 2).contiguous()
        signal = _griffin_lim_chunk(target, phase, window, gain, n_iter, momentum, buffers)
        out[start:stop, :available] = signal.reshape(stop - start, -1)[
            :, n_fft // 2 : n_fft // 2 + available
        ]

    _for_each_chunk(run, list(range(0, batch, chunk)), new_buffers, device)
    return out


def mel_to_audio(
    mel_power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_iter: int = 32,
    fmin: float = 0.0,
    fmax: float | None = None,
    seed: int = 0,
    length: int | None = None,
    power: float = 2.0,
) -> torch.Tensor:
    """(B, n_mels, T) mel power (or magnitude, `power` 1) -> (B, samples) waveform:
    `mel_to_stft_magnitude` + `griffin_lim`."""
    magnitude = mel_to_stft_magnitude(
        mel_power, sample_rate, n_fft, fmin=fmin, fmax=fmax, power=power
    )
    return griffin_lim(magnitude, n_fft, hop_length, n_iter=n_iter, seed=seed, length=length)
