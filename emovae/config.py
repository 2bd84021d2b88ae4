"""Configuration dataclasses.

Field names are the keys used in config YAML files and in the sweep search spaces
(`search_spaces/*.yaml`), so a hyperparameter has one name everywhere. Unknown keys are an
error at load time, naming the key and the closest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration file or mapping has an unknown key or a value of the wrong type."""


class Range(NamedTuple):
    """The valid values of a numeric field: above `low` and below `high` (None: unbounded), each
    end included or not, optionally a multiple of `multiple_of`; `note` explains the bound or a
    special value, in the error message."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    multiple_of: int = 1
    note: str = ""

    def contains(self, value: float) -> bool:
        # YAML's .nan and .inf are never a valid setting.
        if not math.isfinite(value):
            return False
        if self.low is not None and not (
            value >= self.low if self.low_inclusive else value > self.low
        ):
            return False
        if self.high is not None and not (
            value <= self.high if self.high_inclusive else value < self.high
        ):
            return False
        return self.multiple_of == 1 or value % self.multiple_of == 0

    def describe(self, integer: bool) -> str:
        """E.g. 'an integer >= 1', 'a number in (0, 1)', 'a multiple of 8 >= 8 (why)'."""
        if self.multiple_of > 1:
            kind = f"a multiple of {self.multiple_of}"
        else:
            kind = "an integer" if integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            opening = "[" if self.low_inclusive else "("
            closing = "]" if self.high_inclusive else ")"
            bounds = f"in {opening}{low}, {high}{closing}"
        elif self.low is not None:
            bounds = f"{'>=' if self.low_inclusive else '>'} {low}"
        elif self.high is not None:
            bounds = f"{'<=' if self.high_inclusive else '<'} {high}"
        else:
            bounds = "that is finite"
        return f"{kind} {bounds}" + (f" ({self.note})" if self.note else "")


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_range(value: float, valid: Range, where: str) -> None:
    """Raise a ConfigError naming `where`, the valid range and `value` when it is outside."""
    if not valid.contains(value):
        integer = isinstance(value, int) and not isinstance(value, bool)
        expected = valid.describe(integer)
        if not math.isfinite(value):
            expected = expected.replace("a number", "a finite number", 1)
        raise ConfigError(f"{where}: expected {expected}, got {value}")


def check_ranges(section: str, config: Any, ranges: dict[str, Range]) -> None:
    """Each field of `config` named in `ranges` (None values, where allowed, are skipped)."""
    for name, valid in ranges.items():
        value = getattr(config, name)
        if value is not None:
            check_range(value, valid, f"{section}.{name}")


# np.random.seed (emovae.runtime) and Optuna's RandomState take 0 .. 2^32 - 1, and default_rng
# (the speaker split) refuses negatives: elsewhere a bad seed fails in every trial.
SEED_RANGE = Range(0, 2**32 - 1)


@dataclass
class DataConfig:
    path: str = (
        "synthetic"  # corpus folder, a CSV manifest, or "synthetic" (generated, no download)
    )
    format: str = "auto"  # auto | emodb | ravdess | manifest
    label_set: str = (
        "native"  # native emotions of the corpus, or "shared6" (EmoDB/RAVDESS common six)
    )
    val_fraction: float = 0.15  # share of speakers held out for validation
    test_fraction: float = 0.2  # share of speakers held out for the final test
    split_seed: int = 0
    skip_bad_files: bool = False  # skip unreadable WAVs (listed in the outputs) instead of failing
    cache_dir: str = ".cache/emovae"  # feature cache and generated synthetic corpora
    synthetic_speakers: int = 6  # only for path == "synthetic"
    synthetic_per_emotion: int = 6  # utterances per speaker and emotion, synthetic corpus only

    def __post_init__(self) -> None:
        check_ranges("data", self, DATA_RANGES)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "data.val_fraction + data.test_fraction: expected a sum < 1 (the rest of the "
                f"speakers train), got {self.val_fraction} + {self.test_fraction}"
            )


# The splitting code (emovae.data.splits) refuses a fraction of 0 and holds out at least one
# speaker for each of test and validation, so a split needs 3 speakers; the synthetic corpus has
# at most emovae.data.synthetic.MAX_SPEAKERS speakers and MAX_PER_EMOTION clips per emotion
# (tests check these copies against them: the generator imports scipy, too slow to import here).
DATA_RANGES: dict[str, Range] = {
    "val_fraction": Range(0.0, 1.0, low_inclusive=False, high_inclusive=False),
    "test_fraction": Range(0.0, 1.0, low_inclusive=False, high_inclusive=False),
    "split_seed": SEED_RANGE,
    "synthetic_speakers": Range(3, 99, note="a speaker-independent split needs 3"),
    "synthetic_per_emotion": Range(1, 260),
}


LOG_MODES = ("add", "clamp")
PAD_MODES = ("constant", "reflect")


@dataclass
class FeatureConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    duration: float = 3.0  # seconds after crop/pad; the paper's 10 s padding is mostly silence
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log_floor: float = 1e-5  # keeps silence finite in the log
    power: float = 2.0  # 2: mel of |STFT|^2 (librosa's default); 1: mel of |STFT| (HiFi-GAN's)
    log_mode: str = "add"  # add: log(mel + log_floor); clamp: log(max(mel, log_floor)) (HiFi-GAN)
    pad_mode: str = "constant"  # STFT edge padding: librosa's constant, or HiFi-GAN's reflect

    def __post_init__(self) -> None:
        check_ranges("features", self, FEATURE_RANGES)
        nyquist = self.sample_rate / 2
        check_range(
            self.fmin,
            Range(0.0, nyquist, high_inclusive=False, note="below features.sample_rate / 2"),
            "features.fmin",
        )
        if self.fmax is not None:
            check_range(
                self.fmax,
                Range(
                    self.fmin,
                    nyquist,
                    low_inclusive=False,
                    note="above features.fmin, at most features.sample_rate / 2",
                ),
                "features.fmax",
            )
        for name, allowed in (
            ("power", (1.0, 2.0)),
            ("log_mode", LOG_MODES),
            ("pad_mode", PAD_MODES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"features.{name}: expected one of {', '.join(map(str, allowed))}, got {value!r}"
                )


FEATURE_RANGES: dict[str, Range] = {
    "sample_rate": Range(1),
    "n_fft": Range(1),
    "hop_length": Range(1),
    "n_mels": Range(1),
    "duration": Range(0.0, low_inclusive=False),
    "log_floor": Range(0.0, low_inclusive=False),
}


def clip_frames(features: FeatureConfig) -> int:
    """Frames of a clip of `features.duration` seconds (librosa's centred STFT)."""
    return 1 + round(features.duration * features.sample_rate) // features.hop_length


def max_time_downsample(features: FeatureConfig) -> int:
    """The most stride-2 stages that still shorten the latent: at this many, a clip's latent is
    one frame; each further stage only pads the input to twice the length."""
    return (clip_frames(features) - 1).bit_length()


def check_time_downsample(value: int, features: FeatureConfig, where: str) -> None:
    most = max_time_downsample(features)
    note = f"{most} stages already make a clip's {clip_frames(features)} frames one latent frame"
    check_range(value, Range(0, most, note=note), where)


ARCHS = ("seed", "temporal")
PRIORS = ("gaussian", "diffusion")
PRECISIONS = ("fp32", "bf16")
RECON_LOSSES = ("mse", "l1")  # the reconstruction term that trains (emovae.loss)
# The TrainConfig fields that hold one of a few names; a search space's params are checked
# against them too (sweeps.space_checks).
TRAIN_CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ARCHS,
    "prior": PRIORS,
    "precision": PRECISIONS,
    "recon_loss": RECON_LOSSES,
}


def check_choice(value: object, field_name: str, where: str) -> None:
    allowed = TRAIN_CHOICES[field_name]
    if value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")


@dataclass
class TrainConfig:
    # seed: the spec's 2-D conv VAE, one latent vector per clip (the reference, blurry);
    # temporal: 1-D convs over time, one latent vector per 2^time_downsample frames.
    arch: str = "seed"
    latent_dim: int = 32  # seed: size of the clip's latent; temporal: size per latent frame
    # KL weight; KL is summed over latent dims (see emovae.loss): the reference's 0.1 with its
    # per-dim mean equals 0.1 / 32 here at latent_dim 32.
    beta: float = 0.003125
    lr: float = 3e-4
    grad_clip: float = 0.5  # max global gradient norm; 0 disables clipping
    batch_size: int = 16
    spectral_weight: float = 0.5  # weight of frequency-profile + temporal-envelope MSE
    # The reconstruction term that trains: mse or l1 (emovae.loss); val_recon stays the MSE.
    recon_loss: str = "mse"
    # Weight of the local-contrast term (steps along frequency and time, emovae.loss) in the
    # loss that trains; 0 leaves the spec's loss. val_recon stays the MSE.
    contrast_weight: float = 0.0
    base_channels: int = 32  # encoder widths are base * (1, 2, 4, 8): 32..256 as in the spec
    conditional: bool = False  # condition on the emotion (seed: encoder and decoder; temporal:
    # decoder and prior only, so the latent has to carry the emotion itself)
    hidden_channels: int = 256  # temporal: width of the 1-D convolutions
    time_downsample: int = 1  # temporal: stride-2 stages over time
    label_dropout: float = 0.2  # temporal, conditional: share of steps with the emotion withheld
    # gaussian: sample z ~ N(0, I); diffusion (temporal only): a latent diffusion prior trained
    # beside the VAE on its posterior means (emovae.models.prior)
    prior: str = "gaussian"
    prior_channels: int = 128  # width of the diffusion prior's denoiser
    prior_steps: int = 40  # DDIM steps per sample
    guidance: float = 2.0  # classifier-free guidance for a conditional prior (1 = none)
    # Fresh noise per DDIM step: 0 deterministic DDIM, 1 ancestral sampling (as in DDPM).
    prior_eta: float = 0.0
    # After training: steps of the prior alone on the best epoch's frozen latents (0: none).
    # Sweep trials skip it (their objective is already reported); the finaliser runs it.
    prior_finetune_steps: int = 0
    # Decay of the exponential moving average of the prior's weights over those steps, saved in
    # place of the last step's weights (0: the last step's).
    prior_ema: float = 0.0
    # The share of the prior's loss gradient the encoder receives while they train together:
    # 0, the prior follows the encoder without shaping it; > 0, the encoder is also pulled
    # towards latents the prior can model (as LSGM trains its encoder; Vahdat et al., 2021).
    prior_encoder_weight: float = 0.0
    max_epochs: int = 50
    monitor: str = "val_loss"  # metric for early stopping, LR schedule and best checkpoint
    patience: int = 15  # early-stopping patience in epochs
    lr_factor: float = 0.5  # ReduceLROnPlateau
    lr_patience: int = 5
    min_lr: float = 1e-6
    kl_warmup_epochs: int = 0  # beta ramps linearly from 0 over this many epochs
    weight_decay: float = 0.0
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 = all cores the process may use
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and tensor cores on GPU
    # fp32, or bf16: the training forward pass and loss under torch.autocast (GPUs with bf16
    # tensor cores; on CPUs without AMX it is slower); evaluation always runs in fp32.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in TRAIN_CHOICES:
            check_choice(getattr(self, name), name, f"train.{name}")
        if self.prior == "diffusion" and self.arch != "temporal":
            raise ConfigError(
                "train.prior: diffusion needs train.arch: temporal (a latent over time); "
                f"train.arch is {self.arch!r}"
            )
        check_ranges("train", self, TRAIN_RANGES)
        if self.prior_encoder_weight > 0 and self.prior != "diffusion":
            raise ConfigError(
                "train.prior_encoder_weight: needs train.prior: diffusion (a learned prior to "
                f"shape the encoder); train.prior is {self.prior!r}"
            )
        if self.guidance > 1.0 and self.conditional and self.label_dropout == 0.0:
            raise ConfigError(
                "train.guidance: classifier-free guidance needs train.label_dropout > 0 (the "
                "prior learns the unconditional case from the withheld labels)"
            )


# Also the ranges a search space's params may search in (sweeps.space). Why some bounds:
# patience 0 would stop after the first epoch, improved or not (emovae.train); ReduceLROnPlateau
# needs a factor below 1; the prior's GroupNorm(8) needs channels in multiples of 8. lr 0 is
# allowed: it freezes the weights (the early-stopping test relies on it).
TRAIN_RANGES: dict[str, Range] = {
    "latent_dim": Range(1),
    "beta": Range(0.0),
    "lr": Range(0.0),
    "grad_clip": Range(0.0, note="0: no clipping"),
    "batch_size": Range(1),
    "spectral_weight": Range(0.0),
    "contrast_weight": Range(0.0, note="0: none"),
    "base_channels": Range(1),
    "hidden_channels": Range(1),
    "time_downsample": Range(0),  # and at most max_time_downsample(features): ExperimentConfig
    "label_dropout": Range(0.0, 1.0, high_inclusive=False),
    "prior_channels": Range(8, multiple_of=8, note="the prior's GroupNorm has 8 groups"),
    "prior_steps": Range(1),
    "guidance": Range(1.0, note="1: no guidance"),
    "prior_eta": Range(0.0, 1.0, note="0: deterministic DDIM, 1: ancestral"),
    "prior_finetune_steps": Range(0, note="0: none"),
    "prior_ema": Range(0.0, 1.0, high_inclusive=False, note="0: none"),
    "prior_encoder_weight": Range(0.0, note="0: the prior does not shape the encoder"),
    "max_epochs": Range(1),
    "patience": Range(1),
    "lr_factor": Range(0.0, 1.0, low_inclusive=False, high_inclusive=False),
    "lr_patience": Range(0),
    "min_lr": Range(0.0),
    "kl_warmup_epochs": Range(0, note="0: none"),
    "weight_decay": Range(0.0),
    "seed": SEED_RANGE,
    "num_threads": Range(0, note="0: all cores"),
}


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # Past this bound the temporal model pads every clip to 2^time_downsample frames: a
        # typo such as 20 allocates a million frames per clip in every trial.
        check_time_downsample(self.train.time_downsample, self.features, "train.time_downsample")


SECTIONS: dict[str, type] = {"data": DataConfig, "features": FeatureConfig, "train": TrainConfig}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint} (valid keys: {', '.join(valid)})")


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a dataclass field annotation (ints widen to floats)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"float": float, "int": int, "str": str, "bool": bool})  # noqa: S307
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_value(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; users mean a number.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")


def from_dict(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    where = where or cls.__name__
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    valid = field_names(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in valid:
            raise _unknown_key_error(str(key), valid, where)
        kwargs[key] = check_value(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if where == cls.__name__:
            raise  # no source to add: the message names its key
        raise ConfigError(_from_source(str(exc), where)) from exc


def _from_source(message: str, where: str) -> str:
    """A __post_init__ message ("train.lr: ...", naming its key from the section on) prefixed
    with the source that `where` names up to the section ("exp.yaml.train", "quick.yaml: train"):
    "exp.yaml.train.lr: ...", like the type errors of the same file."""
    if message.startswith(where):
        return message
    section = re.match(r"\w*", message).group()
    if section and where.endswith(section):
        return where[: -len(section)] + message
    return f"{where}: {message}"


def experiment_from_dict(values: dict[str, Any], where: str = "config") -> ExperimentConfig:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping with sections {', '.join(SECTIONS)}")
    sections = {}
    for key, section_values in values.items():
        if key not in SECTIONS:
            raise _unknown_key_error(str(key), list(SECTIONS), where)
        sections[key] = from_dict(SECTIONS[key], section_values or {}, f"{where}.{key}")
    try:
        return ExperimentConfig(**sections)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from exc


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` strings (value parsed as YAML) applied to a copy of `raw`."""
    result = copy.deepcopy(raw)
    for override in overrides:
        dotted, sep, text = override.partition("=")
        parts = dotted.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"--set {override!r}: expected section.key=value, e.g. sweep.num_samples=4"
            )
        section, key = parts
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {override!r}: value is not valid YAML ({exc})") from exc
        if result.get(section) is None:
            result[section] = {}
        if not isinstance(result[section], dict):
            raise ConfigError(f"--set {override!r}: section '{section}' is not a mapping")
        result[section][key] = value
    return result


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return experiment_from_dict(apply_overrides(values or {}, overrides or []), where=str(path))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
