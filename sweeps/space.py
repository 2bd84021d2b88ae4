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

Everything is checked before Ray starts (the checks are in `sweeps.space_checks`): unknown keys
(with the nearest valid name), unknown distributions, low > high, values of the wrong type for
the field, values (constants, searched bounds and choices) outside the field's valid range, a
constant in `train` that `params` also searches, an objective the trials do not report, a mode
against the objective's direction, a constraint on a metric the trials do not report or not of
the form `<op> <number>`.

The flow: `load_space` reads the YAML and applies --set overrides, `spec_from_dict` builds and
checks the sections into a `SweepSpec`, `to_tune_space` turns its params into Ray Tune domains,
and `trial_train_config` puts one trial's sampled values into the TrainConfig it trains.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emovae.config import (
    SEED_RANGE,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    FeatureConfig,
    Range,
    TrainConfig,
    apply_overrides,
    check_ranges,
    from_dict,
)
from emovae.judge import JudgeConfig
from sweeps.space_checks import (
    DISTRIBUTIONS,
    EMOTION_METRICS,
    EMOTION_OBJECTIVES,
    GENERATION_METRICS,
    GENERATION_OBJECTIVES,
    LOSS_METRICS,
    OBJECTIVES,
    QUALITY_MODULES,
    check_constraints,
    check_emotion,
    check_finalise,
    check_generation_objective,
    check_not_searched,
    check_sample_audio,
    check_searched_time_downsample,
    check_settings,
    constraint_metrics,
    parse_constraint,
    sample_audio_vocoder,
    validate_params,
)
from sweeps.trials import Constraint

# The names other modules import from here, including those defined in sweeps.space_checks.
__all__ = [
    "DISTRIBUTIONS",
    "EMOTION_METRICS",
    "EMOTION_OBJECTIVES",
    "FINALISE_RANGES",
    "GENERATION_METRICS",
    "GENERATION_OBJECTIVES",
    "LOSS_METRICS",
    "OBJECTIVES",
    "QUALITY_MODULES",
    "SECTIONS",
    "SPACES_DIR",
    "SWEEP_RANGES",
    "FinaliseSettings",
    "SweepSettings",
    "SweepSpec",
    "available_spaces",
    "sample_audio_vocoder",
    "constraint_metrics",
    "load_space",
    "parse_constraint",
    "resolve_space_path",
    "searched_params",
    "spec_from_dict",
    "to_tune_space",
    "trial_train_config",
    "validate_params",
]


def _spaces_dir() -> Path:
    """search_spaces/ beside the package (a checkout or editable install), else in the current
    directory (a plain install run from the project folder)."""
    beside = Path(__file__).resolve().parents[1] / "search_spaces"
    return beside if beside.is_dir() else Path.cwd() / "search_spaces"


SPACES_DIR = _spaces_dir()


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
    # The augmentation test also trains each judge on real clips plus as many vocoded copies of
    # real training clips (no model): what the samples add beyond more, vocoded, data.
    augment_control: bool = True
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


SECTIONS = ("sweep", "data", "features", "train", "params", "judge", "finalise")


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


def load_space(name_or_path: str, overrides: list[str] | None = None) -> SweepSpec:
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    raw = apply_overrides(raw or {}, overrides or [])
    return spec_from_dict(raw, path.stem, str(path))


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
    check_not_searched(raw.get("train") or {}, params, source)
    check_searched_time_downsample(params, features, source)
    judge = from_dict(JudgeConfig, raw.get("judge") or {}, f"{source}: judge")
    finalise = from_dict(FinaliseSettings, raw.get("finalise") or {}, f"{source}: finalise")
    if not experiment.data.path:
        raise ConfigError(
            f"{source}: data.path: this space trains on a real corpus; name its folder (EmoDB "
            "wav/, a RAVDESS root or a CSV manifest), e.g. --set data.path=/data/emodb/wav"
        )
    check_settings(sweep, experiment, source)
    check_emotion(sweep, source)
    check_generation_objective(sweep, experiment, params, source)
    check_constraints(sweep, experiment, params, source)
    check_finalise(finalise, sweep, experiment.features, source)
    check_sample_audio(sweep, finalise, experiment.features, source)
    return SweepSpec(name, source, sweep, experiment, params, finalise, raw, judge)


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
