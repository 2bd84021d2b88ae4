"""Shared fixtures: the repository root, the real EmoDB copy, a database on the local
PostgreSQL, a fake RAVDESS tree, and one torch thread for modules that train tiny models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cluster_helpers import postgres_database, postgres_unavailable

RAVDESS_RATE = 48_000


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: their tensors are tiny, and on the shared
    2-core machine a second thread mostly waits at barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def require_emodb(path: Path) -> Path:
    """`path` if it exists; else skip the test, or fail it on CI (CI=true), where the real
    recordings must be present so that no real-data test silently stops running."""
    if not path.exists():
        reason = (
            f"EmoDB copy not found at {path}: tests on real recordings need "
            "../shared/data/emodb/wav next to the repository (see its README.md)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def emodb_dir(repo_root: Path) -> Path:
    """The real EmoDB WAV folder (../shared/data/emodb/wav); see `require_emodb`."""
    return require_emodb(repo_root.parent / "shared" / "data" / "emodb" / "wav")


def require_postgres() -> None:
    """Nothing if PostgreSQL on 127.0.0.1:5432 serves the tests; else skip the test, or fail it
    on CI (CI=true), where the server must run so that no PostgreSQL test silently stops."""
    reason = postgres_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new empty PostgreSQL database of this test's own, dropped afterwards (see
    `require_postgres`); its URL carries a password of its own, which the server's trust
    authentication ignores: tests check that it is never printed."""
    require_postgres()
    with postgres_database(password=f"pw{uuid.uuid4().hex}") as url:
        yield url


@pytest.fixture
def mlflow_backend_store() -> Iterator[str | None]:
    """A store for a test's MLflow server: a new PostgreSQL database (the team's store) where
    the server runs, else None (the server's sqlite file); on CI, PostgreSQL is required."""
    if postgres_unavailable() is not None:
        if os.environ.get("CI") == "true":
            require_postgres()
        yield None
        return
    with postgres_database() as url:
        yield url


def _tone(seconds: float, channels: int, seed: int) -> np.ndarray:
    """A quiet tone with a little noise: cheap to make, and not silence, like real speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RAVDESS_RATE)) / RAVDESS_RATE
    pitch = 110.0 + 20.0 * (seed % 10)
    audio = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(t.shape)
    if channels == 2:
        audio = np.stack([audio, 0.8 * audio], axis=1)
    return audio.astype(np.float32)


@pytest.fixture
def make_ravdess(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a small RAVDESS tree with the real layout, returning its root folder.

    Default tree: actors 01-03, each with speech files (vocal channel 01) for emotions
    neutral, happy, angry and surprised, plus one song file (vocal channel 02) that loaders
    must drop. 48 kHz 16-bit, 3.0-4.5 s; the first speech file of actor 02 is stereo.
    So: 12 speech items (4 per actor, 3 per emotion), 3 song files, 15 WAVs.
    """
    made = 0

    def make(
        actors: Sequence[int] = (1, 2, 3),
        emotions: Sequence[str] = ("01", "03", "05", "08"),
        song: bool = True,
    ) -> Path:
        nonlocal made
        made += 1
        root = tmp_path / f"ravdess{made}"
        seed = 0
        for actor in actors:
            folder = root / f"Actor_{actor:02d}"
            folder.mkdir(parents=True)
            names = [f"03-01-{emotion}-01-01-01-{actor:02d}" for emotion in emotions]
            if song:
                names.append(f"03-02-03-02-02-01-{actor:02d}")
            for index, name in enumerate(names):
                channels = 2 if (actor == 2 and index == 0) else 1
                seconds = 3.0 + 0.5 * (seed % 4)
                sf.write(
                    folder / f"{name}.wav",
                    _tone(seconds, channels, seed),
                    RAVDESS_RATE,
                    subtype="PCM_16",
                )
                seed += 1
        return root

    return make


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `data.cache_dir` for the end-to-end sweep tests: the synthetic corpus, its features
    and the emotion judge are made by the first test that needs them and loaded by the rest
    (the product's own cache, keyed by content and settings), instead of once per test."""
    return tmp_path_factory.mktemp("sweep-cache")
