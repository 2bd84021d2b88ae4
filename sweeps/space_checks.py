"""The rules of the search-space language (`sweeps.space`): what each section may say, and
how the sections must agree with one another.

Each check raises a ConfigError that names the file, the key and what was expected, so a
malformed space fails before Ray starts rather than in every trial. The metric names live here
because the checks are what hold a space to them; `sweeps.space` re-exports them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import typing
from typing import TYPE_CHECKING, Any

from emovae.config import (
    TRAIN_CHOICES,
    TRAIN_RANGES,
    ConfigError,
    ExperimentConfig,
    FeatureConfig,
    TrainConfig,
    check_choice,
    check_range,
    check_time_downsample,
    check_value,
)
from emovae.loss import TERMS
from sweeps.trials import CONSTRAINT_OPERATORS, Constraint

if TYPE_CHECKING:
    # Annotations only: sweeps.space imports this module to build its settings.
    from sweeps.space import FinaliseSettings, SweepSettings


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
    # The same samples vocoded with finalise.vocoder, as the finaliser exports them, and their
    # Frechet distance to the real validation WAVs in eGeMAPS space: what listeners hear, not
    # what the CNN judge forgives (emovae.evaluation.sample_audio). Computed only when an
    # objective or constraint names it: it costs seconds per sample on a CPU core.
    "val_wav_gen_fd_smile": "min",
}
EMOTION_OBJECTIVES = frozenset(
    name for name in OBJECTIVES if name not in ("val_recon", "val_spectral")
)
AUDIO_OBJECTIVES = frozenset(("val_wav_gen_fd_smile",))
GENERATION_OBJECTIVES = frozenset(("val_gen_emotion_acc", "val_gen_fd", *AUDIO_OBJECTIVES))
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
            _check_allowed(key, checked[key], f"{where}.{key}")
    return checked


def _check_allowed(key: str, value: Any, where: str) -> None:
    """A constant or searched value of train.<key> inside the field's range or names."""
    if key in TRAIN_RANGES:
        check_range(value, TRAIN_RANGES[key], where)
    if key in TRAIN_CHOICES:
        check_choice(value, key, where)


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
        for value in values:
            _check_allowed(key, value, at)
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


def check_not_searched(train: Any, params: dict[str, Any], source: str) -> None:
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


def check_searched_time_downsample(
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


def check_settings(sweep: SweepSettings, experiment: ExperimentConfig, source: str) -> None:
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


def check_emotion(sweep: SweepSettings, source: str) -> None:
    for metric, _ in sweep.objectives:
        if metric in EMOTION_OBJECTIVES and sweep.emotion_every < 1:
            raise ConfigError(
                f"{source}: sweep.emotion_every: the objective {metric} is an emotion metric, "
                "which trials only report with sweep.emotion_every >= 1 (e.g. 1: every epoch)"
            )


def check_finalise(
    finalise: FinaliseSettings, sweep: SweepSettings, features: FeatureConfig, source: str
) -> None:
    """The retrained trial is one the sweep can pick, and its exported audio can be made and
    scored."""
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
    _check_finalise_audio(finalise, features, source)


def _check_finalise_audio(finalise: FinaliseSettings, features: FeatureConfig, source: str) -> None:
    """The vocoder reads these features, and the packages the exported audio needs are
    installed: found now, before Ray starts, not after an hour of trials."""
    from emovae.audio.vocoder import VOCODERS

    if finalise.vocoder not in VOCODERS:
        raise ConfigError(
            f"{source}: finalise.vocoder: expected one of {', '.join(VOCODERS)}, "
            f"got {finalise.vocoder!r}"
        )
    if not finalise.enabled:
        return
    _check_vocoder_reads(finalise.vocoder, features, f"{source}: finalise")
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


def _check_vocoder_reads(vocoder: str, features: FeatureConfig, where: str) -> None:
    """HiFi-GAN's weights are installed and its mel is these features (Griffin-Lim reads any)."""
    from emovae.audio.vocoder import VocoderError, check_hifigan_features

    if vocoder != "hifigan":
        return
    try:
        check_hifigan_features(features)
        from emovae.audio.hifigan import WEIGHTS_FILE, package_file

        package_file(WEIGHTS_FILE)
    except (VocoderError, ImportError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def audio_metrics_named(sweep: SweepSettings) -> list[str]:
    """The samples' audio metrics that an objective or a constraint of `sweep` names: what
    switches their (costly) computation on in the trials."""
    named = [m for m, _ in sweep.objectives] + [str(m) for m in sweep.constraints]
    return [m for m in named if m in AUDIO_OBJECTIVES]


def sample_audio_vocoder(sweep: SweepSettings, finalise: FinaliseSettings) -> str | None:
    """The vocoder a trial vocodes its samples with (the finaliser's), or None when no
    objective or constraint of `sweep` needs the samples' audio metric."""
    return finalise.vocoder if audio_metrics_named(sweep) else None


def check_sample_audio(
    sweep: SweepSettings, finalise: FinaliseSettings, features: FeatureConfig, source: str
) -> None:
    """Trials that vocode their samples need the finaliser's vocoder to read these features
    and openSMILE installed: found now, before Ray starts, not in the first trial."""
    named = audio_metrics_named(sweep)
    if not named:
        return
    if sweep.emotion_every > sweep.grace_period:
        raise ConfigError(
            f"{source}: sweep.emotion_every: {named[0]} is first computed at epoch "
            f"{sweep.emotion_every}, after ASHA's first rung (sweep.grace_period: "
            f"{sweep.grace_period}), which would compare trials without it; expected "
            f"emotion_every <= grace_period"
        )
    from emovae.evaluation.audio_quality import QUALITY_INSTALL

    where = f"{source}: {named[0]} vocodes with finalise.vocoder"
    _check_vocoder_reads(finalise.vocoder, features, where)
    if importlib.util.find_spec("opensmile") is None:
        raise ConfigError(
            f"{source}: {named[0]} measures samples with eGeMAPS: the package 'opensmile' "
            f"is not installed; {QUALITY_INSTALL}"
        )


def check_generation_objective(
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


def check_constraints(
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
