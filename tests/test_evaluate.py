"""Evaluation metrics, plots and `evaluate_checkpoint` on a tiny model trained on hand-made data."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emovae.checkpoint import build_model, load_model
from emovae.config import FeatureConfig, TrainConfig
from emovae.data.splits import SpeakerSplit
from emovae.dataset import PreparedData, Split
from emovae.evaluate import (
    DB_PER_LN,
    evaluate_checkpoint,
    latent_silhouette,
    log_spectral_distance,
    plot_latent_pca,
    plot_learning_curves,
    plot_reconstructions,
    reconstruct,
    reconstruction_metrics,
    spectral_convergence,
    spectral_metrics,
    spectral_snr_db,
)
from emovae.features import Normalizer, n_frames
from emovae.griffinlim import spectral_convergence as griffinlim_spectral_convergence
from emovae.loss import TERMS, LossWeights
from emovae.train import evaluate_loss, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEATURES = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, duration=0.5)
EMOTIONS = ["anger", "happiness", "sadness"]
TRAIN = TrainConfig(
    latent_dim=4,
    base_channels=4,
    max_epochs=2,
    batch_size=4,
    device="cpu",
    channels_last=False,
    seed=0,
)
METRIC_KEYS = {
    "test_loss",
    "test_recon",
    "test_spectral",
    "test_kl",
    "test_lsd_db",
    "test_spectral_convergence",
    "test_snr_db",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log_mels(rng: np.random.Generator, labels: list[int]) -> np.ndarray:
    """Natural-log mel power with one formant-like band per emotion, plus noise."""
    bins = np.arange(FEATURES.n_mels)[:, None]
    frames = n_frames(FEATURES)
    out = []
    for label in labels:
        centre = 6 + 10 * label + rng.normal(0, 1)
        band = 8.0 * np.exp(-0.5 * ((bins - centre) / 2.5) ** 2)
        envelope = np.sin(np.linspace(0, np.pi, frames))[None, :]
        out.append(-8.0 + band * envelope + rng.normal(0, 0.3, (FEATURES.n_mels, frames)))
    return np.stack(out).astype(np.float32)


def _make_data(root: Path, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)
    raw = {}
    for name, speakers in (("train", ["01", "02"]), ("val", ["03"]), ("test", ["04"])):
        labels = [c for _ in speakers for c in range(len(EMOTIONS)) for _ in range(3)]
        spk = [s for s in speakers for _ in range(3 * len(EMOTIONS))]
        raw[name] = (_log_mels(rng, labels), labels, spk)
    normalizer = Normalizer.fit(raw["train"][0])
    splits = {
        name: Split(
            features=torch.from_numpy(normalizer.normalize(mels)).unsqueeze(1),
            labels=torch.tensor(labels, dtype=torch.int64),
            speakers=spk,
            paths=[f"{s}_{i:02d}.wav" for i, s in enumerate(spk)],
        )
        for name, (mels, labels, spk) in raw.items()
    }
    return PreparedData(
        **splits,
        label_names=list(EMOTIONS),
        normalizer=normalizer,
        features=FEATURES,
        speaker_split=SpeakerSplit(["01", "02"], ["03"], ["04"], seed),
        corpus_path="hand-made",
        fingerprint="test",
        split_file=root / "split.json",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedData, Path, list[dict]]:
    root = tmp_path_factory.mktemp("trained")
    data = _make_data(root)
    result = train(TRAIN, data, root / "run")
    return data, result.best_checkpoint, result.history


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == PNG_SIGNATURE


# --- metric functions on known inputs ---------------------------------------------------------


def test_identical_spectrograms_are_perfect() -> None:
    rng = np.random.default_rng(1)
    power = rng.uniform(0.1, 2.0, (3, 8, 5))
    assert log_spectral_distance(10 * np.log10(power), 10 * np.log10(power)) == 0.0
    assert spectral_convergence(np.sqrt(power), np.sqrt(power)) == 0.0
    assert spectral_snr_db(power, power) == math.inf


@pytest.mark.parametrize("offset_db", [0.5, 3.0, -6.0])
def test_lsd_of_a_constant_db_offset_is_that_offset(offset_db: float) -> None:
    reference = np.random.default_rng(2).normal(-30, 10, (2, 1, 16, 9))
    assert log_spectral_distance(reference, reference + offset_db) == pytest.approx(abs(offset_db))


def test_lsd_is_rms_over_bins_then_mean_over_frames() -> None:
    reference = np.zeros((1, 4, 2))
    reconstruction = np.zeros((1, 4, 2))
    reconstruction[0, :, 0] = [2.0, 0.0, 0.0, 0.0]  # frame 0: RMS = sqrt(4 / 4) = 1
    reconstruction[0, :, 1] = [3.0, 3.0, 3.0, 3.0]  # frame 1: RMS = 3
    assert log_spectral_distance(reference, reconstruction) == pytest.approx(2.0)


def test_spectral_convergence_and_snr_on_known_errors() -> None:
    rng = np.random.default_rng(3)
    magnitude = rng.uniform(0.1, 1.0, (4, 8, 6))
    assert spectral_convergence(magnitude, 1.1 * magnitude) == pytest.approx(0.1)
    assert spectral_convergence(magnitude, np.zeros_like(magnitude)) == pytest.approx(1.0)
    power = magnitude**2
    # A 10 % power error everywhere: noise energy is 1 % of signal energy, so 20 dB.
    assert spectral_snr_db(power, 1.1 * power) == pytest.approx(20.0)
    assert spectral_snr_db(power, np.zeros_like(power)) == pytest.approx(0.0)


def test_spectral_convergence_of_silent_references() -> None:
    # One implementation for the evaluation and for Griffin-Lim (emovae.spectral): silence
    # rebuilt as silence is an exact match (0, not 0/0), anything else against silence is inf.
    silent, sound = np.zeros((1, 4, 5)), np.ones((1, 4, 5))
    assert spectral_convergence(silent, silent) == 0.0
    assert spectral_convergence(silent, sound) == math.inf
    assert (
        spectral_convergence(np.concatenate([silent, sound]), np.concatenate([silent, sound]))
        == 0.0
    )
    per_item = griffinlim_spectral_convergence(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    assert torch.equal(per_item, torch.zeros(2))
    assert torch.isinf(griffinlim_spectral_convergence(torch.zeros(1, 3), torch.ones(1, 3))).all()


def test_spectral_convergence_is_the_mean_of_the_per_clip_values() -> None:
    rng = np.random.default_rng(5)
    reference, estimate = rng.uniform(0.1, 1.0, (2, 6, 1, 8, 7))
    per_clip = griffinlim_spectral_convergence(
        torch.from_numpy(reference[:, 0]), torch.from_numpy(estimate[:, 0])
    )
    assert spectral_convergence(reference, estimate) == pytest.approx(float(per_clip.mean()))


def test_spectral_metrics_on_log_mels() -> None:
    features = FeatureConfig(log_floor=1e-5)
    reference = np.log(np.random.default_rng(4).uniform(1e-3, 1.0, (2, 8, 6)) + 1e-5)
    perfect = spectral_metrics(reference, reference, features)
    assert perfect == {"lsd_db": 0.0, "spectral_convergence": 0.0, "snr_db": math.inf}
    shifted = spectral_metrics(reference, reference + 4.0 / DB_PER_LN, features)
    assert shifted["lsd_db"] == pytest.approx(4.0)
    assert 0 < shifted["spectral_convergence"] < 1
    assert math.isfinite(shifted["snr_db"])
    # Torch tensors are accepted as well.
    as_tensor = spectral_metrics(torch.from_numpy(reference), torch.from_numpy(reference), features)
    assert as_tensor["lsd_db"] == 0.0
    # A magnitude log-mel 2 dB off is a power log-mel 4 dB off: LSD is in dB of power.
    magnitude = FeatureConfig(power=1.0, log_mode="clamp")
    assert spectral_metrics(reference, reference + 2.0 / DB_PER_LN, magnitude)[
        "lsd_db"
    ] == pytest.approx(4.0)


def test_silhouette_high_for_separated_clusters_and_bounded() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1, 2], 20)
    centres = np.array([[0, 0, 0], [20, 0, 0], [0, 20, 0]])[labels]
    assert latent_silhouette(centres + rng.normal(0, 0.5, (60, 3)), labels) > 0.9
    mixed = latent_silhouette(torch.from_numpy(rng.normal(0, 1, (60, 3))), torch.from_numpy(labels))
    assert -1.0 <= mixed <= 1.0
    assert mixed < 0.2
    assert math.isnan(latent_silhouette(rng.normal(0, 1, (5, 3)), np.zeros(5, dtype=int)))


# --- the model on a split -------------------------------------------------------------------


def test_reconstruct_decodes_the_posterior_mean_in_eval_mode(trained) -> None:
    data, checkpoint, _ = trained
    model = load_model(checkpoint).model
    model.train()  # reconstruct must switch to eval itself
    recon, mu = reconstruct(model, data.test, batch_size=5)
    assert not model.training
    assert recon.shape == data.test.features.shape
    assert mu.shape == (len(data.test), TRAIN.latent_dim)
    with torch.no_grad():
        expected, expected_mu, _ = model(data.test.features, None, sample=False)
    torch.testing.assert_close(recon, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mu, expected_mu, rtol=1e-4, atol=1e-5)
    recon_again, _ = reconstruct(model, data.test, batch_size=64)
    torch.testing.assert_close(recon, recon_again, rtol=1e-4, atol=1e-5)


def test_reconstruct_passes_labels_to_a_conditional_model(trained) -> None:
    data, _, _ = trained
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TRAIN, conditional=True), FEATURES, len(EMOTIONS))
    recon, _ = reconstruct(model, data.test, batch_size=4)
    with torch.no_grad():
        expected, _, _ = model(data.test.features, data.test.labels, sample=False)
        flipped, _, _ = model(data.test.features, (data.test.labels + 1) % 3, sample=False)
    torch.testing.assert_close(recon, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(recon, flipped)


def test_reconstruction_metrics_are_finite_and_match_the_trainer(trained) -> None:
    data, checkpoint, _ = trained
    loaded = load_model(checkpoint)
    metrics = reconstruction_metrics(
        loaded.model, data.test, LossWeights.of(TRAIN), data.normalizer, data.features
    )
    assert set(metrics) == METRIC_KEYS
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["test_lsd_db"] > 0 and metrics["test_spectral_convergence"] > 0
    # Same loss terms as the trainer's validation pass, evaluated on the test split.
    expected = evaluate_loss(
        loaded.model, data.test.features, data.test.labels, LossWeights.of(TRAIN)
    )
    for term in TERMS:  # evaluate_loss also counts active units, which are not a loss term
        assert metrics[f"test_{term}"] == pytest.approx(float(expected[term]), rel=1e-4)
    assert metrics["test_loss"] == pytest.approx(
        metrics["test_recon"]
        + TRAIN.spectral_weight * metrics["test_spectral"]
        + TRAIN.beta * metrics["test_kl"],
        rel=1e-5,
    )
    val = reconstruction_metrics(
        loaded.model,
        data.val,
        LossWeights.of(TRAIN),
        data.normalizer,
        data.features,
        prefix="val",
    )
    assert set(val) == {key.replace("test_", "val_") for key in METRIC_KEYS}


# --- plots ------------------------------------------------------------------------------------


def test_plots_write_valid_pngs(tmp_path: Path, trained) -> None:
    data, _, history = trained
    rng = np.random.default_rng(6)
    spectra = rng.normal(-40, 10, (6, 1, 32, 20))
    path = plot_reconstructions(spectra, spectra + 1, ["anger", "sadness"], tmp_path / "r.png", n=3)
    assert path == tmp_path / "r.png" and _is_png(path)

    mu = rng.normal(0, 1, (30, 5))
    labels = np.repeat([0, 1, 2], 10)
    assert _is_png(plot_latent_pca(mu, labels, EMOTIONS, tmp_path / "sub" / "pca.png"))
    # A 1-D latent cannot give two principal components; it still plots.
    assert _is_png(plot_latent_pca(mu[:, :1], labels, EMOTIONS, tmp_path / "pca1.png"))

    assert _is_png(plot_learning_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="empty history"):
        plot_learning_curves([], tmp_path / "none.png")


# --- evaluate_checkpoint --------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, trained) -> tuple[dict[str, float], Path]:
    """One full evaluation shared by the tests below: drawing the plots is its main cost."""
    data, checkpoint, history = trained
    out_dir = tmp_path_factory.mktemp("evaluated") / "eval"
    return evaluate_checkpoint(checkpoint, data, out_dir, history=history), out_dir


def test_evaluate_checkpoint_writes_metrics_and_plots(trained, evaluated) -> None:
    data, checkpoint, _ = trained
    metrics, out_dir = evaluated
    assert set(metrics) == METRIC_KEYS | {"test_latent_silhouette"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert -1.0 <= metrics["test_latent_silhouette"] <= 1.0
    for name in ("reconstructions.png", "latent_pca.png", "learning_curves.png"):
        assert _is_png(out_dir / name), name
    written = json.loads((out_dir / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    loaded = load_model(checkpoint)
    direct = reconstruction_metrics(
        loaded.model, data.test, LossWeights.of(TRAIN), data.normalizer, data.features
    )
    assert direct == pytest.approx({k: metrics[k] for k in METRIC_KEYS})


def test_evaluate_checkpoint_renormalises_data_scored_with_other_statistics(
    tmp_path: Path, trained, evaluated
) -> None:
    data, checkpoint, _ = trained
    reference, _ = evaluated
    other = Normalizer(data.normalizer.mean + 1.0, data.normalizer.std * 2.0)
    log_mels = data.normalizer.denormalize(data.test.features[:, 0].numpy())
    test = dataclasses.replace(
        data.test, features=torch.from_numpy(other.normalize(log_mels)).unsqueeze(1)
    )
    shifted = dataclasses.replace(data, test=test, normalizer=other)
    metrics = evaluate_checkpoint(checkpoint, shifted, tmp_path)
    assert metrics == pytest.approx(reference, rel=1e-4, abs=1e-5)
    # Without a history there is no learning-curve plot.
    assert not (tmp_path / "learning_curves.png").exists()
    assert _is_png(tmp_path / "reconstructions.png")


def test_evaluate_checkpoint_rejects_other_features(tmp_path: Path, trained) -> None:
    data, checkpoint, _ = trained
    other = dataclasses.replace(data, features=dataclasses.replace(FEATURES, hop_length=128))
    with pytest.raises(ValueError, match="hop_length"):
        evaluate_checkpoint(checkpoint, other, tmp_path / "x")
