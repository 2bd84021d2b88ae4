"""Command-line entry point: `python -m emovae <command> ...`.

One `_cmd_*` function per subcommand, registered in `build_parser()`. Heavy imports (torch,
ray) belong inside the `_cmd_*` functions so that `data summary` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from emovae import __version__
from emovae.config import ConfigError, apply_overrides
from emovae.data.corpus import FORMATS, CorpusError
from emovae.data.labels import LabelError

# Errors caused by the user's input (paths, names, config values): reported in one line, because
# a traceback would only hide the message. Anything else is a bug and keeps its traceback.
USER_ERRORS = (CorpusError, LabelError, ConfigError, OSError, ValueError)

EXIT_USER_ERROR = 2  # same code argparse uses for bad arguments
# emovae.audio.vocoder.VOCODERS, written out so --help does not import torch (a test checks).
VOCODER_CHOICES = ("griffinlim", "hifigan")


Command = Callable[[argparse.Namespace], int]


def _command(
    commands: argparse._SubParsersAction,
    name: str,
    run: Command,
    summary: str,
    description: str = "",
) -> argparse.ArgumentParser:
    """A subcommand that runs `run`: `summary` in the list of commands, `description` (or
    the summary) in its own --help."""
    parser = commands.add_parser(name, help=summary, description=description or None)
    parser.set_defaults(func=run)
    return parser


def _cmd_data_summary(args: argparse.Namespace) -> int:
    from emovae.data.summary import format_summary, summarize_corpus

    summary = summarize_corpus(args.path, format=args.format)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="inspect corpora")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    summary = _command(
        data_commands,
        "summary",
        _cmd_data_summary,
        "emotions, speakers, audio formats, durations and unreadable files of a corpus",
        "Summarise a corpus folder (EmoDB or RAVDESS names) or a CSV manifest "
        "(path,emotion,speaker), using the corpus's native emotion labels.",
    )
    summary.add_argument("path", help="corpus folder or CSV manifest")
    summary.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="corpus naming scheme (default: auto, guessed from the file names)",
    )
    summary.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import yaml

    from emovae.config import ExperimentConfig, experiment_from_dict, load_experiment

    # The config is checked before torch and friends are imported: a typo fails in a blink.
    if args.config:
        experiment = load_experiment(args.config, args.overrides)
    else:
        experiment = experiment_from_dict(
            apply_overrides(dataclasses.asdict(ExperimentConfig()), args.overrides)
        )
    if args.data:
        experiment.data.path = args.data
    if args.skip_bad_files:
        experiment.data.skip_bad_files = True
    from emovae.dataset import prepare_data
    from emovae.evaluate import evaluate_checkpoint
    from emovae.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(
        yaml.safe_dump(dataclasses.asdict(experiment), sort_keys=False)
    )

    data = prepare_data(experiment.data, experiment.features, progress=True)
    if data.bad_files:
        (out / "bad_files.json").write_text(json.dumps(data.bad_files, indent=1))
        print(f"skipped {len(data.bad_files)} unreadable file(s): see {out / 'bad_files.json'}")
    print(
        f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test clips, "
        f"emotions: {', '.join(data.label_names)}"
    )
    result = train(experiment.train, data, out / "checkpoints", progress=True)
    (out / "history.json").write_text(json.dumps(result.history, indent=1))
    metrics = evaluate_checkpoint(
        result.best_checkpoint, data, out / "evaluation", result.history, experiment.train.device
    )
    print(f"best epoch {result.best_epoch}; test metrics (held-out speakers):")
    for key, value in sorted(metrics.items()):
        print(f"  {key} = {value:.5g}")
    print(f"checkpoint: {result.best_checkpoint}\nplots: {out / 'evaluation'}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from emovae.generate import generate

    manifest = generate(
        args.checkpoint,
        args.n,
        args.out,
        emotion=args.emotion,
        seed=args.seed,
        **_vocoder_options(args),
    )
    print(f"wrote {args.n} WAV files; manifest: {manifest}")
    return 0


def _add_model_commands(commands: argparse._SubParsersAction) -> None:
    train = _command(
        commands,
        "train",
        _cmd_train,
        "train one VAE, evaluate it on the held-out test speakers",
        "Train one VAE. Writes checkpoints/, evaluation/ (metrics.json, plots), "
        "history.json and config.yaml into --out.",
    )
    train.add_argument("--data", help="corpus folder, CSV manifest, or 'synthetic'")
    train.add_argument("--config", help="experiment YAML with sections data, features, train")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config entry, e.g. --set train.max_epochs=5 (repeatable)",
    )
    train.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="skip unreadable WAVs (listed in bad_files.json) instead of stopping",
    )

    gen = _command(
        commands,
        "generate",
        _cmd_generate,
        "sample latents -> mel -> vocoder (Griffin-Lim or HiFi-GAN) -> WAV files plus manifest.csv",
    )
    gen.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    gen.add_argument("--n", type=int, default=100, help="number of clips (default 100)")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--emotion", help="conditional models: only this emotion")
    gen.add_argument("--seed", type=int, default=0)
    _add_vocoder_arguments(
        gen,
        default="griffinlim",
        vocoder_help="griffinlim (any features) or hifigan (features made with the hifigan preset)",
    )


def _add_vocoder_arguments(
    parser: argparse.ArgumentParser, default: str, vocoder_help: str
) -> None:
    """--vocoder, --iters and --device: how a command that writes audio turns mels into it."""
    parser.add_argument("--vocoder", choices=VOCODER_CHOICES, default=default, help=vocoder_help)
    parser.add_argument("--iters", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def _vocoder_options(args: argparse.Namespace) -> dict[str, object]:
    """What `_add_vocoder_arguments` parsed, as the keywords generate and resynthesize take."""
    return {"vocoder": args.vocoder, "n_iter": args.iters, "device": args.device}


def _cmd_resynth(args: argparse.Namespace) -> int:
    from emovae.audio.hifigan import VocoderUnavailableError
    from emovae.audio.resynth import resynthesize

    try:
        result = resynthesize(
            args.in_dir,
            args.out,
            batch_size=args.batch_size,
            **_vocoder_options(args),
            progress=sys.stderr.isatty(),
        )
    except VocoderUnavailableError as exc:  # an ImportError: a missing extra, not a bug
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        f"wrote {len(result.written)} of {len(result.inputs)} files to {args.out} "
        f"(vocoder {result.vocoder}, {result.features.n_mels} mels); "
        f"{len(result.failures)} failed"
    )
    for path, reason in result.failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    return 1 if result.failures else 0


def _add_audio_commands(commands: argparse._SubParsersAction) -> None:
    resynth = _command(
        commands,
        "resynth",
        _cmd_resynth,
        "copy synthesis: audio -> log-mel -> vocoder -> audio, for a folder of files",
        "Resynthesise every .wav/.flac/.ogg under IN_DIR through the features and a "
        "vocoder (what a perfect VAE would sound like). Writes 22,050 Hz mono 16-bit WAVs of the "
        "inputs' durations under --out, same relative paths. Exits 1 if any file failed.",
    )
    resynth.add_argument("in_dir", metavar="IN_DIR", help="folder of audio files (recursive)")
    resynth.add_argument("--out", required=True, help="output folder")
    _add_vocoder_arguments(
        resynth,
        default="hifigan",
        vocoder_help="hifigan: 80-mel HiFi-GAN features (needs the vocoder extra); griffinlim: the "
        "default 128-mel features (default: hifigan)",
    )
    resynth.add_argument("--batch-size", type=int, default=8, help="clips per vocoder call")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emovae",
        description="Convolutional VAE for emotional-speech log-mel spectrograms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data_commands(commands)
    _add_model_commands(commands)
    _add_audio_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help, --version and bad arguments; return its code so that callers
        # of main() (tests, wrappers) get an int rather than an exception.
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error worth a message. Pointing stdout at
        # devnull stops Python's flush at exit from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
