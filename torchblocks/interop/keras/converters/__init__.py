"""The converter table of ``from_keras``, one module per family of Keras layers.

Adding a layer is one function in the right family module, registered with ``@converts`` (see
``registry``), plus a test row.
"""
from . import conv, core, merging, normalization, ops, pooling, regularization, reshaping  # noqa: F401 (registers)
from .registry import CONVERTERS, OPS_PREFIX, Converter, LayerCall, converts, unsupported

__all__ = ["CONVERTERS", "OPS_PREFIX", "Converter", "LayerCall", "converts", "unsupported"]
