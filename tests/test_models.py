"""The time-resolved VAE, its diffusion prior, label dropout and emotion conversion."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emovae.checkpoint import load_model
from emovae.config import ConfigError, DataConfig, FeatureConfig, TrainConfig
from emovae.data.synthetic import generate_synthetic_corpus
from emovae.dataset import PreparedData, prepare_data
from emovae.evaluate import condition_labels, honest_label_mode, latent_summary
from emovae.loss import kl_divergence, local_contrast_loss, spectral_loss
from emovae.models import LatentDiffusionPrior, TemporalVAE, build_model
from emovae.train import _decoder_labels, finetune_prior, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURES = FeatureConfig(n_mels=32, duration=0.75)
TEMPORAL = TrainConfig(
    arch="temporal",
    latent_dim=4,
    hidden_channels=16,
    prior="diffusion",
    prior_channels=16,
    prior_steps=4,
    conditional=True,
    batch_size=8,
    num_threads=1,
    max_epochs=2,
)


# --- architecture -----------------------------------------------------------------------------


@pytest.mark.parametrize(("frames", "downsample"), [(65, 0), (65, 1), (173, 1), (33, 2)])
def test_temporal_vae_keeps_the_input_shape_and_resolves_time(frames: int, downsample: int) -> None:
    torch.manual_seed(0)
    model = TemporalVAE(32, frames, latent_dim=3, hidden_channels=16, time_downsample=downsample)
    x = torch.randn(2, 1, 32, frames)
    recon, mu, logvar = model(x)
    latent_frames = -(-frames // 2**downsample)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (2, 3, latent_frames)
    assert model.sample(2).shape == x.shape


def test_the_encoder_ignores_the_label_and_the_decoder_can_withhold_it() -> None:
    torch.manual_seed(0)
    model = TemporalVAE(32, 65, latent_dim=3, hidden_channels=16, n_classes=3).eval()
    x = torch.randn(2, 1, 32, 65)
    with torch.no_grad():
        mu_a, _ = model.encode(x, torch.tensor([0, 1]))
        mu_b, _ = model.encode(x, torch.tensor([2, 2]))
        withheld = model.decode(mu_a)
        explicit = model.decode(mu_a, torch.full((2,), model.withheld_label))
        labelled = model.decode(mu_a, torch.tensor([0, 1]))
    torch.testing.assert_close(mu_a, mu_b)
    torch.testing.assert_close(withheld, explicit)
    assert not torch.allclose(withheld, labelled)
    assert model.withheld_label == 3


def test_label_dropout_withholds_about_its_share() -> None:
    model = TemporalVAE(32, 65, latent_dim=3, hidden_channels=16, n_classes=3)
    torch.manual_seed(0)
    labels = torch.zeros(10_000, dtype=torch.int64)
    dropped = _decoder_labels(model, labels, 0.2) == model.withheld_label
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert _decoder_labels(model, labels, 0.0) is labels


def test_label_modes_of_reconstructions() -> None:
    temporal = TemporalVAE(32, 65, latent_dim=3, hidden_channels=16, n_classes=3)
    seed = build_model(TrainConfig(latent_dim=3, base_channels=2, conditional=True), FEATURES, 3)
    labels = torch.tensor([0, 1, 2])
    assert honest_label_mode(temporal) == "withheld"
    assert honest_label_mode(seed) == "swapped"
    assert condition_labels(temporal, labels) is None
    assert condition_labels(seed, labels, "swapped").tolist() == [1, 2, 0]
    assert condition_labels(seed, labels).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot withhold"):
        condition_labels(seed, labels, "withheld")


def test_a_time_resolved_latent_is_summarised_per_clip() -> None:
    mu = torch.arange(24.0).reshape(2, 3, 4)
    summary = latent_summary(mu)
    assert summary.shape == (2, 6)
    assert summary[0, 0] == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "seed", "prior": "diffusion"}, "train.prior: diffusion needs train.arch"),
        ({"arch": "transformer"}, "train.arch: expected one of seed, temporal"),
        ({"label_dropout": 1.0}, r"train.label_dropout: expected a number in \[0, 1\)"),
        ({"guidance": 0.5}, r"train.guidance: expected a number >= 1 \(1: no guidance\)"),
        ({"prior_eta": 1.5}, r"train.prior_eta: expected a number in \[0, 1\] \(0: determ"),
        ({"label_dropout": 0.0}, "classifier-free guidance needs train.label_dropout > 0"),
    ],
)
def test_bad_model_settings_are_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(TEMPORAL, **changes)


# --- diffusion prior --------------------------------------------------------------------------


def _class_latents(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents whose every value is the class index times 2, plus a little noise."""
    labels = torch.arange(n) % 3
    z = 2.0 * labels[:, None, None].float() + 0.1 * torch.randn(n, 2, 8)
    return z, labels


def test_the_prior_learns_a_class_conditional_distribution() -> None:
    torch.manual_seed(0)
    prior = LatentDiffusionPrior(2, channels=16, n_classes=3, label_dropout=0.2, sample_steps=20)
    optimiser = torch.optim.Adam(prior.parameters(), lr=3e-3)
    prior.train()
    for _ in range(400):
        z, labels = _class_latents(48)
        loss = prior.loss(z, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    prior.eval()
    labels = torch.tensor([0, 1, 2] * 10)
    samples = prior.sample(30, 8, labels, torch.Generator().manual_seed(0))
    per_class = [samples[labels == c].mean().item() for c in range(3)]
    # Each class's samples sit at its own value (0, 2, 4), far apart from the others.
    assert per_class == pytest.approx([0.0, 2.0, 4.0], abs=0.5)
    # The running statistics saw the latents' scale: mean 2, spread about 1.6.
    assert prior.latent_mean.mean().item() == pytest.approx(2.0, abs=0.3)


def test_prior_statistics_move_only_in_training_and_sampling_is_seeded() -> None:
    torch.manual_seed(0)
    prior = LatentDiffusionPrior(2, channels=16, n_classes=3, sample_steps=3).eval()
    z, labels = _class_latents(12)
    prior.loss(z, labels)
    assert not bool(prior.stats_seen)
    prior.train()
    prior.loss(z, labels)
    assert bool(prior.stats_seen)
    prior.eval()
    first = prior.sample(4, 8, labels[:4], torch.Generator().manual_seed(5))
    again = prior.sample(4, 8, labels[:4], torch.Generator().manual_seed(5))
    other = prior.sample(4, 8, labels[:4], torch.Generator().manual_seed(6))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_stochastic_sampling_keeps_the_data_distribution_and_is_seeded(eta: float) -> None:
    # For data ~ N(0, I) the exact v-prediction is 0, which is what an untrained denoiser
    # (zeroed output layer) predicts: with many steps every eta must give back unit variance.
    # Fresh noise that did not shrink the predicted noise's share would overshoot it.
    prior = LatentDiffusionPrior(4, channels=16, sample_steps=200, eta=eta).eval()
    samples = prior.sample(1000, 16, generator=torch.Generator().manual_seed(0))
    assert samples.var().item() == pytest.approx(1.0, abs=0.04)
    assert samples.mean().item() == pytest.approx(0.0, abs=0.02)
    prior.sample_steps = 4
    first = prior.sample(3, 8, generator=torch.Generator().manual_seed(1))
    again = prior.sample(3, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    deterministic = LatentDiffusionPrior(4, channels=16, sample_steps=4).eval()
    same_start = deterministic.sample(3, 8, generator=torch.Generator().manual_seed(1))
    # The starting noise is the same draw; only eta's fresh noise tells the two apart.
    assert torch.allclose(first, same_start) == (eta == 0.0)


def test_a_lower_temperature_shrinks_the_starting_noise_only() -> None:
    # With the untrained denoiser (v = 0) deterministic DDIM is linear in its starting noise,
    # so the same draw at temperature 0.5 must give exactly half of each latent.
    prior = LatentDiffusionPrior(4, channels=16, sample_steps=5).eval()
    full = prior.sample(3, 8, generator=torch.Generator().manual_seed(2))
    prior.temperature = 0.5
    half = prior.sample(3, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(half, 0.5 * full)
    assert full.abs().mean() > 0.1


def test_the_model_builder_gives_the_prior_its_sampling_settings() -> None:
    config = dataclasses.replace(TEMPORAL, prior_steps=7, guidance=2.5, prior_eta=0.3)
    prior = build_model(config, FEATURES, 3).prior
    assert (prior.sample_steps, prior.guidance, prior.eta) == (7, 2.5, 0.3)


def test_conversion_strength_is_checked_and_a_light_touch_keeps_the_latent() -> None:
    torch.manual_seed(0)
    prior = LatentDiffusionPrior(2, channels=16, n_classes=3, sample_steps=4).eval()
    z, labels = _class_latents(6)
    with pytest.raises(ValueError, match=r"strength: expected a value in \(0, 1\]"):
        prior.convert(z, labels, 0.0)
    # An untrained denoiser predicts v = 0: the result is the noised latent's alpha-scaled
    # value, so a light touch stays near the clip's latent and a full conversion does not.
    light = prior.convert(z, labels, 0.01, torch.Generator().manual_seed(0))
    full = prior.convert(z, labels, 1.0, torch.Generator().manual_seed(0))
    assert (light - z).abs().mean().item() < 0.05
    assert (full - z).abs().mean().item() > 0.5


def test_the_prior_shapes_the_encoder_only_with_its_encoder_weight() -> None:
    torch.manual_seed(0)
    prior = LatentDiffusionPrior(3, channels=16, n_classes=2, sample_steps=4)
    model = TemporalVAE(32, 65, latent_dim=3, hidden_channels=16, n_classes=2, prior=prior)
    x, labels = torch.randn(4, 1, 32, 65), torch.tensor([0, 1, 0, 1])
    # A trained-looking prior: the zero-initialised output layer would give v = 0 and a
    # gradient that reaches nothing before it.
    torch.nn.init.normal_(prior.denoiser.out[-1].weight, std=0.1)

    def gradients(weight: float) -> tuple[torch.Tensor | None, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        mu, _ = model.encode(x)
        loss = model.prior_loss(mu, labels, torch.Generator().manual_seed(1), weight)
        loss.backward()
        return model.to_posterior.weight.grad, prior.denoiser.inp.weight.grad.clone()

    detached, prior_grad = gradients(0.0)
    assert detached is None  # the encoder received nothing
    full, prior_full = gradients(1.0)
    part, prior_part = gradients(0.25)
    assert full is not None and full.abs().sum() > 0
    torch.testing.assert_close(part, 0.25 * full)
    # The prior's own gradient does not depend on the weight.
    torch.testing.assert_close(prior_part, prior_grad)
    torch.testing.assert_close(prior_full, prior_grad)
    with pytest.raises(ConfigError, match="train.prior_encoder_weight: needs train.prior"):
        TrainConfig(prior_encoder_weight=0.1)


# --- training and checkpoints -----------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("synthetic")
    corpus = generate_synthetic_corpus(
        root, n_speakers=5, per_emotion=1, duration=FEATURES.duration, seed=0
    )
    return prepare_data(DataConfig(path=str(corpus), cache_dir=str(root / "cache")), FEATURES)


def test_the_trainer_trains_the_prior_beside_the_vae_and_checkpoints_it(
    data: PreparedData, tmp_path: Path
) -> None:
    result = train(TEMPORAL, data, tmp_path)
    assert all("train_prior" in row and row["train_prior"] > 0 for row in result.history)
    # The VAE's own loss stays the spec's sum; the prior's term is reported beside it.
    row = result.history[-1]
    assert row["train_loss"] == pytest.approx(
        row["train_recon"] + 0.5 * row["train_spectral"] + row["beta"] * row["train_kl"],
        rel=1e-4,
    )
    loaded = load_model(result.last_checkpoint)
    assert isinstance(loaded.model, TemporalVAE) and loaded.model.prior is not None
    assert bool(loaded.model.prior.stats_seen)
    labels = torch.tensor([0, 1])
    first = loaded.model.sample(2, labels, torch.Generator().manual_seed(0))
    again = load_model(result.last_checkpoint).model.sample(
        2, labels, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(first, again)
    assert first.shape == (2, 1, FEATURES.n_mels, data.train.features.shape[-1])


def test_the_prior_is_fine_tuned_alone_on_the_finished_encoder(
    data: PreparedData, tmp_path: Path
) -> None:
    plain = train(TEMPORAL, data, tmp_path / "plain")
    tuned = train(dataclasses.replace(TEMPORAL, prior_finetune_steps=30), data, tmp_path / "tuned")
    before, after = load_model(plain.best_checkpoint), load_model(tuned.best_checkpoint)
    assert "prior_finetune_loss" in after.metrics and "prior_finetune_loss" not in before.metrics
    # Same VAE (same seed, same epochs); only the prior moved.
    for name, value in before.model.state_dict().items():
        if name.startswith("prior."):
            continue
        torch.testing.assert_close(after.model.state_dict()[name], value, msg=name)
    moved = [
        name
        for name, value in before.model.prior.denoiser.state_dict().items()
        if not torch.equal(after.model.prior.denoiser.state_dict()[name], value)
    ]
    assert moved


def test_fine_tuning_the_prior_draws_only_from_its_own_seeded_generator(
    data: PreparedData, tmp_path: Path
) -> None:
    plain = train(TEMPORAL, data, tmp_path / "plain")
    config = dataclasses.replace(TEMPORAL, prior_finetune_steps=10)
    priors = []
    for global_seed in (1, 2):
        checkpoint = tmp_path / f"global{global_seed}.pt"
        shutil.copy(plain.best_checkpoint, checkpoint)
        torch.manual_seed(global_seed)
        finetune_prior(
            checkpoint, data.train.features, data.train.labels, config, torch.device("cpu")
        )
        priors.append(load_model(checkpoint).model.prior.state_dict())
    assert not torch.equal(
        priors[0]["denoiser.out.2.weight"],
        load_model(plain.best_checkpoint).model.prior.state_dict()["denoiser.out.2.weight"],
    )
    for name, value in priors[0].items():
        torch.testing.assert_close(priors[1][name], value, msg=name)


def test_the_fine_tuned_prior_is_saved_as_its_weights_moving_average(
    data: PreparedData, tmp_path: Path
) -> None:
    plain = train(TEMPORAL, data, tmp_path / "plain")
    last = train(dataclasses.replace(TEMPORAL, prior_finetune_steps=30), data, tmp_path / "last")
    # A decay this close to 1 keeps the average at the first step's weights: 29 steps nearer
    # the prior trained beside the VAE than the last step's weights are.
    averaged = train(
        dataclasses.replace(TEMPORAL, prior_finetune_steps=30, prior_ema=0.999999),
        data,
        tmp_path / "averaged",
    )
    before, after_last, after_average = (
        load_model(r.best_checkpoint).model.prior for r in (plain, last, averaged)
    )

    def distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
        return sum(
            float((p - q).detach().pow(2).sum())
            for p, q in zip(a.parameters(), b.parameters(), strict=True)
        )

    assert 0 < distance(after_average, before) < distance(after_last, before) / 4
    # The latent statistics are the live ones, not averaged: as in the run without averaging.
    for name, value in after_last.named_buffers():
        torch.testing.assert_close(dict(after_average.named_buffers())[name], value, msg=name)


def test_bf16_training_runs_under_autocast_and_evaluates_in_fp32(
    data: PreparedData, tmp_path: Path
) -> None:
    full = train(TEMPORAL, data, tmp_path / "fp32")
    half = train(dataclasses.replace(TEMPORAL, precision="bf16"), data, tmp_path / "bf16")
    first, first_bf16 = full.history[0], half.history[0]
    # Same seed, same batches: bf16 rounding moves the numbers a little, not a lot.
    assert first_bf16["train_recon"] != first["train_recon"]
    assert first_bf16["train_recon"] == pytest.approx(first["train_recon"], rel=0.1)
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in half.history)
    loaded = load_model(half.best_checkpoint)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    with pytest.raises(ConfigError, match="train.precision: expected one of fp32, bf16"):
        dataclasses.replace(TEMPORAL, precision="fp16")


def test_an_l1_contrast_model_trains_on_both_reports_the_mse_and_keeps_its_settings(
    data: PreparedData, tmp_path: Path
) -> None:
    config = dataclasses.replace(TEMPORAL, recon_loss="l1", contrast_weight=2.0)
    result = train(config, data, tmp_path)
    loaded = load_model(result.best_checkpoint)
    assert (loaded.train.recon_loss, loaded.train.contrast_weight) == ("l1", 2.0)
    # Validation decodes the posterior means with the label withheld (emovae.train).
    with torch.no_grad():
        recon, mu, logvar = loaded.model(data.val.features, None, sample=False)
    x = data.val.features
    best = result.best_metrics
    assert best["val_recon"] == pytest.approx(float(F.mse_loss(recon, x)), rel=1e-4)
    trained = (
        F.l1_loss(recon, x)
        + TEMPORAL.spectral_weight * spectral_loss(recon, x)
        + 2.0 * local_contrast_loss(recon, x)
    )
    assert best["val_loss"] == pytest.approx(
        float(trained + TEMPORAL.beta * kl_divergence(mu, logvar)), rel=1e-4
    )
    with pytest.raises(ConfigError, match="train.recon_loss: expected one of mse, l1"):
        dataclasses.replace(TEMPORAL, recon_loss="l2")
    with pytest.raises(ConfigError, match="train.contrast_weight: expected"):
        dataclasses.replace(TEMPORAL, contrast_weight=-1.0)
