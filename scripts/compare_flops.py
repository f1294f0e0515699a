#!/usr/bin/env python
"""Separable vs standard convolution: parameters, MACs and (optionally) time.

The same code as ``torchblocks compare``; every option is passed through, e.g.::

    python scripts/compare_flops.py --model xception --latency --format markdown
"""
import sys

from torchblocks.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
