#!/usr/bin/env python
"""Train a torchblocks model: the same code as ``torchblocks train``; every option passes through.

    python scripts/train.py --dataset digits --model SeparableConvNet --epochs 3
    torchrun --nproc-per-node 2 scripts/train.py --dataset digits --model SeparableConvNet
"""
import sys

from torchblocks.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
