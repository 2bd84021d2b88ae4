"""The emotion judge: a compact CNN speech-emotion classifier on z-scored log-mels.

It scores what the VAE makes: a reconstruction or a sample that keeps its emotion is one the
judge still classifies correctly (see `emovae.emotion`). Like the paper's ResNet-based judge it
learns from the real training speakers only, and its accuracy on the held-out test speakers is
the ceiling the VAE's outputs are compared with. It is sized for a CPU: four single-conv
blocks of 8-16-32-64 channels.

A sweep trains it once: `ensure_judge` caches it on disk under a key made of the data
fingerprint and the judge's configuration, and every trial of the sweep loads that file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn

from emovae.config import SEED_RANGE, Range, check_ranges, from_dict
from emovae.dataset import PreparedData, Split
from emovae.judge_augment import augment
from emovae.runtime import atomic_write, configure_threads, content_key, eval_mode, select_device

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: concurrent trials may then train it twice
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
# Part of the cache key: bump when the architecture or the training procedure changes, so a
# judge cached by older code is not reused.
JUDGE_VERSION = 1
PREDICT_BATCH = 256
# Fields that choose where and how fast the judge trains, not what it learns: trials with other
# thread counts or devices share one cached judge.
_RUNTIME_FIELDS = ("num_threads", "device")


@dataclass
class JudgeConfig:
    epochs: int = 40
    lr: float = 2e-3
    batch_size: int = 32
    channels: int = 8  # block widths are channels * (1, 2, 4, ...): 8-16-32-64 with 4 blocks
    n_blocks: int = 4
    embedding_dim: int = 64
    freq_bands: int = 4  # frequency bands kept by the final pooling (time is pooled entirely)
    dropout: float = 0.3
    weight_decay: float = 1e-3
    patience: int = 12  # epochs without a better validation accuracy before stopping
    augment: bool = True  # blur (below) and SpecAugment-style frequency and time masks
    freq_mask: float = 0.15  # largest masked band, as a share of the mel bins
    time_mask: float = 0.15  # largest masked stretch, as a share of the frames
    # Share of training clips blurred by a Gaussian of random width (emovae.judge_augment), so
    # the judge scores emotion rather than sharpness: an MSE-trained decoder smooths its
    # outputs, and a judge that never saw smooth spectrograms calls them all low-arousal.
    # 0 disables it.
    blur_prob: float = 0.5
    blur_time: float = 8.0  # largest Gaussian sigma along time, frames
    blur_freq: float = 3.0  # largest Gaussian sigma along frequency, mel bins
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 = leave as is
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        check_ranges("judge", self, JUDGE_RANGES)


# patience 0 would stop after the first epoch, better or not; masks are shares of the clip.
JUDGE_RANGES: dict[str, Range] = {
    "epochs": Range(1),
    "lr": Range(0.0, low_inclusive=False),
    "batch_size": Range(1),
    "channels": Range(1),
    "n_blocks": Range(1),
    "embedding_dim": Range(1),
    "freq_bands": Range(1),
    "dropout": Range(0.0, 1.0, high_inclusive=False),
    "weight_decay": Range(0.0),
    "patience": Range(1),
    "freq_mask": Range(0.0, 1.0),
    "time_mask": Range(0.0, 1.0),
    "blur_prob": Range(0.0, 1.0, note="0: no blur"),
    "blur_time": Range(0.0),
    "blur_freq": Range(0.0),
    "seed": SEED_RANGE,
    "num_threads": Range(0, note="0: leave as is"),
}


class EmotionJudge(nn.Module):
    """(B, 1, n_mels, frames) -> (B, n_classes) logits.

    Conv-BN-ReLU + max-pool blocks, then average pooling over all of time and into
    `freq_bands` bands of frequency, so the judge accepts any clip length (and any mel count of
    at least 2^n_blocks), a linear + ReLU embedding, and a linear classifier on it. Frequency is
    not pooled away entirely because where energy sits (pitch, formants, tilt) carries emotion,
    and convolutions alone only see relative positions.
    """

    def __init__(
        self,
        n_classes: int,
        channels: int = 8,
        n_blocks: int = 4,
        embedding_dim: int = 64,
        dropout: float = 0.3,
        freq_bands: int = 4,
    ):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"EmotionJudge: needs at least 2 emotions, got {n_classes}")
        self.n_classes = n_classes
        widths = [channels * 2**i for i in range(n_blocks)]
        blocks = []
        # One conv per block and a narrow first block: the full-resolution layers dominate
        # the cost, and two convs per block of 16-64 channels trained 10x slower on a CPU for
        # a few points of accuracy. Pooling before the ReLU gives the same result (ReLU is
        # monotonic) on a quarter of the values.
        for c_in, c_out in zip([1, *widths[:-1]], widths, strict=True):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d((freq_bands, 1)), nn.Flatten())
        self.to_embedding = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(widths[-1] * freq_bands, embedding_dim), nn.ReLU()
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_dim, n_classes))
        # oneDNN convolutions on the CPU run about 1.5x faster in this layout.
        self.to(memory_format=torch.channels_last)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, frames) -> (B, embedding_dim): the penultimate layer."""
        return self.to_embedding(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@dataclass
class TrainedJudge:
    model: EmotionJudge  # in eval mode
    label_names: list[str]
    config: JudgeConfig
    test_accuracy: float  # on the real held-out test speakers: the ceiling for VAE outputs
    test_uar: float  # unweighted average recall (mean per-emotion recall) on the same clips
    val_accuracy: float  # of the kept (best) epoch
    best_epoch: int
    fingerprint: str  # of the data it was trained on
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _module(judge: TrainedJudge | EmotionJudge) -> EmotionJudge:
    return judge.model if isinstance(judge, TrainedJudge) else judge


def _batched(
    judge: TrainedJudge | EmotionJudge, x: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and embeddings of `x` from one pass, on the CPU."""
    model = _module(judge)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected features of shape (N, 1, n_mels, frames), got {tuple(x.shape)}")
    device = next(model.parameters()).device
    logits, embedded = [], []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            emb = model.embed(x[start : start + batch_size].to(device, torch.float32))
            logits.append(model.classifier(emb).cpu())
            embedded.append(emb.cpu())
    if not logits:
        return torch.zeros(0, model.n_classes), torch.zeros(0, model.classifier[1].in_features)
    return torch.cat(logits), torch.cat(embedded)


class JudgeOutputs(NamedTuple):
    pred: np.ndarray  # (N,) int64 predicted label indices
    probs: np.ndarray  # (N, n_classes) float32 class probabilities
    emb: np.ndarray  # (N, embedding_dim) float64 penultimate-layer embeddings


def judge_outputs(
    judge: TrainedJudge | EmotionJudge, x: torch.Tensor, batch_size: int = PREDICT_BATCH
) -> JudgeOutputs:
    """Predictions and embeddings of (N, 1, n_mels, frames) clips from one batched pass in
    eval mode without gradients, on the judge's device; results on the CPU."""
    logits, emb = _batched(judge, x, batch_size)
    probs = torch.softmax(logits, dim=1)
    return JudgeOutputs(
        probs.argmax(dim=1).numpy().astype(np.int64),
        probs.numpy().astype(np.float32),
        emb.numpy().astype(np.float64),
    )


def predict(
    judge: TrainedJudge | EmotionJudge, x: torch.Tensor, batch_size: int = PREDICT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted label indices (N,) int64 and class probabilities (N, n_classes) float32."""
    out = judge_outputs(judge, x, batch_size)
    return out.pred, out.probs


def embeddings(
    judge: TrainedJudge | EmotionJudge, x: torch.Tensor, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """Penultimate-layer embeddings (N, embedding_dim) float64, for Frechet distances."""
    return judge_outputs(judge, x, batch_size).emb


def accuracy_and_uar(pred: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and unweighted average recall (the mean per-emotion recall over the emotions
    present in `labels`: one emotion alone gives UAR = accuracy); NaN for no clips."""
    if len(labels) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # Clips judged as an emotion absent from `labels` are errors to count, and a set of one
        # emotion all judged right is a perfect score: neither is the misuse sklearn warns of.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        uar = balanced_accuracy_score(labels, pred)
    return float(accuracy_score(labels, pred)), float(uar)


def _training_set(
    data: PreparedData, extra_train: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    train_x, train_y = data.train.features, data.train.labels
    if extra_train is not None:
        extra_x, extra_y = extra_train
        if extra_x.shape[1:] != train_x.shape[1:] or extra_x.shape[0] != extra_y.shape[0]:
            raise ValueError(
                f"extra_train: expected features (M, {', '.join(map(str, train_x.shape[1:]))}) "
                f"and M labels, got {tuple(extra_x.shape)} and {tuple(extra_y.shape)}"
            )
        train_x = torch.cat([train_x, extra_x.detach().cpu().to(train_x.dtype)])
        train_y = torch.cat([train_y, extra_y.detach().cpu().to(torch.int64)])
    if len(train_x) < 2:
        raise ValueError(f"train_judge: need at least 2 training clips, got {len(train_x)}")
    return train_x, train_y


def _new_judge(n_classes: int, config: JudgeConfig) -> EmotionJudge:
    return EmotionJudge(
        n_classes,
        config.channels,
        config.n_blocks,
        config.embedding_dim,
        config.dropout,
        config.freq_bands,
    )


def _train_epoch(
    model: EmotionJudge,
    optimizer: torch.optim.Optimizer,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    config: JudgeConfig,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled batches; the mean training loss."""
    device = next(model.parameters()).device
    n = len(train_x)
    # BatchNorm cannot train on a batch of one: a trailing singleton batch is dropped.
    usable = n - 1 if n % config.batch_size == 1 else n
    model.train()
    order = torch.randperm(n, generator=generator)
    loss_sum = 0.0
    for start in range(0, usable, config.batch_size):
        index = order[start : start + config.batch_size]
        x = train_x[index]
        if config.augment:
            x = augment(x, config, generator)
        logits = model(x.to(device))
        loss = F.cross_entropy(logits, train_y[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(index)
    return loss_sum / usable


def _fit(
    model: EmotionJudge,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val: Split,
    config: JudgeConfig,
) -> tuple[list[dict[str, float]], int]:
    """Train `model`, leaving it with the weights of the best epoch; (history, best epoch)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    generator = torch.Generator().manual_seed(config.seed)
    val_x, val_y = val.features, val.labels.numpy()
    history: list[dict[str, float]] = []
    best_key = (-math.inf, -math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, bad_epochs = 0, 0
    for epoch in range(1, config.epochs + 1):
        train_loss = _train_epoch(model, optimizer, train_x, train_y, config, generator)
        scheduler.step()
        row = {"epoch": float(epoch), "train_loss": train_loss}
        if len(val_y) > 0:
            logits, _ = _batched(model, val_x, PREDICT_BATCH)
            val_loss = float(F.cross_entropy(logits, torch.from_numpy(val_y)))
            val_acc, _ = accuracy_and_uar(logits.argmax(1).numpy(), val_y)
            row |= {"val_loss": val_loss, "val_accuracy": val_acc}
            key = (val_acc, -val_loss)
        else:
            # Without validation speakers the last epoch is kept.
            key = (float(epoch), 0.0)
        history.append(row)
        if key > best_key:
            best_key, best_epoch, bad_epochs = key, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return history, best_epoch


def train_judge(
    data: PreparedData,
    config: JudgeConfig | None = None,
    extra_train: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainedJudge:
    """Train a judge on `data.train` (plus `extra_train` = (features, labels), e.g. generated
    clips for the augmentation experiment), keeping the epoch with the best validation accuracy
    (ties: lower validation loss). Test accuracy is measured on `data.test` with that epoch.

    Seeded and isolated: the global torch RNG is restored afterwards, so training a judge inside
    a trial does not change the trial's own random stream.
    """
    config = config or JudgeConfig()
    train_x, train_y = _training_set(data, extra_train)
    configure_threads(config.num_threads)
    device = select_device(config.device)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        model = _new_judge(len(data.label_names), config).to(device)
        history, best_epoch = _fit(model, train_x, train_y, data.val, config)
    model.eval()
    pred, _ = predict(model, data.test.features)
    test_acc, test_uar = accuracy_and_uar(pred, data.test.labels.numpy())
    return TrainedJudge(
        model=model,
        label_names=list(data.label_names),
        config=config,
        test_accuracy=test_acc,
        test_uar=test_uar,
        val_accuracy=history[best_epoch - 1].get("val_accuracy", math.nan),
        best_epoch=best_epoch,
        fingerprint=data.fingerprint,
        history=history,
    )


def save_judge(path: str | Path, trained: TrainedJudge) -> Path:
    """Atomic write (tmp file + rename) of tensors and plain data only, so concurrent trials
    never read half a file and `torch.load(weights_only=True)` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
        "n_classes": trained.model.n_classes,
        "config": dataclasses.asdict(trained.config),
        "label_names": list(trained.label_names),
        "test_accuracy": trained.test_accuracy,
        "test_uar": trained.test_uar,
        "val_accuracy": trained.val_accuracy,
        "best_epoch": trained.best_epoch,
        "fingerprint": trained.fingerprint,
        "history": [dict(row) for row in trained.history],
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> TrainedJudge:
    """Rebuild a judge written by `save_judge`, in eval mode on `device`."""
    path = Path(path)
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not an emotion-judge file of format {FORMAT_VERSION}")
    config = from_dict(JudgeConfig, state["config"], f"{path}: config")
    model = _new_judge(state["n_classes"], config)
    model.load_state_dict(state["model"])
    return TrainedJudge(
        model=model.to(device).eval(),
        label_names=list(state["label_names"]),
        config=config,
        test_accuracy=float(state["test_accuracy"]),
        test_uar=float(state["test_uar"]),
        val_accuracy=float(state["val_accuracy"]),
        best_epoch=int(state["best_epoch"]),
        fingerprint=str(state["fingerprint"]),
        history=[dict(row) for row in state["history"]],
    )


def judge_key(fingerprint: str, config: JudgeConfig) -> str:
    """Cache key of a judge: the data it learns from and every setting that changes it."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUNTIME_FIELDS}
    return content_key([JUDGE_VERSION, fingerprint, settings], 16)


def judge_path(cache_dir: str | Path, fingerprint: str, config: JudgeConfig) -> Path:
    return Path(cache_dir) / f"judge-{judge_key(fingerprint, config)}.pt"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Trials that start together would otherwise each train the same judge; with the lock the
    # first trains and the others wait, then load its file.
    if fcntl is None:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_cached(path: Path, data: PreparedData, device: torch.device) -> TrainedJudge | None:
    if not path.is_file():
        return None
    try:
        cached = load_judge(path, device)
    except Exception:  # a damaged file (e.g. a full disk) is retrained, not fatal
        return None
    if cached.label_names != list(data.label_names) or cached.fingerprint != data.fingerprint:
        return None
    return cached


def ensure_judge(
    data: PreparedData, cache_dir: str | Path, config: JudgeConfig | None = None
) -> TrainedJudge:
    """The judge for `data` and `config` from `cache_dir`, trained and written there first if
    it is missing (`judge-<key>.pt`, key from `judge_key`). Safe for concurrent trials."""
    config = config or JudgeConfig()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = judge_path(cache_dir, data.fingerprint, config)
    device = select_device(config.device)
    cached = _load_cached(path, data, device)
    if cached is not None:
        # Same key, same learned settings; the caller's runtime fields (threads, device) apply.
        return dataclasses.replace(cached, config=config)
    with _exclusive(path.with_suffix(".lock")):
        cached = _load_cached(path, data, device)
        if cached is not None:
            return dataclasses.replace(cached, config=config)
        trained = train_judge(data, config)
        save_judge(path, trained)
        return trained
