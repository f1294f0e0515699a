"""Convolutions: Conv2D (any groups), DepthwiseConv2D, SeparableConv2D, Conv2DTranspose."""
from typing import Any, Dict

from torch import nn

from ....conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from ..layers import Conv2dTranspose
from .registry import LayerCall, check_data_format, check_rank, config_activation, converts, load_into


def _common(call: LayerCall) -> Dict[str, Any]:
    check_rank(call, (4,))
    check_data_format(call)
    config = call.config
    return dict(
        kernel_size=tuple(config["kernel_size"]), stride=tuple(config["strides"]),
        padding=config["padding"], dilation=tuple(config["dilation_rate"]),
        bias=config["use_bias"], activation=config_activation(call, call.torch_dim(-1, 4)),
    )


@converts("Conv2D")
def _conv(call: LayerCall) -> nn.Module:
    common = _common(call)
    record = call.record()
    groups = call.config["groups"]
    channels = record.arrays["kernel"].shape[2] * groups
    return load_into(Conv2d(channels, call.config["filters"], groups=groups, **common), record)


@converts("DepthwiseConv2D")
def _depthwise(call: LayerCall) -> nn.Module:
    common = _common(call)
    record = call.record()
    channels = record.arrays["kernel"].shape[2]
    return load_into(DepthwiseConv2d(channels, depth_multiplier=call.config["depth_multiplier"], **common), record)


@converts("SeparableConv2D")
def _separable(call: LayerCall) -> nn.Module:
    common = _common(call)
    record = call.record()
    channels = record.arrays["depthwise_kernel"].shape[2]
    module = SeparableConv2d(
        channels, call.config["filters"], depth_multiplier=call.config["depth_multiplier"], **common
    )
    return load_into(module, record)


@converts("Conv2DTranspose")
def _transpose(call: LayerCall) -> nn.Module:
    common = _common(call)
    record = call.record()
    kernel = record.arrays["kernel"]  # (kh, kw, out, in)
    output_padding = call.config.get("output_padding")
    module = Conv2dTranspose(
        kernel.shape[3], kernel.shape[2], common["kernel_size"], common["stride"], common["padding"],
        (-1, -1) if output_padding is None else tuple(output_padding), common["dilation"], common["bias"],
        common["activation"],
    )
    return load_into(module, record)
