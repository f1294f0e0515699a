"""What the ``torchblocks`` subcommands share: exit codes, argument types, the model-name lookup."""
import argparse

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


def model_name(name: str) -> str:
    """The canonical spelling of a ``torchblocks.models`` name, or ``UsageError``."""
    from ..models import MODEL_NAMES

    for known in MODEL_NAMES:
        if known.lower() == name.lower():
            return known
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
