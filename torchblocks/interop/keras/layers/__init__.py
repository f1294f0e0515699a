"""Modules that reproduce Keras layers with no counterpart in torch.nn or torchblocks.

They take the tensors of a converted model: (N, C, H, W) for a Keras (N, H, W, C) map (a
``channels_first`` Keras model's maps are already (N, C, H, W)), and Keras' own layout for every
other rank. Each is constructible from its attributes (``extra_repr`` lists them), scriptable, and
computes what Keras computes on its torch backend, operation for operation.
"""
from .conv import Conv2dTranspose
from .merging import (
    Add, Arithmetic, Average, Concatenate, Divide, Maximum, Minimum, Multiply, ScaleAdd, Subtract,
)
from .scaling import FrozenBatchNorm, LayerNorm, LayerScale, Normalization, PointwiseDense, Rescaling, StochasticDepth
from .shaping import Cropping2d, Flatten, Permute, Reshape

__all__ = [
    "Add", "Arithmetic", "Average", "Concatenate", "Conv2dTranspose", "Cropping2d", "Divide", "Flatten",
    "FrozenBatchNorm", "LayerNorm", "LayerScale", "Maximum", "Minimum", "Multiply", "Normalization",
    "Permute", "PointwiseDense", "Rescaling", "Reshape", "ScaleAdd", "StochasticDepth", "Subtract",
]
