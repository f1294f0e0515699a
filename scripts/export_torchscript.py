#!/usr/bin/env python
"""Export a torchblocks model, verified against eager mode.

    python scripts/export_torchscript.py xception --out xception.pt
    python scripts/export_torchscript.py resnet50 --out resnet50.pt2 --format exported --input-size 3 224 224

The same as ``torchblocks export MODEL --out FILE [--format torchscript|exported|onnx]
[--input-size C H W]``.
"""
import sys

from torchblocks.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
