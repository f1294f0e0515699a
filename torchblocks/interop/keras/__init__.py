"""Keras 3 interop: copy Keras weights into torch modules, convert Keras models to torchblocks.

``load_keras_weights(module, source)`` copies the weights of a Keras layer, a Keras model, a
``.keras`` file or a ``.weights.h5`` file into an existing torch module; ``from_keras(model)``
builds the torch module too. Both work on channels-first (N, C, H, W) tensors where Keras used
channels-last (N, H, W, C), and convert the weight layouts:

================================  =========================================================
Keras                             torch
================================  =========================================================
Conv2D kernel (kh, kw, C/g, O)    ``Conv2d.weight`` (O, C/g, kh, kw)
DepthwiseConv2D (kh, kw, C, m)    ``DepthwiseConv2d.weight`` (C·m, 1, kh, kw), channel c·m + j
SeparableConv2D                   ``SeparableConv2d.depthwise`` / ``.pointwise`` (O, C·m, 1, 1)
BatchNormalization                ``BatchNorm.bn`` / ``nn.BatchNorm*d``; eps, momentum 1 - m
Dense kernel (in, out)            ``Dense`` / ``nn.Linear`` weight (out, in)
================================  =========================================================

Modules: ``backend`` (lazy imports of keras and h5py), ``sources`` (Keras layers, models and files
read into uniform records), ``weights`` (``load_keras_weights``), ``graph`` (the only reader of
Keras' private graph attributes), ``convert`` (``from_keras`` and its converter table), ``layers``
(modules for Keras layers torchblocks has no counterpart of), ``verify`` (a conversion checked
against Keras layer by layer), ``source`` (``to_source``: the conversion as readable Python).
Keras is imported only when a function needs it (``pip install "torchblocks[keras]"``); a
``.weights.h5`` file is read with h5py alone.
"""
from .convert import from_keras
from .source import SourceFiles, to_source
from .verify import VerificationError, VerifyReport, verify
from .weights import KerasLoadResult, load_keras_weights

__all__ = [
    "KerasLoadResult", "SourceFiles", "VerificationError", "VerifyReport", "from_keras", "load_keras_weights",
    "to_source", "verify",
]
