"""Interop with other frameworks: Keras 3 (weights and whole models) and torchvision.

``torchblocks.interop.keras``: ``load_keras_weights``, ``from_keras``; keras itself is imported
only when they are called.
"""
from . import keras

__all__ = ["keras"]
