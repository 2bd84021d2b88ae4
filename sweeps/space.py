"""Search spaces: `search_spaces/<name>.yaml` -> a validated `SweepSpec`.

A space file has these sections; all but `params` are optional:

    sweep:     SweepSettings fields (trials, concurrency, objective, ASHA, resources per trial,
               emotion_every: how often trials compute the emotion-preservation metrics,
               mlflow_flush_s: how often queued trial metrics are written to MLflow,
               constraints: bounds on reported metrics, e.g. {val_active_units: ">= 4"})
    data:      emovae DataConfig fields (constants)
    features:  emovae FeatureConfig fields (constants)
    train:     emovae TrainConfig fields held constant in this sweep
    params:    TrainConfig fields to search: a constant or one distribution each, e.g.
               lr: {loguniform: [1.0e-4, 3.0e-3]}   latent_dim: {choice: [16, 32, 64]}
    judge:     emovae.judge.JudgeConfig fields: the emotion judge that scores the trials when
               sweep.emotion_every >= 1 (trained once per sweep, cached per data fingerprint)
    finalise:  FinaliseSettings fields

The objective (`sweep.metric`) is one of OBJECTIVES with its direction (`sweep.mode`): the
validation reconstruction losses (min), or, with emotion_every >= 1, an emotion-preservation
metric of the validation reconstructions (`val_emotion_acc_recon` max, `val_emotion_acc_drop`
min, `val_fd_recon` min, `val_latent_silhouette` max) or of samples from a conditional model's
prior (`val_gen_emotion_acc` max, `val_gen_fd` min).

Everything is checked before Ray starts: unknown keys (with the nearest valid name), unknown
distributions, low > high, values of the wrong type for the field, values (constants, searched
bounds and choices) outside the field's valid range, a constant in `train` that `params` also
searches, an objective the trials do not report, a mode against the objective's direction,
a constraint on a metric the trials do not report or not of the form `<op> <number>`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emovae.config import (
    SEED_RANGE,
    TRAIN_RANGES,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    FeatureConfig,
    Range,
    TrainConfig,
    apply_overrides,
    check_range,
    check_ranges,
    check_time_downsample,
    check_value,
    from_dict,
)
from emovae.judge import JudgeConfig
from emovae.loss import TERMS
from sweeps.trials import CONSTRAINT_OPERATORS, Constraint


def _spaces_dir() -> Path:
    """search_spaces/ beside the package (a checkout or editable install), else in the current
    directory (a plain install run from the project folder)."""
    beside = Path(__file__).resolve().parents[1] / "search_spaces"
    return beside if beside.is_dir() else Path.cwd() / "search_spaces"


SPACES_DIR = _spaces_dir()
DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice")
# Metrics every trial reports each epoch, with the direction that is better; the objective
# must be one of them and must not depend on beta, or beta -> 0 would always win (so val_loss
# and val_kl are refused).
OBJECTIVES: dict[str, str] = {
    "val_recon": "min",
    "val_spectral": "min",
    # Reported only when sweep.emotion_every >= 1 (see sweeps.trainable).
    "val_emotion_acc_recon": "max",
    "val_emotion_acc_drop": "min",
    "val_fd_recon": "min",
    "val_latent_silhouette": "max",
    # Samples from the prior, per emotion asked for: a conditional model's sample quality
    # (judge accuracy, and Frechet distance to the real validation clips).
    "val_gen_emotion_acc": "max",
    "val_gen_fd": "min",
}
EMOTION_OBJECTIVES = frozenset(
    name for name in OBJECTIVES if name not in ("val_recon", "val_spectral")
)
GENERATION_OBJECTIVES = frozenset(("val_gen_emotion_acc", "val_gen_fd"))
# What trials report each epoch besides the objectives (emovae.train, sweeps.trainable), and
# so what sweep.constraints may bound: the loss terms, the active latent units (posterior
# collapse: units whose mean KL exceeds 0.01 nats), and with emotion_every >= 1 the real clips'
# judge accuracy and, for a conditional model, its samples' diversity.
LOSS_METRICS = tuple(f"{split}_{term}" for split in ("train", "val") for term in TERMS)
EMOTION_METRICS = (
    "val_emotion_acc_real",
    *(n for n in OBJECTIVES if n in EMOTION_OBJECTIVES and n not in GENERATION_OBJECTIVES),
)
GENERATION_METRICS = (
    *(name for name in OBJECTIVES if name in GENERATION_OBJECTIVES),
    "val_gen_diversity",
    "val_gen_diversity_ratio",
)
# The modules the exported-audio metrics import (the quality extra), and what each is for.
QUALITY_MODULES = (
    ("onnxruntime", "DNSMOS"),
    ("pystoi", "STOI"),
    ("opensmile", "the eGeMAPS emotion judge"),
)


@dataclass
class SweepSettings:
    num_samples: int = 8  # trials Optuna proposes
    max_concurrent: int = 2  # trials running at once (ConcurrencyLimiter)
    # The objective reported each epoch (never beta-dependent), or a list of two or three for
    # a multi-objective search (mode: a list as long): see `objectives`.
    metric: str | list[str] = "val_recon"
    mode: str | list[str] = "min"
    seed: int = 0  # TPE sampler seed
    grace_period: int = 2  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # ASHA: keep 1/reduction_factor of trials at each rung
    cpus_per_trial: float = 1.0  # torch threads per trial = this, rounded down (min 1)
    gpus_per_trial: float = 0.0  # fractions such as 0.25 share one GPU between trials
    max_failures: int = 0  # retries of a crashed trial (node loss) from its last checkpoint
    # Validation emotion metrics (emovae.emotion) every k epochs and on a trial's last epoch;
    # between them a trial reports the last values again. 0 = none (no judge is trained).
    emotion_every: int = 0
    # Seconds between writes of the trials' queued metrics to MLflow (and at each trial's end):
    # one write per run covers every epoch queued since the last.
    mlflow_flush_s: float = 30.0
    # With --address: how long to wait for a node that can run one trial (an autoscaler adding
    # it) before giving up; 0 = give up at once. On this machine a missing shape fails at once.
    resource_wait_s: float = 600.0
    # TPE proposes at random until this many trials have finished (warm-start trials count).
    tpe_startup_trials: int = 10
    # Where the sweep's Optuna study lives: "" = optuna.journal in the sweep folder; or an RDB
    # URL (postgresql+psycopg2://user:${PASSWORD}@host/db: ${VAR}s are read from the
    # environment when connecting, never stored). See sweeps.study.
    optuna_storage: str = ""
    # MLflow system metrics (CPU, memory, GPU) of each trial's node in its run, sampled every
    # system_metrics_interval_s seconds (sweeps.system_metrics).
    system_metrics: bool = False
    system_metrics_interval_s: float = 10.0
    # Bounds a trial must meet to be chosen, judged at its best epoch of the objective:
    # {metric: "<op> <number>"}, op one of >=, <=, >, <; e.g. {val_active_units: ">= 4"}
    # refuses collapsed posteriors. Optuna's TPE learns from them; an infeasible trial is
    # marked in Ray, MLflow, trials.csv and the report, and never finalised.
    constraints: dict[str, str] = field(default_factory=dict)
    # Derived, not written in YAML: [(metric, mode), ...] from metric and mode, which then hold
    # the first (primary) objective: the one ASHA stops trials by, the console shows, and a
    # trial's epoch is chosen by (the others are read at that epoch, sweeps.pareto).
    objectives: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._split_objectives()
        check_ranges("sweep", self, SWEEP_RANGES)
        if self.constraints is None:  # `constraints:` left empty in YAML
            self.constraints = {}
        if not isinstance(self.constraints, dict):
            raise ConfigError(
                f"sweep.constraints: expected a mapping of metric: expression, e.g. "
                f"{{val_active_units: '>= 4'}}, got {self.constraints!r}"
            )

    def _split_objectives(self) -> None:
        if not isinstance(self.metric, list) and self.objectives[:1] == [(self.metric, self.mode)]:
            return  # dataclasses.replace() of settings already split
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        if len(modes) != len(metrics):
            raise ConfigError(
                f"sweep.mode: {len(modes)} mode(s) {modes} for {len(metrics)} objective(s) "
                f"{metrics}: give one mode per metric, in the same order"
            )
        if not 1 <= len(metrics) <= 3 or len(set(metrics)) != len(metrics):
            raise ConfigError(
                f"sweep.metric: expected one objective or a list of 2 or 3 different ones, "
                f"got {metrics}"
            )
        self.objectives = [(str(m), str(d)) for m, d in zip(metrics, modes, strict=True)]
        self.metric, self.mode = self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def parsed_constraints(self) -> tuple[Constraint, ...]:
        """The constraints as `Constraint`s (expressions only; spec_from_dict has checked the
        metrics too)."""
        return tuple(
            parse_constraint(str(metric), expression, f"sweep.constraints.{metric}")
            for metric, expression in self.constraints.items()
        )


SWEEP_RANGES: dict[str, Range] = {
    "num_samples": Range(1),
    "max_concurrent": Range(1),
    "seed": SEED_RANGE,
    "grace_period": Range(1),
    "reduction_factor": Range(2, note="ASHA keeps 1/reduction_factor of the trials per rung"),
    "cpus_per_trial": Range(0.0, low_inclusive=False),
    "gpus_per_trial": Range(0.0),
    "max_failures": Range(0),
    "emotion_every": Range(0, note="0: off"),
    "mlflow_flush_s": Range(0.0),
    "resource_wait_s": Range(0.0, note="0: give up at once"),
    "tpe_startup_trials": Range(0, note="0: model-based from the first trial"),
    "system_metrics_interval_s": Range(0.5),
}


@dataclass
class FinaliseSettings:
    enabled: bool = True
    n_samples: int = 100  # WAVs exported from the retrained best configuration
    max_epochs: int = 0  # retraining budget; 0 = the sweep's train.max_epochs
    # Vocoder of every exported WAV: griffinlim (any features) or hifigan (the features must be
    # emovae.audio.vocoder.hifigan_features(): 80 mels to 8 kHz, magnitude, clamped log).
    vocoder: str = "griffinlim"
    griffin_lim_iters: int = 32
    # Score the exported WAVs (wav_* metrics: the eGeMAPS judge, DNSMOS, STOI, augmentation,
    # and the CNN judge where sweep.emotion_every >= 1 trained one); needs the quality extra.
    audio_metrics: bool = True
    # DNSMOS (about 0.5 s per 9 s window per core) on at most this many WAVs per set, spread
    # evenly over the set; 0 = every WAV.
    dnsmos_clips: int = 0
    conversion_source: str = "neutral"  # emotion of the real clips that conversion starts from
    conversion_strength: float = 0.6  # share of the diffusion prior's noise a conversion adds
    register_model: bool = True
    model_name: str = "emovae"  # MLflow model registry name
    # Generated clips per emotion for a conditional VAE's emotion metrics and augmentation test
    # (only with sweep.emotion_every >= 1).
    emotion_samples: int = 16
    # A multi-objective sweep retrains one trial of its Pareto front: "knee" (the point closest
    # to the best of every objective, each scaled over the front) or an objective's name (the
    # front's best in it). One objective: its best trial, whatever this says.
    pick: str = "knee"
    # With several objectives: also retrain and evaluate every other point of the Pareto front
    # (final/pareto/<trial id>/, a `final-pareto` MLflow run each; not registered).
    pareto: bool = False

    def __post_init__(self) -> None:
        check_ranges("finalise", self, FINALISE_RANGES)


FINALISE_RANGES: dict[str, Range] = {
    "n_samples": Range(1),
    "max_epochs": Range(0, note="0: the sweep's train.max_epochs"),
    "griffin_lim_iters": Range(0),
    "dnsmos_clips": Range(0, note="0: every WAV"),
    "conversion_strength": Range(0.0, 1.0, low_inclusive=False),
    "emotion_samples": Range(1),
}


@dataclass
class SweepSpec:
    name: str
    source: str  # the space file
    sweep: SweepSettings
    experiment: ExperimentConfig  # constants: data, features and the non-searched train fields
    params: dict[str, Any]  # TrainConfig field -> constant or {distribution: args}
    finalise: FinaliseSettings
    raw: dict[str, Any] = field(default_factory=dict)  # the validated YAML mapping, for logging
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # used when sweep.emotion_every >= 1


_CONSTRAINT_FORM = re.compile(r"\s*(>=|<=|>|<)\s*(\S+)\s*")


def parse_constraint(metric: str, expression: Any, where: str) -> Constraint:
    """`metric` with an expression such as ">= 4" -> Constraint; a ConfigError naming `where`
    and the expected form otherwise."""
    expected = (
        f"expected an expression '<op> <number>' with op one of "
        f"{', '.join(CONSTRAINT_OPERATORS)}, e.g. '>= 4' (quoted in YAML), got {expression!r}"
    )
    match = _CONSTRAINT_FORM.fullmatch(expression) if isinstance(expression, str) else None
    if match is None:
        raise ConfigError(f"{where}: {expected}")
    try:
        bound = float(match.group(2))
    except ValueError:
        raise ConfigError(f"{where}: {expected}") from None
    if not math.isfinite(bound):
        raise ConfigError(f"{where}: the bound must be a finite number, got {expression!r}")
    return Constraint(metric, match.group(1), bound)


def constraint_metrics(
    sweep: SweepSettings, experiment: ExperimentConfig, params: dict[str, Any]
) -> list[str]:
    """The metrics every trial of this sweep reports each epoch, which constraints may bound."""
    metrics = [*LOSS_METRICS, "val_active_units"]
    if _in_every_trial("prior", "diffusion", experiment, params):
        metrics.append("train_prior")  # the diffusion prior's own loss
    if sweep.emotion_every >= 1:
        metrics += EMOTION_METRICS
        if _in_every_trial("conditional", True, experiment, params):
            metrics += GENERATION_METRICS
    return metrics


def _in_every_trial(
    name: str, value: Any, experiment: ExperimentConfig, params: dict[str, Any]
) -> bool:
    """Whether train.<name> is `value` in every trial (a constant, not a searched choice)."""
    return params.get(name, getattr(experiment.train, name)) == value


def available_spaces(spaces_dir: Path = SPACES_DIR) -> list[str]:
    return sorted(p.stem for p in spaces_dir.glob("*.yaml"))


def resolve_space_path(name_or_path: str, spaces_dir: Path = SPACES_DIR) -> Path:
    """A space name (`quick`) from search_spaces/, or a path to a user's YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: search space file not found")
        return candidate
    path = spaces_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        known = available_spaces(spaces_dir)
        close = difflib.get_close_matches(name_or_path, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown search space '{name_or_path}'{hint} (available: {', '.join(known)}; "
            "or pass a path to a .yaml file)"
        )
    return path


def _check_distribution(
    key: str, spec: dict[str, Any], annotation: Any, where: str
) -> dict[str, Any]:
    """The distribution with its values checked and typed (e.g. YAML 1.1's '1e-3' -> 0.001)."""
    if len(spec) != 1:
        raise ConfigError(
            f"{where}.{key}: a distribution is one mapping entry like "
            f"{{loguniform: [1.0e-4, 1.0e-2]}}, got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{where}.{key}: unknown distribution '{kind}'{hint} "
            f"(expected one of {', '.join(DISTRIBUTIONS)})"
        )
    at = f"{where}.{key}.{kind}"
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{at}: expected a non-empty list of values")
        values = [check_value(value, annotation, at) for value in args]
        if key in TRAIN_RANGES:
            for value in values:
                check_range(value, TRAIN_RANGES[key], at)
        return {kind: values}
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{at}: expected [low, high], got {args!r}")
    number = int if kind in ("int", "logint") else float
    if number is float:
        args = [_as_float(bound) for bound in args]
    low, high = args
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError(f"{at}: bounds must be numbers, got {bound!r}")
        if number is int and not isinstance(bound, int):
            raise ConfigError(f"{at}: bounds must be integers, got {bound!r}")
    if annotation not in (int, float) or (annotation is int and number is float):
        raise ConfigError(
            f"{at}: field '{key}' holds {getattr(annotation, '__name__', annotation)}, "
            f"which a {kind} distribution cannot produce"
        )
    if low > high:
        raise ConfigError(f"{at}: low {low} is greater than high {high}")
    if kind in ("loguniform", "logint") and low <= 0:
        raise ConfigError(f"{at}: a log distribution needs low > 0, got {low}")
    valid = TRAIN_RANGES.get(key)
    if valid is not None:
        if valid.multiple_of > 1:
            raise ConfigError(
                f"{at}: train.{key} must be {valid.describe(True)}, which {kind} "
                f"distributions do not keep to; search a choice, e.g. "
                f"{{choice: [{valid.multiple_of * 2}, {valid.multiple_of * 4}]}}"
            )
        # Both ends in the field's range put every value between them there too.
        for bound in (low, high):
            check_range(bound, valid, at)
    return {kind: [low, high]}


def _as_float(bound: Any) -> Any:
    try:
        return check_value(bound, float, "")
    except ConfigError:
        return bound  # not a number: reported with its name by the caller


def validate_params(params: Any, where: str = "params") -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of TrainConfig fields")
    hints = typing.get_type_hints(TrainConfig)
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    checked = {}
    for key, spec in params.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{key}'{hint} (TrainConfig fields: {', '.join(valid)})"
            )
        if isinstance(spec, dict):
            checked[key] = _check_distribution(key, spec, hints[key], where)
        else:
            checked[key] = check_value(spec, hints[key], f"{where}.{key}")
            if key in TRAIN_RANGES:
                check_range(checked[key], TRAIN_RANGES[key], f"{where}.{key}")
    return checked


SECTIONS = ("sweep", "data", "features", "train", "params", "judge", "finalise")


def spec_from_dict(raw: dict[str, Any], name: str, source: str) -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}")
    for key in raw:
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key), SECTIONS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: unknown section '{key}'{hint} (valid: {', '.join(SECTIONS)})"
            )
    if isinstance(raw.get("sweep"), dict) and "objectives" in raw["sweep"]:
        raise ConfigError(
            f"{source}: sweep.objectives is derived: write the objectives as sweep.metric: "
            "[val_recon, val_gen_fd] with sweep.mode: [min, min]"
        )
    sweep = from_dict(SweepSettings, raw.get("sweep") or {}, f"{source}: sweep")
    data = from_dict(DataConfig, raw.get("data") or {}, f"{source}: data")
    features = from_dict(FeatureConfig, raw.get("features") or {}, f"{source}: features")
    train = from_dict(TrainConfig, raw.get("train") or {}, f"{source}: train")
    try:
        experiment = ExperimentConfig(data=data, features=features, train=train)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    params = validate_params(raw.get("params"), f"{source}: params")
    _check_not_searched(raw.get("train") or {}, params, source)
    _check_searched_time_downsample(params, features, source)
    judge = from_dict(JudgeConfig, raw.get("judge") or {}, f"{source}: judge")
    finalise = from_dict(FinaliseSettings, raw.get("finalise") or {}, f"{source}: finalise")
    if not experiment.data.path:
        raise ConfigError(
            f"{source}: data.path: this space trains on a real corpus; name its folder (EmoDB "
            "wav/, a RAVDESS root or a CSV manifest), e.g. --set data.path=/data/emodb/wav"
        )
    _check_settings(sweep, experiment, source)
    _check_emotion(sweep, source)
    _check_generation_objective(sweep, experiment, params, source)
    _check_constraints(sweep, experiment, params, source)
    objectives = [metric for metric, _ in sweep.objectives]
    if finalise.pareto and len(objectives) < 2:
        raise ConfigError(
            f"{source}: finalise.pareto: a Pareto front needs several objectives "
            "(sweep.metric: [a, b] with sweep.mode: [min, max])"
        )
    if finalise.pick != "knee" and finalise.pick not in objectives:
        raise ConfigError(
            f"{source}: finalise.pick: expected 'knee' or one of the objectives {objectives}, "
            f"got {finalise.pick!r}"
        )
    _check_finalise_audio(finalise, experiment.features, source)
    return SweepSpec(name, source, sweep, experiment, params, finalise, raw, judge)


def _check_not_searched(train: Any, params: dict[str, Any], source: str) -> None:
    """A constant in `train` for a field that `params` also sets would be silently replaced in
    every trial: the user meant one of the two."""
    if not isinstance(train, dict):
        return  # from_dict names the wrong type
    for key, value in train.items():
        if key not in params:
            continue
        if isinstance(params[key], dict):
            raise ConfigError(
                f"{source}: train.{key} is also searched in params.{key}; the search would "
                f"override it: to fix the value, use --set params.{key}={value} (a constant), "
                f"or remove it from train"
            )
        raise ConfigError(
            f"{source}: train.{key} ({value}) is also set in params.{key} ({params[key]}), "
            "which would override it: keep one of them"
        )


def _check_searched_time_downsample(
    params: dict[str, Any], features: FeatureConfig, source: str
) -> None:
    """The frame-count bound of ExperimentConfig for the values a search may propose."""
    spec = params.get("time_downsample")
    if spec is None:
        return
    if isinstance(spec, dict):
        ((kind, values),) = spec.items()
        where = f"{source}: params.time_downsample.{kind}"
    else:
        values, where = [spec], f"{source}: params.time_downsample"
    check_time_downsample(max(values), features, where)


def _check_settings(sweep: SweepSettings, experiment: ExperimentConfig, source: str) -> None:
    where = f"{source}: sweep"
    for metric, mode in sweep.objectives:
        _check_objective(metric, mode, where)
    if sweep.gpus_per_trial > 1 and sweep.gpus_per_trial != int(sweep.gpus_per_trial):
        raise ConfigError(f"{where}.gpus_per_trial: above 1 it must be a whole number")
    if sweep.grace_period > experiment.train.max_epochs:
        raise ConfigError(
            f"{where}.grace_period: {sweep.grace_period} exceeds train.max_epochs "
            f"{experiment.train.max_epochs}"
        )
    if sweep.optuna_storage:
        _check_storage_url(sweep.optuna_storage, f"{where}.optuna_storage")


def _check_objective(metric: str, mode: str, where: str) -> None:
    if metric not in OBJECTIVES:
        raise ConfigError(
            f"{where}.metric: '{metric}' is not a valid objective (expected one of "
            f"{', '.join(OBJECTIVES)}; total or KL losses depend on beta, so beta -> 0 would win)"
        )
    if mode not in ("min", "max"):
        raise ConfigError(f"{where}.mode: expected 'min' or 'max', got '{mode}'")
    if mode != OBJECTIVES[metric]:
        better = "lower" if OBJECTIVES[metric] == "min" else "higher"
        raise ConfigError(
            f"{where}.mode: '{mode}' contradicts {metric}, where {better} is "
            f"better; set its mode to {OBJECTIVES[metric]}"
        )


def _check_storage_url(url: str, where: str) -> None:
    """A database URL whose password, if any, comes from the environment (${VAR}): the space
    is stored in the sweep folder and logged to MLflow."""
    from sqlalchemy.exc import ArgumentError

    from sweeps.databases import has_literal_password

    expected = (
        "expected '' (optuna.journal in the sweep folder) or a database URL such as "
        "postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db-host:5432/optuna"
    )
    try:
        literal = has_literal_password(url)
    except ArgumentError:
        raise ConfigError(f"{where}: {expected}, got {url!r}") from None
    if literal:
        raise ConfigError(
            f"{where}: write the password as an environment variable reference, e.g. "
            "postgresql+psycopg2://optuna:${OPTUNA_DB_PASSWORD}@db-host/optuna: the space is "
            "stored in the sweep folder and logged to MLflow"
        )


def _check_emotion(sweep: SweepSettings, source: str) -> None:
    for metric, _ in sweep.objectives:
        if metric in EMOTION_OBJECTIVES and sweep.emotion_every < 1:
            raise ConfigError(
                f"{source}: sweep.emotion_every: the objective {metric} is an emotion metric, "
                "which trials only report with sweep.emotion_every >= 1 (e.g. 1: every epoch)"
            )


def _check_finalise_audio(finalise: FinaliseSettings, features: FeatureConfig, source: str) -> None:
    """The vocoder reads these features, and the packages the exported audio needs are
    installed: found now, before Ray starts, not after an hour of trials."""
    from emovae.audio.vocoder import VOCODERS, VocoderError, check_hifigan_features

    if finalise.vocoder not in VOCODERS:
        raise ConfigError(
            f"{source}: finalise.vocoder: expected one of {', '.join(VOCODERS)}, "
            f"got {finalise.vocoder!r}"
        )
    if not finalise.enabled:
        return
    try:
        if finalise.vocoder == "hifigan":
            check_hifigan_features(features)
            from emovae.audio.hifigan import WEIGHTS_FILE, package_file

            package_file(WEIGHTS_FILE)
    except (VocoderError, ImportError) as exc:
        raise ConfigError(f"{source}: finalise: {exc}") from exc
    if finalise.audio_metrics:
        from emovae.evaluation.audio_quality import QUALITY_INSTALL

        # Found, not imported: importing opensmile alone takes seconds.
        for module, purpose in QUALITY_MODULES:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    f"{source}: finalise.audio_metrics: {purpose} needs the package "
                    f"'{module}', which is not installed: {QUALITY_INSTALL} "
                    "(or set finalise.audio_metrics: false)"
                )


def _check_generation_objective(
    sweep: SweepSettings, experiment: ExperimentConfig, params: dict[str, Any], source: str
) -> None:
    """Samples per emotion asked for exist only for a conditional model in every trial."""
    generation = [m for m, _ in sweep.objectives if m in GENERATION_OBJECTIVES]
    if not generation:
        return
    conditional = params.get("conditional", experiment.train.conditional)
    if conditional is not True:
        raise ConfigError(
            f"{source}: sweep.metric: {generation[0]} scores samples per emotion asked for, "
            "which needs train.conditional: true in every trial "
            f"(found {conditional!r})"
        )


def _check_constraints(
    sweep: SweepSettings, experiment: ExperimentConfig, params: dict[str, Any], source: str
) -> None:
    """Each constraint bounds a metric every trial reports, with a well-formed expression: a
    typo would otherwise leave every trial without the value, and so infeasible."""
    valid = constraint_metrics(sweep, experiment, params)
    for metric, expression in sweep.constraints.items():
        where = f"{source}: sweep.constraints.{metric}"
        if metric not in valid:
            raise ConfigError(f"{where}: {_unreported(str(metric), sweep, valid)}")
        parse_constraint(str(metric), expression, where)


def _unreported(metric: str, sweep: SweepSettings, valid: list[str]) -> str:
    """Why trials do not report `metric`, and what they do report."""
    listed = f"the trials of this sweep report each epoch: {', '.join(valid)}"
    if metric in EMOTION_METRICS + GENERATION_METRICS and sweep.emotion_every < 1:
        return (
            f"{metric} is an emotion metric, which trials only report with "
            f"sweep.emotion_every >= 1; {listed}"
        )
    if metric in GENERATION_METRICS:
        return (
            f"{metric} scores samples per emotion asked for, which needs "
            f"train.conditional: true in every trial; {listed}"
        )
    if metric == "train_prior":
        return f"train_prior needs train.prior: diffusion in every trial; {listed}"
    close = difflib.get_close_matches(metric, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown metric '{metric}'{hint} ({listed})"


def load_space(name_or_path: str, overrides: list[str] | None = None) -> SweepSpec:
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    raw = apply_overrides(raw or {}, overrides or [])
    return spec_from_dict(raw, path.stem, str(path))


def searched_params(params: dict[str, Any]) -> list[str]:
    """The names `params` searches (a distribution each), as opposed to constants."""
    return [name for name, spec in params.items() if isinstance(spec, dict)]


def to_tune_space(params: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune sampling domains for the searched params (OptunaSearch converts them)."""
    from ray import tune

    makers = {
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "int": lambda a: tune.randint(a[0], a[1] + 1),  # inclusive high, as written in YAML
        "logint": lambda a: tune.lograndint(a[0], a[1] + 1),
        "choice": lambda a: tune.choice(a),
    }
    space = {}
    for key, spec in params.items():
        if isinstance(spec, dict):
            ((kind, args),) = spec.items()
            space[key] = makers[kind](args)
        else:
            space[key] = spec
    return space


def trial_train_config(base: TrainConfig, trial_params: dict[str, Any]) -> TrainConfig:
    """The base TrainConfig with one trial's sampled values (numpy scalars made plain)."""
    values = {k: (v.item() if hasattr(v, "item") else v) for k, v in trial_params.items()}
    return dataclasses.replace(base, **values)
