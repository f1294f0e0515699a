"""``torchblocks export``: export a torchblocks model (TorchScript, torch.export .pt2 or ONNX),
verified against eager mode."""
import argparse
import sys

import torch

from .._checks import writable_path
from ..export import FORMATS, export_model


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add ``export MODEL --out FILE [--format ...] [--input-size C H W]`` to a CLI."""
    parser = subparsers.add_parser(
        "export", help="export a torchblocks model (TorchScript, torch.export .pt2 or ONNX), verified against eager"
    )
    parser.add_argument("model", help="a name from torchblocks.models.MODEL_NAMES")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--format", default="torchscript", help=f"one of {', '.join(FORMATS)} (default torchscript)")
    parser.add_argument("--input-size", nargs=3, type=int, metavar=("C", "H", "W"), default=None,
                        help="example input size (default: 3 64 64 for SeparableConvNet, 3 299 299 for xception, 3 224 224 otherwise)")
    parser.add_argument("--batch", type=int, default=2, help="example batch size (dynamic for exported/onnx)")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (model default if omitted)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``export`` command: build the model, export, verify; one-line error and exit code 2 on bad input."""
    try:
        if args.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}; received {args.format!r}.")
        from .. import models

        if args.model not in models.MODEL_NAMES:
            raise ValueError(f"unknown model {args.model!r}; choose from {', '.join(models.MODEL_NAMES)}.")
        writable_path(args.out)
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        size = args.input_size or models.default_input_shape(args.model)
        if args.batch < 1 or any(s < 1 for s in size):
            raise ValueError(f"--batch and --input-size must be positive; received {args.batch} and {list(size)}.")
        model = models.get_model(args.model, **kwargs).eval()
        x = torch.randn(args.batch, *size)
        export_model(model, args.out, x, args.format)
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as exc:
        print(f"torchblocks export: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.format}, {args.model}, input {tuple(x.shape)}), verified against eager")
    return 0
