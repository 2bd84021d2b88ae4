"""Helpers every stage shares: device, thread and seed selection, atomic file writes, content
keys of on-disk caches, eval mode, and saving a figure.

It imports no other emovae module, so the trainer, the judges, the evaluator and the
generators use it without importing one another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def select_device(name: str = "auto") -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; a CUDA device asked for by name
    must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device: '{name}' asked for, but no CUDA GPU is available")
    return device


def configure_threads(num_threads: int) -> None:
    """Intra-op threads must match the CPUs a process holds, or parallel trials oversubscribe."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator, and numpy's for third-party code that draws from it."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - only for third-party code that uses the global RNG


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary name beside `path`, then rename it over `path`: a reader
    (another trial, a resumed run) sees the old file or the new one, never half of one."""
    path = Path(path)
    # The process id keeps concurrent writers of one path from sharing a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_text(path: str | Path, text: str, newline: str | None = None) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, newline=newline))


def atomic_save_array(path: str | Path, array: np.ndarray) -> Path:
    """`np.save` atomically (see `atomic_write`)."""

    def write(tmp: Path) -> None:
        # Through a handle: given a name, np.save would append ".npy" to the temporary one.
        with tmp.open("wb") as handle:
            np.save(handle, array)

    return atomic_write(path, write)


def content_key(value: Any, length: int) -> str:
    """The first `length` hex digits of the SHA-256 of `value` as JSON with sorted keys: the
    name of a cache entry, which changes whenever anything that decides its content does."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode inside the block, then in the mode it was in before."""
    # Restoring matters mid-training: a metric computed between steps must not leave
    # dropout and batch-norm updates switched off for the rest of the epoch.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a pyplot-free `Figure` as PNG, creating the folder."""
    # Imported here so that training, which draws nothing, does not load matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
    return path
