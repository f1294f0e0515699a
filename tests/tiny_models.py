"""Tiny model factories for the training tests (``tiny_models:tiny_cnn`` on the command line)."""
from torch import nn


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
