"""What the prior's fine-tuning and a post-filter do to a trained checkpoint's exported audio.

From one checkpoint (the finaliser's retrained VAE, saved before the prior's fine-tuning), on
EmoDB's test speakers, judged as the finaliser judges exported WAVs (CNN judge, eGeMAPS judge,
DNSMOS, STOI; HiFi-GAN), it scores:
- real test clips, and their HiFi-GAN copy synthesis (the ceiling of any reconstruction);
- reconstructions, as decoded and through a global-variance post-filter (`postfilter`:
  per-utterance, per-mel-bin temporal variance scaled to the training clips' mean, Toda &
  Tokuda 2007; strength 1, and 0.5 on the copy synthesis), and the constant per-bin gain
  that would match the training reconstructions' variance to the real clips' (printed);
- 60 samples (10 per emotion, sample seed `--sample-seed`) from the prior as trained beside
  the VAE, after `--steps` more prior-only steps at a constant learning rate (what the
  finaliser did), and after the same steps keeping an exponential moving average (0.999) of
  the prior's weights.

    python benchmarks/bench_prior_finetune.py --checkpoint CKPT --out DIR [--sample-seed 1]

Results accumulate in DIR/results.json (a finished entry is not recomputed), so a second
sample seed adds to the first. Numbers and commands: benchmarks/RESULTS_quality.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_sampling import exported_clips

from emovae.checkpoint import load_model
from emovae.dataset import prepare_data
from emovae.evaluate import honest_label_mode, reconstruct
from emovae.evaluation.exported_audio import (
    WavSet,
    clip_set,
    prepare_audio_judges,
    score_set,
    wav_set,
)
from emovae.train import encode_batches
from sweeps.final_evaluation import final_judge
from sweeps.space import load_space

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--checkpoint", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--steps", type=int, default=3000)
parser.add_argument("--sample-seed", type=int, default=0)
parser.add_argument("--data", default="../shared/data/emodb/wav")
args = parser.parse_args()
torch.set_num_threads(2)
CKPT, OUT, STEPS, SEED = args.checkpoint, args.out, args.steps, args.sample_seed
SUF = f"_s{SEED}" if SEED else ""
OUT.mkdir(parents=True, exist_ok=True)
spec = load_space("emodb_cpu", [f"data.path={args.data}"])
data = prepare_data(spec.experiment.data, spec.experiment.features)
cache = spec.experiment.data.cache_dir
cnn = final_judge(data, spec.judge, cache, "cpu")
judges = prepare_audio_judges(data, cnn, cache)
loaded = load_model(CKPT)
model = loaded.model.eval()
results: dict[str, dict] = {}
res_path = OUT / "results.json"
if res_path.exists():
    results = json.loads(res_path.read_text())


def as_set(name: str, log_mels: np.ndarray, labels: np.ndarray | None) -> WavSet:
    return clip_set(judges, name, exported_clips(loaded, log_mels), labels)


def train_gv() -> np.ndarray:
    """Per-bin mean temporal variance of the real training log-mels (denormalised)."""
    x = loaded.normalizer.denormalize(data.train.features[:, 0].numpy())
    return x.var(axis=2).mean(axis=0)


GV = train_gv()
FLOOR = float(np.log(1e-5))


def constant_gain() -> np.ndarray:
    """Per-bin gain: sqrt(GV of real training clips / GV of their reconstructions)."""
    recon_train, _ = reconstruct(model, data.train, label_mode=honest_label_mode(model))
    x = loaded.normalizer.denormalize(recon_train[:, 0].numpy())
    return np.sqrt(GV / x.var(axis=2).mean(axis=0))


GAIN = None


def postfilter(log_mels: np.ndarray, strength: float) -> np.ndarray:
    if strength < 0:  # constant per-bin gain, |strength| as exponent
        mean = log_mels.mean(axis=2, keepdims=True)
        scale = GAIN[None, :, None] ** (-strength)
        return np.maximum(mean + (log_mels - mean) * scale, FLOOR)
    mean = log_mels.mean(axis=2, keepdims=True)
    var = log_mels.var(axis=2, keepdims=True).clip(1e-6)
    scale = (GV[None, :, None] / var) ** 0.5
    scale = scale**strength
    return np.maximum(mean + (log_mels - mean) * scale, FLOOR)


def decode(z: torch.Tensor, labels: torch.Tensor | None) -> np.ndarray:
    with torch.no_grad():
        out = torch.cat(
            [
                model.decode(z[i : i + 25], None if labels is None else labels[i : i + 25])
                for i in range(0, len(z), 25)
            ]
        )
    return loaded.normalizer.denormalize(out[:, 0].numpy())


def record(key: str, metrics: dict) -> None:
    results[key] = metrics
    res_path.write_text(json.dumps(results, indent=1))
    pick = {
        k: round(v, 3)
        for k, v in metrics.items()
        if k.endswith(("acc", "dnsmos", "stoi", "fd_cnn", "fd_smile", "dnsmos_sig", "dnsmos_bak"))
    }
    print(key, pick, flush=True)


t0 = time.time()
real = wav_set(judges, "real", data.test.paths, data.test.labels.numpy())
real_clips = real.clips
if "real" not in results:
    record("real", score_set(judges, real))
copy_mels = loaded.normalizer.denormalize(data.test.features[:, 0].numpy())
for a in (0.0, 0.5):
    if f"copy_pf{a}" not in results:
        s = as_set("recon", postfilter(copy_mels, a) if a else copy_mels, data.test.labels.numpy())
        record(f"copy_pf{a}", score_set(judges, s, real, real_clips))

GAIN = constant_gain()
print("gain", np.round(GAIN, 2).tolist(), flush=True)
recon, _ = reconstruct(model, data.test, label_mode=honest_label_mode(model))
recon_mels = loaded.normalizer.denormalize(recon[:, 0].numpy())
for a in (0.0, 1.0):
    key = f"recon_pf{a}"
    if key in results:
        continue
    s = as_set("recon", postfilter(recon_mels, a) if a else recon_mels, data.test.labels.numpy())
    record(key, score_set(judges, s, real, real_clips))
print("recon done", time.time() - t0, flush=True)

N_PER = 10
n_classes = model.n_classes
labels = torch.tensor([i % n_classes for i in range(N_PER * n_classes)])


def sample_set(prior_model, key: str, guidance: float | None = None, pf=(0.0,)) -> None:
    key = key + SUF
    todo = [a for a in pf if f"{key}_pf{a}" not in results]
    if not todo:
        return
    prior = prior_model.prior
    old = prior.guidance
    if guidance is not None:
        prior.guidance = guidance
    z = prior.sample(len(labels), model.latent_frames, labels, torch.Generator().manual_seed(SEED))
    prior.guidance = old
    mels = decode(z, labels)
    for a in todo:
        s = as_set("gen", postfilter(mels, a) if a else mels, labels.numpy())
        record(f"{key}_pf{a}", score_set(judges, s, real))


sample_set(model, "gen_asis", pf=(0.0, 1.0) if SEED == 0 else (0.0,))
print("as-is done", time.time() - t0, flush=True)

# latents for continued prior training
latents = encode_batches(model, data.train.features)[0]
train_labels = data.train.labels


def continue_prior(ema_decay: float | None, lr: float, steps: int, cosine: bool) -> torch.nn.Module:
    prior = copy.deepcopy(model.prior)
    prior.train()
    ema = copy.deepcopy(prior) if ema_decay else None
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(len(latents), (loaded.train.batch_size,), generator=g)
        loss = prior.loss(latents[idx], train_labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), loaded.train.grad_clip)
        opt.step()
        if sched:
            sched.step()
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), prior.parameters(), strict=True):
                    pe.lerp_(p, 1 - ema_decay)
                for be, b in zip(ema.buffers(), prior.buffers(), strict=True):
                    be.copy_(b)
    out = ema if ema is not None else prior
    out.eval()
    holder = copy.copy(model)
    holder.prior = out
    return holder


LR = loaded.train.lr  # the finaliser fine-tunes at the VAE's learning rate
for key, kwargs in (
    ("gen_plain", dict(ema_decay=None, lr=LR, steps=STEPS, cosine=False)),
    ("gen_ema", dict(ema_decay=0.999, lr=LR, steps=STEPS, cosine=False)),
):
    if f"{key}{SUF}_pf0.0" in results:
        continue
    t1 = time.time()
    holder = continue_prior(**kwargs)
    print(key, "trained", time.time() - t1, flush=True)
    sample_set(holder, key, pf=(0.0,))
print("all done", time.time() - t0, flush=True)
