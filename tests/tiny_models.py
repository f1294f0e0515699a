"""Tiny model factories (``tiny_models:tiny_cnn`` on the command line) and an image folder for the
training tests."""
import os

import numpy as np
from torch import nn

CLASSES = ("circle", "cross", "square")
PER_CLASS = 10


def write_image_folder(root, classes=CLASSES, per_class=PER_CLASS) -> str:
    """``root/<class>/<i>.png``: 10x12 RGB images whose brightness depends on the class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            pixels = rng.integers(0, 80, size=(10, 12, 3)) + 80 * index
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, name, f"{i}.png"))
    return str(root)


def tiny_cnn(num_classes: int = 3, in_channels: int = 3) -> nn.Module:
    """Conv -> BatchNorm -> ReLU -> global average -> Linear: fast, with a BatchNorm to synchronise."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes),
    )


def tiny_dropout_cnn(num_classes: int = 3) -> nn.Module:
    """``tiny_cnn`` with dropout: its output depends on the random state a checkpoint must restore."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes),
    )


def no_num_classes() -> nn.Module:
    return nn.Linear(2, 2)


def not_a_module(num_classes: int = 3):
    return "model"
