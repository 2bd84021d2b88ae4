"""Command-line entry point: `python -m emovae <command> ...`.

One `_cmd_*` function per subcommand, registered in `build_parser()`. Heavy imports (torch,
ray) belong inside the `_cmd_*` functions so that `data summary` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from emovae import __version__
from emovae.config import ConfigError
from emovae.data.corpus import FORMATS, CorpusError
from emovae.data.labels import LabelError

# Errors caused by the user's input (paths, names, config values): reported in one line, because
# a traceback would only hide the message. Anything else is a bug and keeps its traceback.
USER_ERRORS = (CorpusError, LabelError, ConfigError, OSError)

EXIT_USER_ERROR = 2  # same code argparse uses for bad arguments


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

    summary = data_commands.add_parser(
        "summary",
        help="emotions, speakers, audio formats, durations and unreadable files of a corpus",
        description="Summarise a corpus folder (EmoDB or RAVDESS names) or a CSV manifest "
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
    summary.set_defaults(func=_cmd_data_summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emovae",
        description="Convolutional VAE for emotional-speech log-mel spectrograms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_data_commands(commands)
    # Further commands (train, generate) register here, each with an `_add_*_commands` helper
    # and a `_cmd_*` function that sets `func`.
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
