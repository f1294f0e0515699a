"""The ``torchblocks`` command."""
import argparse
from typing import List, Optional

import torch

from . import Conv2d, SeparableConv2d


def _compare(args: argparse.Namespace) -> int:
    x = torch.randn(1, 64, 56, 56)
    print(f"{'layer':<40}{'params':>12}  output")
    for layer in (Conv2d(64, 128, 3, padding="same"), SeparableConv2d(64, 128, 3, padding="same")):
        params = sum(p.numel() for p in layer.parameters())
        print(f"{repr(layer).splitlines()[0]:<40}{params:>12,}  {tuple(layer(x).shape)}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchblocks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compare", help="parameters of separable vs standard convolution").set_defaults(func=_compare)
    from .export import add_export_parser  # the export command's wiring lives beside the exporters

    add_export_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)
