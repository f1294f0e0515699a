"""The torchblocks command: compare (the main job), summary, export, port, bench, train.

Each subcommand lives in a module of this package with an ``add_parser`` function that registers
its parser and points ``func`` at the function running it; ``build_parser`` wires them all, and
``main`` is the one error path. What the commands share (the model-name lookup, argument types)
lives in ``_common``. Bad input ends with a one-line error on stderr and a non-zero exit status
(2 for a malformed command line, 1 for a failure), never a traceback.
"""
import argparse
import sys
from typing import List, Optional

from .._checks import first_line
from ._common import EXIT_FAILURE, EXIT_USAGE, Parser, UsageError

DESCRIPTION = (
    "Keras architecture patterns in PyTorch: compare separable and standard convolutions "
    "(parameters, MACs, time), summarise, export and benchmark the torchblocks models, port "
    "Keras models to PyTorch source, and train them."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``torchblocks`` parser with every subcommand."""
    from .. import __version__
    from . import bench, compare, export, port, summary, train

    parser = Parser(prog="torchblocks", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"torchblocks {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (compare, summary, export, port, bench, train):
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
    except SystemExit as done:  # --help and --version print, then argparse exits
        return done.code if isinstance(done.code, int) else 0
    prefix = f"torchblocks {args.command}: error:"
    try:
        return args.func(args)
    except UsageError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as error:
        print(f"{prefix} {first_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
