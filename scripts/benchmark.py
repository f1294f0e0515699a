#!/usr/bin/env python
"""Benchmarks against plain PyTorch, timm and Keras, as median ratios in one run.

The same code as ``torchblocks bench``; every option is passed through, e.g.::

    python scripts/benchmark.py --quick --json bench.json
    python scripts/benchmark.py --threads 2 --json BENCHMARKS.json
"""
import sys

from torchblocks.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
