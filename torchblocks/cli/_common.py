"""What the ``torchblocks`` subcommands share: exit codes, argument types, the model look-up,
progress bars."""
import argparse
import importlib
import os
import sys
from typing import Any, Iterable, Optional

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


class Parser(argparse.ArgumentParser):
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


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bar (it is drawn on stderr, and only when stderr is a terminal)",
    )


def progress(items: Iterable[Any], args: argparse.Namespace, total: Optional[int] = None) -> Any:
    """``items`` with a progress bar on stderr: off with ``--no-progress`` or when stderr is not a
    terminal (tqdm's ``disable=None``), so nothing ever mixes into stdout or a captured log."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc="counting", unit="net", leave=False, file=sys.stderr,
                disable=True if args.no_progress else None, dynamic_ncols=True)


def model_name(name: str) -> str:
    """The canonical spelling of a ``torchblocks.models`` name, or ``UsageError``."""
    from ..models import MODEL_NAMES

    for known in MODEL_NAMES:
        if known.lower() == name.lower():
            return known
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def is_model_spec(text: str) -> bool:
    """Whether ``--model`` names a user's model (``module:attribute``) rather than a torchblocks one."""
    return ":" in text


def load_model_spec(spec: str) -> Any:
    """The ``nn.Module`` that ``module:attribute`` names: the attribute itself, or what calling it
    with no arguments returns (a factory function or a module class).

    The current directory is searched first, as ``python -m`` does.

    Raises:
        UsageError: ``spec`` is not ``module:attribute``.
        ImportError: the module cannot be imported.
        ValueError: the module has no such attribute.
        RuntimeError: calling the attribute failed.
        TypeError: the result is not an ``nn.Module``.
    """
    from torch import nn

    from .._checks import first_line

    module_name, _, attribute = spec.partition(":")
    parts = attribute.split(".")
    if not module_name or ":" in attribute or not all(p.isidentifier() for p in parts) or not all(
            p.isidentifier() for p in module_name.split(".")):
        raise UsageError(
            f"--model {spec!r}: expected a torchblocks model name or MODULE:ATTRIBUTE, e.g. "
            "mypkg.nets:build"
        )
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may raise anything while importing
        raise ImportError(f"--model {spec}: cannot import {module_name!r}: {first_line(error)}") from error
    finally:
        if added:
            sys.path.remove(os.getcwd())
    target: Any = module
    for part in parts:
        if not hasattr(target, part):
            raise ValueError(f"--model {spec}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if callable(target) and not isinstance(target, nn.Module):
        try:
            target = target()
        except Exception as error:  # the user's factory may raise anything
            raise RuntimeError(
                f"--model {spec}: calling {attribute}() failed: {type(error).__name__}: {first_line(error)}"
            ) from error
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"--model {spec}: expected an nn.Module (or a function returning one); received "
            f"{type(target).__name__}"
        )
    return target
