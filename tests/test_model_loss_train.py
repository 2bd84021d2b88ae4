"""The VAE's shapes, the loss terms, and the trainer on a tiny synthetic corpus."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

import emovae.train as train_module
from emovae.checkpoint import load_model, read_checkpoint
from emovae.config import DataConfig, FeatureConfig, TrainConfig
from emovae.data.synthetic import generate_synthetic_corpus
from emovae.dataset import PreparedData, prepare_data
from emovae.loss import (
    TERMS,
    LossWeights,
    kl_divergence,
    local_contrast_loss,
    spectral_loss,
    vae_loss,
)
from emovae.models import LOGVAR_LIMIT, VAE
from emovae.train import TrainingDivergedError, evaluate_loss, train

FEATURES = FeatureConfig(n_mels=32, duration=0.75)
BASE = TrainConfig(base_channels=4, latent_dim=4, batch_size=8, num_threads=1)
METRIC_KEYS = {
    *(f"{split}_{term}" for split in ("train", "val") for term in TERMS),
    "val_active_units",
    "epoch",
    "lr",
    "beta",
    "epoch_seconds",
    "is_last_epoch",
}
# Values that differ between otherwise identical runs (wall time) or by design (the flag
# depends on max_epochs).
UNREPEATABLE = {"epoch_seconds", "is_last_epoch"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_mels", "frames"), [(80, 87), (128, 173), (80, 431), (128, 431), (32, 65), (17, 33)]
)
def test_vae_output_has_the_input_shape(n_mels: int, frames: int) -> None:
    torch.manual_seed(0)
    model = VAE(n_mels, frames, latent_dim=3, base_channels=2)
    x = torch.randn(2, 1, n_mels, frames)
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (2, 3)
    assert recon.dtype == torch.float32
    assert torch.isfinite(recon).all()
    assert model.encode(x)[0].shape == (2, 3)
    assert model.decode(torch.zeros(2, 3)).shape == x.shape


def test_logvar_is_softly_bounded() -> None:
    torch.manual_seed(0)
    model = VAE(32, 65, latent_dim=3, base_channels=2)
    with torch.no_grad():
        model.to_logvar.bias.fill_(1e4)
        _, logvar = model.encode(torch.randn(2, 1, 32, 65))
    assert (logvar <= LOGVAR_LIMIT).all() and (logvar > LOGVAR_LIMIT - 1e-3).all()


def test_sample_false_decodes_the_mean_deterministically() -> None:
    torch.manual_seed(0)
    model = VAE(32, 65, latent_dim=3, base_channels=2).eval()
    x = torch.randn(2, 1, 32, 65)
    with torch.no_grad():
        first, mu, _ = model(x, sample=False)
        second, _, _ = model(x, sample=False)
        noisy, _, _ = model(x, sample=True)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, model.decode(mu), rtol=0, atol=0)
    assert not torch.equal(first, noisy)


def test_conditional_vae_requires_labels() -> None:
    torch.manual_seed(0)
    model = VAE(32, 65, latent_dim=3, base_channels=2, n_classes=4).eval()
    x = torch.randn(2, 1, 32, 65)
    for call in (
        lambda: model(x),
        lambda: model.encode(x),
        lambda: model.decode(torch.zeros(2, 3)),
        lambda: model.sample(2),
    ):
        with pytest.raises(ValueError, match="conditional: pass the emotion labels"):
            call()
    with torch.no_grad():
        recon, mu, _ = model(x, torch.tensor([0, 3]), sample=False)
        other, _, _ = model(x, torch.tensor([1, 2]), sample=False)
    assert recon.shape == x.shape and mu.shape == (2, 3)
    assert not torch.allclose(recon, other)  # the label conditions the output
    z = torch.zeros(1, 3)
    with torch.no_grad():
        decoded = [model.decode(z, torch.tensor([k])) for k in range(4)]
    assert len({round(float(d.sum()), 4) for d in decoded}) == 4


def test_sample_shape_and_determinism_with_a_seeded_generator() -> None:
    torch.manual_seed(0)
    model = VAE(32, 65, latent_dim=5, base_channels=2).eval()
    first = model.sample(3, generator=torch.Generator().manual_seed(7))
    second = model.sample(3, generator=torch.Generator().manual_seed(7))
    other = model.sample(3, generator=torch.Generator().manual_seed(8))
    assert first.shape == (3, 1, 32, 65)
    assert not first.requires_grad
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    # The samples are decodes of z ~ N(0, I) drawn from that generator.
    z = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(first, model.decode(z), rtol=0, atol=0)

    conditional = VAE(32, 65, latent_dim=5, base_channels=2, n_classes=3).eval()
    labels = torch.tensor([0, 1, 2, 2])
    drawn = conditional.sample(4, labels, generator=torch.Generator().manual_seed(1))
    again = conditional.sample(4, labels, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (4, 1, 32, 65)
    torch.testing.assert_close(drawn, again, rtol=0, atol=0)


# --- loss -------------------------------------------------------------------------------------

B, FREQ, TIME = 2, 6, 10  # F != T so a swapped axis shows


def _signs(n: int) -> torch.Tensor:
    return torch.tensor([(-1.0) ** i for i in range(n)])  # zero mean for even n


def _patterns() -> dict[str, torch.Tensor]:
    """Mutually orthogonal (B, 1, F, T) offsets: a constant, a time-only and a frequency-only
    pattern with zero mean, and a checkerboard whose means over either axis are zero."""
    time_only = _signs(TIME)[None, :].expand(FREQ, TIME)
    freq_only = _signs(FREQ)[:, None].expand(FREQ, TIME)
    return {
        name: pattern.reshape(1, 1, FREQ, TIME).expand(B, 1, FREQ, TIME).clone()
        for name, pattern in {
            "constant": torch.ones(FREQ, TIME),
            "time_only": time_only,
            "freq_only": freq_only,
            "checkerboard": time_only * freq_only,
        }.items()
    }


def test_spectral_loss_of_a_temporal_envelope_difference() -> None:
    """Same frequency profile, different temporal envelope: only the envelope term is nonzero,
    and it measures the envelope's difference (a**2), not the pointwise one."""
    target = torch.randn(B, 1, FREQ, TIME, generator=torch.Generator().manual_seed(0))
    recon = target + 0.7 * _patterns()["time_only"]
    torch.testing.assert_close(recon.mean(dim=-1), target.mean(dim=-1))  # profiles match
    assert spectral_loss(recon, target).item() == pytest.approx(0.49, rel=1e-5)


def test_spectral_loss_of_a_frequency_profile_difference() -> None:
    target = torch.randn(B, 1, FREQ, TIME, generator=torch.Generator().manual_seed(1))
    recon = target + 0.3 * _patterns()["freq_only"]
    torch.testing.assert_close(recon.mean(dim=-2), target.mean(dim=-2))  # envelopes match
    assert spectral_loss(recon, target).item() == pytest.approx(0.09, rel=1e-5)


def test_spectral_loss_ignores_what_averages_out_over_both_axes() -> None:
    """A checkerboard error has the right profile and envelope: spectral loss 0, MSE c**2.
    Averaging one term over the channel axis (the reference's bug) turns it into the plain MSE
    and would give c**2 here."""
    target = torch.randn(B, 1, FREQ, TIME, generator=torch.Generator().manual_seed(2))
    recon = target + 0.5 * _patterns()["checkerboard"]
    assert F.mse_loss(recon, target).item() == pytest.approx(0.25, rel=1e-5)
    assert spectral_loss(recon, target).item() == pytest.approx(0.0, abs=1e-6)
    channel_bug = F.mse_loss(recon.mean(dim=1), target.mean(dim=1)) + F.mse_loss(
        recon.mean(dim=-2), target.mean(dim=-2)
    )
    assert channel_bug.item() == pytest.approx(0.25, rel=1e-5)


def test_spectral_loss_is_the_sum_of_both_terms_and_differs_from_mse() -> None:
    p = _patterns()
    a, b, c, k = 0.7, 0.3, 0.5, 0.2
    target = torch.randn(B, 1, FREQ, TIME, generator=torch.Generator().manual_seed(3))
    recon = target + a * p["time_only"] + b * p["freq_only"] + c * p["checkerboard"]
    assert spectral_loss(recon, target).item() == pytest.approx(a**2 + b**2, rel=1e-5)
    assert F.mse_loss(recon, target).item() == pytest.approx(a**2 + b**2 + c**2, rel=1e-5)
    # A constant offset shows in the profile and in the envelope.
    assert spectral_loss(target + k, target).item() == pytest.approx(2 * k**2, rel=1e-4)
    # Random tensors: the definition, with frequency = dim -2 and time = dim -1.
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 1, 7, 11, generator=g), torch.randn(3, 1, 7, 11, generator=g)
    expected = ((x.mean(-1) - y.mean(-1)) ** 2).mean() + ((x.mean(-2) - y.mean(-2)) ** 2).mean()
    torch.testing.assert_close(spectral_loss(x, y), expected)
    assert not math.isclose(spectral_loss(x, y).item(), F.mse_loss(x, y).item(), rel_tol=0.05)


def test_kl_is_summed_over_latent_dims_and_averaged_over_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    reference = torch.distributions.kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros(5, 7), torch.ones(5, 7))
    )
    torch.testing.assert_close(kl_divergence(mu, logvar), reference.sum(dim=1).mean())
    # Sum, not mean, over dims: twice the dims (same values) is twice the KL; batch is a mean.
    doubled = kl_divergence(torch.cat([mu, mu], 1), torch.cat([logvar, logvar], 1))
    torch.testing.assert_close(doubled, 2 * kl_divergence(mu, logvar))
    stacked = kl_divergence(torch.cat([mu, mu]), torch.cat([logvar, logvar]))
    torch.testing.assert_close(stacked, kl_divergence(mu, logvar))
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def _loss_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    """A reconstruction (requiring grad), its target, and a posterior's mu and logvar."""
    g = torch.Generator().manual_seed(seed)
    recon = torch.randn(4, 1, 8, 12, generator=g, requires_grad=True)
    target = torch.randn(4, 1, 8, 12, generator=g)
    return recon, target, torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)


def test_total_loss_is_recon_plus_weighted_spectral_plus_beta_kl() -> None:
    recon, target, mu, logvar = _loss_inputs(5)
    terms = vae_loss(recon, target, mu, logvar, LossWeights(beta=0.3, spectral_weight=0.7))
    assert set(terms) == set(TERMS)
    torch.testing.assert_close(terms["recon"], F.mse_loss(recon, target))
    torch.testing.assert_close(terms["spectral"], spectral_loss(recon, target))
    torch.testing.assert_close(terms["kl"], kl_divergence(mu, logvar))
    torch.testing.assert_close(
        terms["loss"], terms["recon"] + 0.7 * terms["spectral"] + 0.3 * terms["kl"]
    )
    assert vae_loss(recon, target, mu, logvar, LossWeights(beta=0.0))[
        "loss"
    ].item() == pytest.approx((terms["recon"] + 0.5 * terms["spectral"]).item(), rel=1e-6)
    terms["loss"].backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_an_l1_reconstruction_trains_on_l1_and_still_reports_the_mse() -> None:
    recon, target, mu, logvar = _loss_inputs(6)
    mse = vae_loss(recon, target, mu, logvar, LossWeights(beta=0.3, spectral_weight=0.7))
    l1 = vae_loss(recon, target, mu, logvar, LossWeights(0.3, 0.7, recon_loss="l1"))
    # The reported terms are the same: a sweep's val_recon compares both on the MSE.
    for name in ("recon", "spectral", "kl"):
        torch.testing.assert_close(l1[name], mse[name])
    torch.testing.assert_close(
        l1["loss"], F.l1_loss(recon, target) + 0.7 * l1["spectral"] + 0.3 * l1["kl"]
    )
    assert not torch.isclose(l1["loss"], mse["loss"])
    # What trains is the L1: its gradient on recon is sign(error) / N, not 2 error / N.
    (l1["loss"] - 0.7 * l1["spectral"]).backward()
    torch.testing.assert_close(recon.grad, torch.sign(recon - target).detach() / recon.numel())
    with pytest.raises(ValueError, match="recon_loss: expected one of"):
        LossWeights(beta=0.3, recon_loss="huber")


def test_a_contrast_weight_adds_that_multiple_of_the_local_contrast_term() -> None:
    recon, target, mu, logvar = _loss_inputs(7)
    plain = vae_loss(recon, target, mu, logvar, LossWeights(beta=0.3))
    contrast = vae_loss(recon, target, mu, logvar, LossWeights(beta=0.3, contrast_weight=4.0))
    for name in ("recon", "spectral", "kl"):
        torch.testing.assert_close(contrast[name], plain[name])
    steps = [F.mse_loss(recon.diff(dim=a), target.diff(dim=a)) for a in (-2, -1)]
    torch.testing.assert_close(contrast["loss"], plain["loss"] + 4.0 * sum(steps))
    # A flattened peak and the peak off by a level are equally far by the MSE; local contrast
    # ignores the level and pays for the flattening.
    peak = torch.zeros(1, 1, 5, 2)
    peak[0, 0, 2] = 1.0
    flat, shifted = torch.full_like(peak, 0.2), peak + 0.4
    torch.testing.assert_close(F.mse_loss(flat, peak), F.mse_loss(shifted, peak))
    assert local_contrast_loss(shifted, peak).item() == pytest.approx(0.0, abs=1e-7)
    assert local_contrast_loss(flat, peak).item() > 0.1


# --- train ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("synthetic")
    corpus = generate_synthetic_corpus(
        root, n_speakers=5, per_emotion=1, duration=FEATURES.duration, seed=0
    )
    prepared = prepare_data(DataConfig(path=str(corpus), cache_dir=str(root / "cache")), FEATURES)
    assert (len(prepared.train), len(prepared.val)) == (21, 7)
    return prepared


class Recorder:
    """on_epoch callback: keeps a copy of each epoch's metrics and what was on disk then."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.dirs: list[Path] = []
        self.last_epoch_on_disk: list[int] = []
        self.rng_states: dict[int, torch.Tensor] = {}

    def __call__(self, metrics: dict[str, float], out_dir: Path) -> None:
        self.metrics.append(dict(metrics))
        self.dirs.append(out_dir)
        self.last_epoch_on_disk.append(read_checkpoint(out_dir / "last.pt")["epoch"])
        # Nothing draws from the global RNG between this call and the next epoch.
        self.rng_states[int(metrics["epoch"])] = torch.get_rng_state()


def _comparable(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in UNREPEATABLE} for h in history]


WARMUP = dataclasses.replace(BASE, max_epochs=6, kl_warmup_epochs=3)


@pytest.fixture(scope="module")
def straight(data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("straight")
    recorder = Recorder()
    result = train(WARMUP, data, out, on_epoch=recorder)
    return {"result": result, "recorder": recorder, "out": out}


def test_training_loss_falls(straight: dict[str, Any]) -> None:
    losses = [h["train_loss"] for h in straight["result"].history]
    recons = [h["train_recon"] for h in straight["result"].history]
    assert len(losses) == 6
    assert losses[-1] < 0.9 * losses[0], losses
    assert recons[-1] < 0.9 * recons[0], recons
    assert min(losses[3:]) < min(losses[:3])


def test_on_epoch_is_called_once_per_epoch_with_the_metrics(straight: dict[str, Any]) -> None:
    recorder, result = straight["recorder"], straight["result"]
    assert [m["epoch"] for m in recorder.metrics] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert recorder.dirs == [straight["out"]] * 6
    for metrics in recorder.metrics:
        assert set(metrics) == METRIC_KEYS
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
        assert metrics["lr"] == BASE.lr
    assert recorder.metrics == result.history
    # last.pt of the epoch is on disk when the callback runs (a sweep reports it then).
    assert recorder.last_epoch_on_disk == [1, 2, 3, 4, 5, 6]


def test_best_and_last_checkpoints_follow_the_validation_loss(
    straight: dict[str, Any], data: PreparedData
) -> None:
    result, out = straight["result"], straight["out"]
    assert result.best_checkpoint == out / "best.pt" and result.best_checkpoint.is_file()
    assert result.last_checkpoint == out / "last.pt" and result.last_checkpoint.is_file()
    val_losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == 1 + val_losses.index(min(val_losses))
    assert result.best_metrics == result.history[result.best_epoch - 1]
    assert not result.stopped_early

    best = load_model(result.best_checkpoint)
    assert best.epoch == result.best_epoch
    assert best.metrics["val_loss"] == min(val_losses)
    # The monitored value is the loss on the validation split, decoding the posterior mean.
    recomputed = evaluate_loss(
        best.model, data.val.features, data.val.labels, LossWeights(BASE.beta)
    )
    assert recomputed["loss"].item() == pytest.approx(best.metrics["val_loss"], rel=1e-5)
    train_loss = evaluate_loss(
        best.model, data.train.features, data.train.labels, LossWeights(BASE.beta)
    )
    assert train_loss["loss"].item() != pytest.approx(best.metrics["val_loss"], rel=1e-3)

    last = read_checkpoint(result.last_checkpoint)
    assert last["epoch"] == 6
    assert {"optimizer", "scheduler", "generator", "history", "best_value", "best_epoch"} <= set(
        last
    )
    assert last["best_epoch"] == result.best_epoch
    assert len(last["history"]) == 6


def test_kl_warmup_ramps_beta_linearly(straight: dict[str, Any]) -> None:
    betas = [h["beta"] for h in straight["result"].history]
    expected = [BASE.beta * e / 3 for e in (1, 2, 3)] + [BASE.beta] * 3
    assert betas == pytest.approx(expected, rel=1e-12)
    no_warmup = train_module.effective_beta(dataclasses.replace(BASE, kl_warmup_epochs=0), 1)
    assert no_warmup == BASE.beta


def test_is_last_epoch_is_set_exactly_on_the_final_epoch(straight: dict[str, Any]) -> None:
    assert [h["is_last_epoch"] for h in straight["result"].history] == [0, 0, 0, 0, 0, 1]


# --- resume -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("resumed")
    first = train(dataclasses.replace(WARMUP, max_epochs=2), data, out)
    first_last = read_checkpoint(out / "last.pt")
    recorder = Recorder()
    second = train(
        dataclasses.replace(WARMUP, max_epochs=4),
        data,
        out,
        on_epoch=recorder,
        resume_from=out / "last.pt",
    )
    return {"first": first, "first_last": first_last, "second": second, "recorder": recorder}


def test_resume_continues_from_last_pt(resumed: dict[str, Any], straight: dict[str, Any]) -> None:
    """What a resumed run reproduces exactly: everything up to the checkpoint, the epoch count,
    the KL warm-up and the learning rate; and it keeps training (finite, still improving)."""
    first, second = resumed["first"], resumed["second"]
    reference = straight["result"].history
    assert _comparable(first.history) == _comparable(reference[:2])
    assert [h["epoch"] for h in second.history] == [1.0, 2.0, 3.0, 4.0]
    assert second.history[:2] == first.history  # history is carried over, not recomputed
    assert [m["epoch"] for m in resumed["recorder"].metrics] == [3.0, 4.0]  # only new epochs
    for resumed_epoch, straight_epoch in zip(second.history[2:], reference[2:4], strict=True):
        assert resumed_epoch["beta"] == straight_epoch["beta"]
        assert resumed_epoch["lr"] == straight_epoch["lr"]
        assert all(math.isfinite(v) for v in resumed_epoch.values())
        # Same weights, optimiser and batches: the epochs agree to well within 10 %, though
        # (exactness is checked in test_resume_reproduces_the_straight_run).
        assert resumed_epoch["train_loss"] == pytest.approx(straight_epoch["train_loss"], rel=0.1)
    assert second.history[-1]["train_loss"] < second.history[0]["train_loss"]
    assert [h["is_last_epoch"] for h in second.history] == [0, 1, 0, 1]  # 1st run ended at 2
    assert second.best_epoch == 1 + min(range(4), key=lambda i: second.history[i]["val_loss"])


def test_resume_reproduces_the_straight_run(
    resumed: dict[str, Any], straight: dict[str, Any]
) -> None:
    expected = _comparable(straight["result"].history[:4])
    actual = _comparable(resumed["second"].history)
    for got, want in zip(actual, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


# --- early stopping, monitor, divergence ------------------------------------------------------


def _non_buffer_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in state["model"].items() if "running_" not in k and "num_batches" not in k
    }


def test_early_stopping_when_nothing_improves(data: PreparedData, tmp_path: Path) -> None:
    config = dataclasses.replace(BASE, lr=0.0, patience=2, max_epochs=10)
    result = train(config, data, tmp_path)
    history = result.history
    assert result.stopped_early
    assert len(history) < config.max_epochs
    # Stops on the first epoch that makes `patience` epochs in a row without improvement.
    best, bad, stop = math.inf, 0, None
    for h in history:
        best, bad = (h["val_loss"], 0) if h["val_loss"] < best else (best, bad + 1)
        if bad >= config.patience:
            stop = int(h["epoch"])
            break
    assert stop == len(history)
    assert [h["is_last_epoch"] for h in history] == [0.0] * (len(history) - 1) + [1.0]
    assert all(h["lr"] == 0.0 for h in history)
    # lr 0 leaves the weights as they were (only BatchNorm statistics move).
    best_state, last_state = (
        read_checkpoint(tmp_path / "best.pt"),
        read_checkpoint(tmp_path / "last.pt"),
    )
    assert last_state["epoch"] == len(history)
    for name, tensor in _non_buffer_weights(best_state).items():
        torch.testing.assert_close(_non_buffer_weights(last_state)[name], tensor, rtol=0, atol=0)


class ScriptedValidation:
    """Stands in for evaluate_loss on the validation split with scripted values per epoch."""

    def __init__(self, values: list[dict[str, float]]) -> None:
        self.values = values
        self.calls = 0

    def __call__(self, model, features, labels, weights):
        values = self.values[self.calls]
        self.calls += 1
        return {name: torch.tensor(values.get(name, 1.0)) for name in TERMS}


def test_monitor_selects_the_validation_metric(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """val_loss keeps falling, val_recon rises: monitoring val_recon, the best epoch is 1 and
    training stops after `patience` epochs; monitoring val_loss would do neither."""
    script = ScriptedValidation(
        [{"loss": 5.0 - e, "recon": 1.0 + e} for e in range(4)]  # epochs 1..4
    )
    monkeypatch.setattr(train_module, "evaluate_loss", script)
    config = dataclasses.replace(BASE, monitor="val_recon", patience=2, max_epochs=4)
    result = train(config, data, tmp_path)
    assert [h["val_loss"] for h in result.history] == [5.0, 4.0, 3.0]
    assert [h["val_recon"] for h in result.history] == [1.0, 2.0, 3.0]
    assert result.best_epoch == 1 and result.stopped_early
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert result.best_metrics["val_recon"] == 1.0


@pytest.mark.parametrize("monitor", ["train_loss", "loss", "val_kl"])
def test_monitor_must_be_a_validation_loss_or_recon(data: PreparedData, monitor: str) -> None:
    with pytest.raises(ValueError, match=f"monitor: unknown value '{monitor}'"):
        train(dataclasses.replace(BASE, monitor=monitor), data, "/nonexistent/never-created")


def test_divergence_raises_and_writes_no_checkpoint(data: PreparedData, tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(TrainingDivergedError, match="epoch 1: non-finite"):
        train(dataclasses.replace(BASE, lr=1e30, max_epochs=3), data, tmp_path, recorder)
    assert not (tmp_path / "best.pt").exists()
    assert not (tmp_path / "last.pt").exists()
    assert recorder.metrics == []


def test_a_nan_epoch_leaves_the_previous_best(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = ScriptedValidation([{"loss": 2.0}, {"loss": math.nan}, {"loss": 1.0}])
    monkeypatch.setattr(train_module, "evaluate_loss", script)
    recorder = Recorder()
    with pytest.raises(TrainingDivergedError, match="epoch 2: non-finite val_loss"):
        train(dataclasses.replace(BASE, max_epochs=3), data, tmp_path, recorder)
    assert [m["epoch"] for m in recorder.metrics] == [1.0]
    for name in ("best.pt", "last.pt"):
        state = read_checkpoint(tmp_path / name)
        assert state["epoch"] == 1
        assert all(math.isfinite(v) for v in state["metrics"].values())


# --- epoch_metrics ----------------------------------------------------------------------------


class ExtraMetrics:
    """epoch_metrics callback: records its calls and the model's mode, returns one finite and
    one NaN value, and leaves the model in train mode to check the trainer restores it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, bool]] = []

    def __call__(self, model: VAE, epoch: int, is_last_epoch: bool) -> dict[str, float]:
        self.calls.append((epoch, is_last_epoch, model.training))
        model.train()
        return {"val_extra": 10.0 * epoch, "val_undefined": math.nan}


def test_epoch_metrics_join_history_checkpoints_and_on_epoch(
    data: PreparedData, tmp_path: Path
) -> None:
    extra, recorder = ExtraMetrics(), Recorder()
    config = dataclasses.replace(BASE, max_epochs=3)
    result = train(config, data, tmp_path, on_epoch=recorder, epoch_metrics=extra)
    # Called once per epoch after validation (the model is in eval mode then), with the flag.
    assert extra.calls == [(1, False, False), (2, False, False), (3, True, False)]
    assert [h["val_extra"] for h in result.history] == [10.0, 20.0, 30.0]
    assert all(math.isnan(h["val_undefined"]) for h in result.history)  # NaN is allowed
    assert [m["val_extra"] for m in recorder.metrics] == [10.0, 20.0, 30.0]
    assert set(recorder.metrics[0]) == METRIC_KEYS | {"val_extra", "val_undefined"}
    last = read_checkpoint(tmp_path / "last.pt")
    assert last["metrics"]["val_extra"] == 30.0
    assert [h["val_extra"] for h in last["history"]] == [10.0, 20.0, 30.0]
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["metrics"]["val_extra"] == 10.0 * best["epoch"]


def test_epoch_metrics_leave_the_model_mode_and_the_trainer_keys_alone(
    data: PreparedData, tmp_path: Path
) -> None:
    models: list[VAE] = []
    modes_seen_by_on_epoch: list[bool] = []

    def flip_mode(model: VAE, epoch: int, is_last_epoch: bool) -> dict[str, float]:
        models.append(model)
        model.train()  # the trainer must put back the mode it called with
        return {}

    train(
        dataclasses.replace(BASE, max_epochs=1),
        data,
        tmp_path / "mode",
        on_epoch=lambda metrics, folder: modes_seen_by_on_epoch.append(models[-1].training),
        epoch_metrics=flip_mode,
    )
    assert modes_seen_by_on_epoch == [False]  # eval mode, as after validation
    with pytest.raises(ValueError, match=r"epoch_metrics: returned the trainer's own.*val_loss"):
        train(
            dataclasses.replace(BASE, max_epochs=1),
            data,
            tmp_path / "clash",
            epoch_metrics=lambda model, epoch, last: {"val_loss": 0.0},
        )
