"""The ``torchblocks`` command: ``compare`` (the main job), ``summary``, ``export``, ``bench``.

Each subcommand lives in a module of this package with an ``add_parser`` function that registers
its parser and points ``func`` at the function running it; ``build_parser`` wires them all. What
the commands share (the model-name lookup, argument types, the one error path) lives here. Bad
input ends with a one-line error on stderr and a non-zero exit status, never a traceback.
"""
import argparse
import sys
from typing import List, Optional

from .._checks import first_line

EXIT_USAGE = 2
EXIT_FAILURE = 1
FORMATS = ("text", "markdown", "csv", "json")
UNITS_NOTE = (
    "MACs = fused multiply-adds as fvcore counts them (FLOPs = 2 x MACs); params = trainable "
    "parameters"
)
MACS_NOTE = UNITS_NOTE + "; ratio = separable / standard."


class UsageError(Exception):
    """A malformed command line; ``main`` prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default text)")


def add_input_size(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--input-size", nargs=3, type=positive_int, metavar=("C", "H", "W"), default=None, help=help_text
    )


def model_name(name: str) -> str:
    """The canonical spelling of a ``torchblocks.models`` name, or ``UsageError``."""
    from ..models import MODEL_NAMES

    for known in MODEL_NAMES:
        if known.lower() == name.lower():
            return known
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def build_parser() -> argparse.ArgumentParser:
    """The ``torchblocks`` parser with every subcommand."""
    from . import bench, compare, export, summary

    parser = _Parser(prog="torchblocks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (compare, summary, export, bench):
        command.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``torchblocks`` command on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    prefix = f"torchblocks {args.command}: error:"
    try:
        return args.func(args)
    except UsageError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as error:
        print(f"{prefix} {first_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
