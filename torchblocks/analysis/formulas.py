"""Closed-form parameter and MAC counts for every block, in ``count()``'s convention.

Integers throughout; ``count()`` equals these exactly (tests sweep kernel, stride, dilation,
depth multiplier and padding). One MAC is one fused multiply-add; FLOPs = 2 × MACs. Output sizes
follow Keras: ``'same'`` gives ``ceil(n / s)``, ``'valid'`` ``floor((n - (k - 1)·d - 1) / s) + 1``.
"""
from typing import Tuple, Union

from ..padding import PaddingArg, normalize_padding, output_size, to_pair

IntPair = Union[int, Tuple[int, int]]


def conv_output_hw(
    height: int, width: int, kernel_size: IntPair, stride: IntPair = 1,
    padding: PaddingArg = "valid", dilation: IntPair = 1,
) -> Tuple[int, int]:
    """(H', W') of a Keras-padded convolution or pooling on an (H, W) map."""
    kernel, strides, dilations = (to_pair(v, n) for v, n in (
        (kernel_size, "kernel_size"), (stride, "stride"), (dilation, "dilation")))
    spec = normalize_padding(padding)
    pads = (spec, spec) if isinstance(spec, str) else spec
    h, w = (output_size(n, k, s, p, d)
            for n, k, s, p, d in zip((height, width), kernel, strides, pads, dilations))
    return h, w


def conv2d_params(
    in_channels: int, out_channels: int, kernel_size: IntPair, groups: int = 1, bias: bool = True
) -> int:
    """``C_out·(C_in/groups)·kh·kw (+ C_out)``. Keras: ``Conv2D.count_params()``."""
    kh, kw = to_pair(kernel_size, "kernel_size")
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def conv2d_macs(
    in_channels: int, out_channels: int, kernel_size: IntPair, output_hw: Tuple[int, int],
    groups: int = 1, batch: int = 1, activation: bool = False,
) -> int:
    """``N·C_out·(C_in/groups)·kh·kw·H'·W'`` (fvcore: bias not counted), plus
    ``N·C_out·H'·W'`` for an activation."""
    kh, kw = to_pair(kernel_size, "kernel_size")
    positions = batch * output_hw[0] * output_hw[1]
    macs = positions * out_channels * (in_channels // groups) * kh * kw
    return macs + (positions * out_channels if activation else 0)


def depthwise_params(
    in_channels: int, kernel_size: IntPair, depth_multiplier: int = 1, bias: bool = True
) -> int:
    """``C·m·kh·kw (+ C·m)``. Keras: ``DepthwiseConv2D.count_params()``."""
    return conv2d_params(in_channels, in_channels * depth_multiplier, kernel_size, in_channels, bias)


def depthwise_macs(
    in_channels: int, kernel_size: IntPair, output_hw: Tuple[int, int], depth_multiplier: int = 1,
    batch: int = 1, activation: bool = False,
) -> int:
    """``N·C·m·kh·kw·H'·W'`` (one filter per output channel), plus an activation's ``N·C·m·H'·W'``."""
    return conv2d_macs(
        in_channels, in_channels * depth_multiplier, kernel_size, output_hw, in_channels, batch,
        activation,
    )


def separable_params(
    in_channels: int, out_channels: int, kernel_size: IntPair, depth_multiplier: int = 1,
    bias: bool = True,
) -> int:
    """``kh·kw·C_in·m + C_in·m·C_out (+ C_out)``. Keras: ``SeparableConv2D.count_params()``."""
    mid = in_channels * depth_multiplier
    return (depthwise_params(in_channels, kernel_size, depth_multiplier, bias=False)
            + conv2d_params(mid, out_channels, 1, bias=bias))


def separable_macs(
    in_channels: int, out_channels: int, kernel_size: IntPair, output_hw: Tuple[int, int],
    depth_multiplier: int = 1, batch: int = 1, activation: bool = False,
) -> int:
    """Depthwise ``N·C_in·m·kh·kw·H'·W'`` + pointwise ``N·C_in·m·C_out·H'·W'`` (+ activation)."""
    mid = in_channels * depth_multiplier
    return (depthwise_macs(in_channels, kernel_size, output_hw, depth_multiplier, batch)
            + conv2d_macs(mid, out_channels, 1, output_hw, 1, batch, activation))


def separable_macs_ratio(out_channels: int, kernel_size: IntPair, depth_multiplier: int = 1) -> float:
    """Separable / standard MACs for one layer: ``m·(1/C_out + 1/(kh·kw))``.

    Independent of C_in, stride and input size; with m = 1 the textbook ``1/C_out + 1/k²``.
    """
    kh, kw = to_pair(kernel_size, "kernel_size")
    return depth_multiplier * (1 / out_channels + 1 / (kh * kw))


def batchnorm_macs(numel: int, training: bool = False, affine: bool = True) -> int:
    """fvcore's BatchNorm cost per element of the input: eval 2 (1 without affine), train 5 (4)."""
    if training:
        return numel * (5 if affine else 4)
    return numel * (2 if affine else 1)


def elementwise_macs(numel: int) -> int:
    """A residual add or an activation: 1 per output element."""
    return numel


def pool_macs(kernel_size: IntPair, output_numel: int) -> int:
    """Max or average pooling: ``kh·kw`` per output element."""
    kh, kw = to_pair(kernel_size, "kernel_size")
    return kh * kw * output_numel


def dense_macs(in_features: int, out_features: int, rows: int = 1, activation: bool = False) -> int:
    """``rows·in·out`` (bias not counted), plus ``rows·out`` for an activation."""
    return rows * in_features * out_features + (rows * out_features if activation else 0)
