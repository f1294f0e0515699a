"""torchblocks: Keras architecture patterns as Keras-exact PyTorch modules.

Residual connections, channels-first batch normalization and depthwise-separable convolutions,
with fvcore parameter/FLOP analysis against standard convolutions.
"""
import importlib
from typing import Any

from .activations import get_activation
from .conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from .linear import Dense
from .norm import BatchNorm, ConvBN, DenseBN, SyncBatchNorm, convert_sync_batchnorm
from .pooling import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from .residual import DownsamplingResidualBlock, IdentityResidualBlock, Projection, Residual
from .fusion import fuse_bn
from .inference import optimize_for_inference
from . import analysis, ecosystem, export, models, optim

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `tb.interop.keras` / `tb.interop.torchvision` without importing either at `import torchblocks`.
    if name == "interop":
        return importlib.import_module(f"{__name__}.interop")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AvgPool2d",
    "BatchNorm",
    "Conv2d",
    "ConvBN",
    "Dense",
    "DenseBN",
    "DepthwiseConv2d",
    "DownsamplingResidualBlock",
    "GlobalAvgPool2d",
    "GlobalMaxPool2d",
    "IdentityResidualBlock",
    "MaxPool2d",
    "Projection",
    "Residual",
    "SeparableConv2d",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "fuse_bn",
    "get_activation",
    "optimize_for_inference",
]
