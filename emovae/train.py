"""The trainer: Adam, ReduceLROnPlateau, gradient clipping, early stopping, best checkpointing.

It knows nothing of Ray or MLflow: a sweep passes `on_epoch`, called once per epoch with that
epoch's metrics and the folder holding `last.pt` (resumable state) and `best.pt`, and may pass
`epoch_metrics`, which adds its own per-epoch numbers (e.g. emotion preservation) to them.
Loss terms are summed on the device and read back once per epoch, so the training step never
waits for the host.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from emovae.checkpoint import model_state, read_checkpoint, save_checkpoint
from emovae.config import FeatureConfig, TrainConfig, from_dict
from emovae.dataset import PreparedData, Split
from emovae.loss import ACTIVE_UNIT_NATS, TERMS, LossWeights, kl_per_unit, vae_loss
from emovae.models import SpeechVAE, build_model

# Also reachable as emovae.train.select_device etc., where they lived before emovae.runtime.
from emovae.runtime import configure_threads, seed_everything, select_device

MONITORS = ("val_loss", "val_recon")
EVAL_BATCH = 64

EpochCallback = Callable[[dict[str, float], Path], None]
# (model, epoch, is_last_epoch) -> extra metrics for that epoch; see `train`.
EpochMetrics = Callable[[SpeechVAE, int, bool], dict[str, float]]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint of that epoch is written."""


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    best_checkpoint: Path
    last_checkpoint: Path
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


def effective_beta(config: TrainConfig, epoch: int) -> float:
    """Linear KL warm-up from 0 to beta over `kl_warmup_epochs` (epochs count from 1)."""
    if config.kl_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch / config.kl_warmup_epochs)


def _to_device(
    split: Split, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    features = split.features.to(device).contiguous(memory_format=memory_format)
    return features, split.labels.to(device)


def _decoder_labels(
    model: SpeechVAE, labels: torch.Tensor, label_dropout: float
) -> torch.Tensor | None:
    """The labels a training step conditions on: none for an unconditional model; for a
    model with a "withheld" label, that label in place of a `label_dropout` share of them."""
    if not model.n_classes:
        return None
    if model.withheld_label is None or label_dropout <= 0:
        return labels
    dropped = torch.rand(labels.shape[0], device=labels.device) < label_dropout
    return labels.masked_fill(dropped, model.withheld_label)


def _parameter_groups(model: SpeechVAE) -> list[list[torch.nn.Parameter]]:
    """The VAE's parameters, and the learned prior's (if any) apart."""
    if model.prior is None:
        return [list(model.parameters())]
    prior = {id(p) for p in model.prior.parameters()}
    vae = [p for p in model.parameters() if id(p) not in prior]
    return [vae, list(model.prior.parameters())]


def _train_epoch(
    model: SpeechVAE,
    optimizer: torch.optim.Optimizer,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    beta: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    model.train()
    n = features.shape[0]
    order = torch.randperm(n, generator=generator).to(features.device)
    # BatchNorm cannot train on a batch of one: a trailing singleton batch is dropped.
    usable = n - 1 if n % config.batch_size == 1 and n > 1 else n
    names = (*TERMS, "prior") if model.prior is not None else TERMS
    weights = LossWeights.of(config, beta)
    parameter_groups = _parameter_groups(model)
    sums = {name: torch.zeros((), device=features.device) for name in names}
    for start in range(0, usable, config.batch_size):
        index = order[start : start + config.batch_size]
        x = features[index]
        with torch.autocast(x.device.type, torch.bfloat16, enabled=config.precision == "bf16"):
            decoder_labels = _decoder_labels(model, labels[index], config.label_dropout)
            recon, mu, logvar = model(x, decoder_labels)
            terms = vae_loss(recon.float(), x, mu.float(), logvar.float(), weights)
            prior_loss = model.prior_loss(
                mu.float(),
                labels[index] if model.n_classes else None,
                encoder_weight=config.prior_encoder_weight,
            )
        objective = terms["loss"]
        if prior_loss is not None:
            # By default the prior trains on detached latents: it follows the encoder without
            # shaping it. The VAE's own loss ("loss") stays the spec's sum either way.
            terms["prior"] = prior_loss
            objective = objective + prior_loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if config.grad_clip > 0:
            # Clipped apart: the prior's gradients must not shrink the VAE's step (or the
            # reverse) through one shared global norm.
            for group in parameter_groups:
                torch.nn.utils.clip_grad_norm_(group, config.grad_clip)
        optimizer.step()
        for name in names:
            sums[name] += terms[name].detach() * x.shape[0]
    return {name: value / usable for name, value in sums.items()}


@torch.no_grad()
def evaluate_loss(
    model: SpeechVAE,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """Loss terms over a whole split, decoding the posterior mean (deterministic); a
    conditional model with a "withheld" label decodes without the label, so the reconstruction
    error measures what the latent carries, not what the label adds.

    Also "active_units": the latent units whose mean KL over the split exceeds
    ACTIVE_UNIT_NATS (emovae.loss.kl_per_unit), as a float. A collapsed posterior can still
    reconstruct well through a few units (or, for a conditional decoder, through the label),
    which the loss terms alone do not show."""
    model.eval()
    sums = {name: torch.zeros((), device=features.device) for name in TERMS}
    unit_kl = torch.zeros((), device=features.device)  # becomes (units,) on the first batch
    for start in range(0, features.shape[0], EVAL_BATCH):
        x = features[start : start + EVAL_BATCH]
        y = labels[start : start + EVAL_BATCH] if model.n_classes else None
        if model.withheld_label is not None:
            y = None
        recon, mu, logvar = model(x, y, sample=False)
        terms = vae_loss(recon, x, mu, logvar, weights)
        for name in TERMS:
            sums[name] += terms[name] * x.shape[0]
        unit_kl = unit_kl + kl_per_unit(mu.float(), logvar.float()) * x.shape[0]
    means = {name: value / features.shape[0] for name, value in sums.items()}
    active = (unit_kl / features.shape[0] > ACTIVE_UNIT_NATS).sum()
    return means | {"active_units": active.float()}


@torch.no_grad()
def encode_batches(
    model: SpeechVAE, features: torch.Tensor, batch_size: int = EVAL_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's (mu, logvar) of every clip, `batch_size` clips at a time; the caller
    chooses the model's mode (eval for BatchNorm's running statistics)."""
    pairs = [
        model.encode(features[i : i + batch_size]) for i in range(0, len(features), batch_size)
    ]
    return torch.cat([mu for mu, _ in pairs]), torch.cat([logvar for _, logvar in pairs])


def _check_finite(metrics: dict[str, float], epoch: int) -> None:
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise TrainingDivergedError(
            f"epoch {epoch}: non-finite {', '.join(bad)} "
            f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); try a lower lr or a grad_clip"
        )


def _extra_metrics(
    epoch_metrics: EpochMetrics, model: SpeechVAE, epoch: int, metrics: dict[str, float]
) -> dict[str, float]:
    was_training = model.training
    try:
        extra = epoch_metrics(model, epoch, metrics["is_last_epoch"] >= 1.0)
    finally:
        model.train(was_training)
    clashes = sorted(set(extra) & set(metrics))
    if clashes:
        # Overwriting val_loss or epoch would silently corrupt the history and the checkpoints.
        raise ValueError(f"epoch_metrics: returned the trainer's own metrics {clashes}")
    # Not checked for finiteness: a silhouette is NaN where it is undefined, and only the loss
    # terms say whether training diverged.
    return {name: float(value) for name, value in extra.items()}


@dataclass
class _Best:
    """Early-stopping state; `last.pt` carries it across a resume."""

    best_value: float = math.inf  # of the monitored metric
    best_epoch: int = 0  # 0: no epoch yet
    bad_epochs: int = 0  # epochs since the best

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's monitored value; whether it improved on the best."""
        if value < self.best_value:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False


def _optimiser(
    model: SpeechVAE, config: TrainConfig
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.ReduceLROnPlateau]:
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=config.lr_factor,
        patience=config.lr_patience,
        min_lr=config.min_lr,
    )
    return optimizer, scheduler


def _resumable(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    generator: torch.Generator,
    device: torch.device,
) -> dict[str, Any]:
    """What `last.pt` holds beyond the weights so that a resumed run continues the straight one."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        # The global RNG draws the reparameterisation noise: without it a resumed run
        # would replay epoch 1's noise instead of continuing the straight run.
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def _restore(
    path: Path,
    device: torch.device,
    model: SpeechVAE,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
    generator: torch.Generator,
) -> tuple[list[dict[str, float]], _Best, int]:
    """Load a `last.pt` into the training objects and the RNGs; its history, early-stopping
    state and the epoch to continue from."""
    state = read_checkpoint(path, device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and state["cuda_rng"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    best = _Best(state["best_value"], state["best_epoch"], state["bad_epochs"])
    return list(state["history"]), best, state["epoch"] + 1


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        # Free cached blocks between epochs so concurrent trials sharing a GPU fit; on the
        # CPU tensors are freed by reference counting and a full gc pass costs ~0.5 s.
        gc.collect()
        torch.cuda.empty_cache()


def _check_inputs(config: TrainConfig, data: PreparedData) -> None:
    if config.monitor not in MONITORS:
        raise ValueError(f"monitor: unknown value '{config.monitor}' (expected one of {MONITORS})")
    if len(data.train) < 2 or len(data.val) < 1:
        raise ValueError(
            f"need at least 2 training and 1 validation clip, got {len(data.train)} and {len(data.val)}"
        )


def _epoch_losses(
    model: SpeechVAE,
    optimizer: torch.optim.Optimizer,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    val_xy: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    epoch: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Train one epoch, then validate: the epoch's loss terms, learning rate, beta and time."""
    started = time.perf_counter()
    beta = effective_beta(config, epoch)
    train_terms = _train_epoch(model, optimizer, *train_xy, config, beta, generator)
    val_terms = evaluate_loss(model, *val_xy, LossWeights.of(config))
    metrics = {f"train_{k}": float(v) for k, v in train_terms.items()}
    metrics |= {f"val_{k}": float(v) for k, v in val_terms.items()}
    _check_finite(metrics, epoch)
    return metrics | {
        "epoch": float(epoch),
        "lr": optimizer.param_groups[0]["lr"],
        "beta": beta,
        "epoch_seconds": time.perf_counter() - started,
    }


def train(
    config: TrainConfig,
    data: PreparedData,
    out_dir: str | Path,
    on_epoch: EpochCallback | None = None,
    resume_from: str | Path | None = None,
    progress: bool = False,
    epoch_metrics: EpochMetrics | None = None,
) -> TrainResult:
    """Train a VAE on `data`; checkpoints go to `out_dir` (best.pt, last.pt).

    `resume_from` is a `last.pt` written by an earlier call: training continues after its epoch
    with its optimiser, scheduler, early-stopping state and history.

    `epoch_metrics(model, epoch, is_last_epoch)` is called once per epoch, after validation and
    before the checkpoints are written; the metrics it returns join the epoch's (history,
    checkpoints, `on_epoch`). They may be NaN (a metric undefined on a split) and do not drive
    early stopping, the LR schedule or the best checkpoint. The model is left in the mode it
    was in, whatever the callback does.
    """
    _check_inputs(config, data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configure_threads(config.num_threads)
    seed_everything(config.seed)
    device = select_device(config.device)

    model = build_model(config, data.features, len(data.label_names)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = _optimiser(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    train_xy = _to_device(data.train, device, config.channels_last)
    val_xy = _to_device(data.val, device, config.channels_last)

    history: list[dict[str, float]] = []
    best, start_epoch = _Best(), 1
    if resume_from is not None:
        history, best, start_epoch = _restore(
            Path(resume_from), device, model, optimizer, scheduler, generator
        )

    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    stopped_early = False
    epochs = range(start_epoch, config.max_epochs + 1)
    for epoch in tqdm(epochs, desc="epochs", unit="epoch", disable=not progress):
        metrics = _epoch_losses(model, optimizer, train_xy, val_xy, config, epoch, generator)
        history.append(metrics)
        scheduler.step(metrics[config.monitor])

        improved = best.update(metrics[config.monitor], epoch)
        # Tells a sweep whether the run ended by itself (budget or early stopping), so a trial
        # that stops without this flag was stopped by the scheduler.
        metrics["is_last_epoch"] = float(
            best.bad_epochs >= config.patience or epoch == config.max_epochs
        )
        if epoch_metrics is not None:
            metrics |= _extra_metrics(epoch_metrics, model, epoch, metrics)
        weights = model_state(
            model, config, data.features, data.label_names, data.normalizer, epoch, metrics
        )
        if improved:
            save_checkpoint(best_path, weights)
        resumable = _resumable(optimizer, scheduler, generator, device) | {"history": history}
        save_checkpoint(last_path, weights | resumable | dataclasses.asdict(best))
        if on_epoch is not None:
            on_epoch(metrics, out_dir)
        _release_cached_memory(device)
        if best.bad_epochs >= config.patience:
            stopped_early = True
            break

    best_metrics = history[best.best_epoch - 1] if best.best_epoch else {}
    if model.prior is not None and config.prior_finetune_steps > 0 and best.best_epoch:
        finetune_prior(best_path, *train_xy, config, device, progress)
    return TrainResult(history, best.best_epoch, best_metrics, best_path, last_path, stopped_early)


def finetune_prior(
    checkpoint: Path,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    progress: bool = False,
) -> float:
    """Train the learned prior of `checkpoint` alone for `config.prior_finetune_steps` steps on
    the frozen encoder's posterior means of `features`, and save it back into the checkpoint.

    Beside the VAE the prior chases a latent space that moves every step; on the finished
    encoder it can settle. With `config.prior_ema` > 0 the saved prior is the exponential
    moving average of its weights over the steps (as diffusion models are usually sampled):
    at a constant learning rate on a few hundred clips the last iterate is noisy, and on
    EmoDB its samples were worse than the average's by both judges
    (benchmarks/RESULTS_quality.md). Returns the mean prior loss of the last 100 steps.
    """
    state = read_checkpoint(checkpoint, device)
    model = build_model(config, _features_config(state), len(state["label_names"])).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    latents = encode_batches(model, features)[0]
    prior = model.prior
    prior.train()
    average = (
        AveragedModel(prior, multi_avg_fn=get_ema_multi_avg_fn(config.prior_ema))
        if config.prior_ema > 0
        else None
    )
    optimizer = torch.optim.Adam(prior.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    recent: list[float] = []
    steps = range(config.prior_finetune_steps)
    for _ in tqdm(steps, desc="prior", unit="step", disable=not progress):
        index = torch.randint(len(latents), (config.batch_size,), generator=generator).to(device)
        y = labels[index] if model.n_classes else None
        loss = prior.loss(latents[index], y, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(prior.parameters(), config.grad_clip)
        optimizer.step()
        if average is not None:
            average.update_parameters(prior)
        recent = (recent + [float(loss.detach())])[-100:]
    if average is not None:
        # The weights only: the latent statistics (buffers) stay the prior's own, current ones.
        with torch.no_grad():
            for weight, averaged in zip(
                prior.parameters(), average.module.parameters(), strict=True
            ):
                weight.copy_(averaged)
    state["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state["metrics"] = dict(state["metrics"]) | {"prior_finetune_loss": sum(recent) / len(recent)}
    save_checkpoint(checkpoint, state)
    return state["metrics"]["prior_finetune_loss"]


def _features_config(state: dict[str, Any]) -> FeatureConfig:
    return from_dict(FeatureConfig, state["feature_config"], "checkpoint: feature_config")
