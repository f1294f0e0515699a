"""Convolutions with Keras padding: ``Conv2d``, ``DepthwiseConv2d`` and ``SeparableConv2d``.

``padding="same"`` follows Keras/TensorFlow for every stride and dilation (output ``ceil(n / s)``,
the extra pixel of an odd total pad at the bottom/right). Where that pad is static and symmetric
it is handed to ``nn.Conv2d`` once at construction, so the layer costs nothing over ``nn.Conv2d``;
otherwise the pad is computed from each input's size, and applied by the convolution itself
whenever it comes out symmetric, with ``F.pad`` only in the asymmetric case.

The layers are leaf modules (an activation given by name is applied as a function, not held as a
child) and their input checks are ``torch.fx`` leaf functions, so ``torch.fx.symbolic_trace`` and
FX quantization trace through them to the plain ``conv2d`` call.
"""
from typing import Dict, List, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from .activations import ActivationArg, KerasActivation, apply_activation
from ._checks import check_nchw, check_window_fits, dtype_error
from .padding import (
    PaddingArg,
    check_positive_int,
    check_weight_size,
    effective_kernel,
    is_static_same,
    min_input_hw,
    normalize_padding,
    pad_same,
    output_size as _output_size,
    same_pad_table,
    to_pair,
)

# Shape checks and the per-input 'same' pad read sizes in Python: torch.fx records them as calls.
torch.fx.wrap("check_nchw")
torch.fx.wrap("check_window_fits")


def _conv_repr(channels: str, spatial: "Conv2d", bias: bool, extra: Dict[str, int]) -> str:
    """The ``extra_repr`` of the convolutions: their constructor arguments, defaults left out."""
    s = f"{channels}, kernel_size={spatial.kernel_size}, stride={spatial.stride}"
    s += f", padding={spatial.padding_spec!r}"
    if spatial.dilation != (1, 1):
        s += f", dilation={spatial.dilation}"
    s += "".join(f", {key}={value}" for key, value in extra.items())
    s = s if bias else s + ", bias=False"
    return s + spatial._activation_repr()


def _check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    check_positive_int(in_channels, "in_channels")
    check_positive_int(out_channels, "out_channels")
    check_positive_int(groups, "groups")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value % groups:
            raise ValueError(
                f"Invalid value for argument `groups`. `{name}` must be divisible by groups. "
                f"Received {name}={value}, groups={groups}."
            )


class Conv2d(KerasActivation, nn.Conv2d):
    """2-D convolution with Keras padding and an optional activation. Keras: ``Conv2D``.

    A drop-in ``nn.Conv2d`` (same parameters and state-dict keys) on (N, C, H, W) tensors.

    Args:
        in_channels: C of the (N, C, H, W) input.
        out_channels: channels of the (N, out_channels, H', W') output.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw).
        padding: ``"valid"`` (none), ``"same"`` (Keras: H' = ceil(H / sh) for every stride and
            dilation, extra pixel bottom/right), or an int / (ph, pw) of symmetric zero padding.
        dilation: int or (dh, dw).
        groups: as ``nn.Conv2d``; must divide both channel counts.
        bias: learn an additive bias.
        activation: Keras ``activation=``: ``None``, a Keras name such as ``"relu"`` (applied as a
            function: the layer stays a leaf module), or a module (kept as the ``act`` child).

    Attributes:
        act: the activation as a module (the ``act`` child, else built from the name).
    """

    activation: Final[str]
    has_activation: Final[bool]
    module_activation: Final[bool]
    same_is_dynamic: Final[bool]
    layer_name: Final[str]
    min_height: Final[int]
    min_width: Final[int]
    window: Final[str]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: PaddingArg = "valid",
        dilation: Union[int, Tuple[int, int]] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        activation: ActivationArg = None,
        device=None,
        dtype=None,
    ) -> None:
        _check_channels(in_channels, out_channels, groups)
        kernel = to_pair(kernel_size, "kernel_size")
        strides = to_pair(stride, "stride")
        dilations = to_pair(dilation, "dilation")
        check_weight_size(
            (out_channels, in_channels // groups) + kernel, "`in_channels`, `out_channels`, `kernel_size`"
        )
        if not isinstance(bias, bool):
            raise TypeError(f"Invalid type for argument `bias`. Expected a bool. Received bias={bias!r}.")
        spec = normalize_padding(padding)
        static_same = spec == "same" and all(
            is_static_same(k, s, d) for k, s, d in zip(kernel, strides, dilations)
        )
        if static_same:
            torch_padding = tuple((effective_kernel(k, d) - 1) // 2 for k, d in zip(kernel, dilations))
        elif isinstance(spec, str):
            torch_padding = (0, 0)
        else:
            torch_padding = spec
        super().__init__(
            in_channels, out_channels, kernel, strides, torch_padding, dilations, groups, bias,
            device=device, dtype=dtype,
        )
        self.padding_spec = spec
        self.layer_name = type(self).__name__
        self.same_is_dynamic = spec == "same" and not static_same
        self.min_height, self.min_width = min_input_hw(kernel, dilations, spec)
        self.window = f"kernel_size={kernel}, dilation={dilations}, padding={spec!r}"
        # Keras 'same' pads by input length mod stride, per axis (unused unless same_is_dynamic).
        tables = [same_pad_table(k, s, d) for k, s, d in zip(kernel, strides, dilations)]
        self.same_pads_h: List[List[int]] = tables[0]
        self.same_pads_w: List[List[int]] = tables[1]
        self._init_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        check_nchw(x, self.in_channels, self.layer_name)
        check_window_fits(x, self.min_height, self.min_width, self.window, self.layer_name)
        if torch.jit.is_scripting():
            x = self._convolve(x)
        else:
            x = self._convolve_or_explain(x)
        if self.module_activation:
            x = self.act(x)
        elif self.has_activation:
            x = apply_activation(x, self.activation)
        return x

    def _convolve(self, x: Tensor) -> Tensor:
        if self.same_is_dynamic:
            x, pad = pad_same(x, self.same_pads_h, self.same_pads_w)
            return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _convolve_or_explain(self, x: Tensor) -> Tensor:
        # Eager only (TorchScript has no try): a dtype mismatch is named here, after torch refused
        # it, so a call that works (under torch.autocast too) pays nothing for the check.
        try:
            return self._convolve(x)
        except RuntimeError as error:
            explained = dtype_error(self.layer_name, x, error, self.weight)
            if explained is None:
                raise
            raise explained from error

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """Spatial output size (H', W') for an (H, W) input, by the Keras formula."""
        pads = (self.padding_spec,) * 2 if self.padding_spec == "same" else self.padding
        h, w = (
            _output_size(n, k, s, p, d)
            for n, k, s, p, d in zip((height, width), self.kernel_size, self.stride, pads, self.dilation)
        )
        return h, w

    def extra_repr(self) -> str:
        extra = {"groups": self.groups} if self.groups != 1 else {}
        return _conv_repr(f"{self.in_channels}, {self.out_channels}", self, self.bias is not None, extra)


class DepthwiseConv2d(Conv2d):
    """Per-channel spatial convolution. Keras: ``DepthwiseConv2D``.

    A grouped ``Conv2d`` with ``groups=in_channels``: (N, C, H, W) -> (N, C * depth_multiplier,
    H', W'); output channel ``c * depth_multiplier + j`` is filter ``j`` of input channel ``c``, and
    the weight has shape (C * depth_multiplier, 1, kh, kw) (Keras: (kh, kw, C, depth_multiplier)).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: PaddingArg = "valid",
        dilation: Union[int, Tuple[int, int]] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        *,
        activation: ActivationArg = None,
        device=None,
        dtype=None,
    ) -> None:
        check_positive_int(in_channels, "in_channels")
        check_positive_int(depth_multiplier, "depth_multiplier")
        check_weight_size(
            (in_channels * depth_multiplier, 1) + to_pair(kernel_size, "kernel_size"),
            "`in_channels`, `depth_multiplier`, `kernel_size`",
        )
        super().__init__(
            in_channels, in_channels * depth_multiplier, kernel_size, stride, padding, dilation,
            groups=in_channels, bias=bias, activation=activation, device=device, dtype=dtype,
        )
        self.depth_multiplier = depth_multiplier

    def extra_repr(self) -> str:
        extra = {"depth_multiplier": self.depth_multiplier}
        return _conv_repr(f"{self.in_channels}", self, self.bias is not None, extra)


class SeparableConv2d(KerasActivation, nn.Module):
    """Depthwise conv (no bias) followed by a 1×1 pointwise conv. Keras: ``SeparableConv2D``.

    (N, in_channels, H, W) -> (N, out_channels, H', W'), with
    ``k·k·C_in·m + C_in·m·C_out (+ C_out)`` parameters, exactly as Keras counts them.

    Args:
        in_channels: C of the (N, C, H, W) input.
        out_channels: channels after the pointwise conv.
        kernel_size, stride, padding, dilation: of the depthwise conv, as in ``Conv2d``.
        depth_multiplier: depthwise outputs per input channel.
        bias: bias on the pointwise conv (the depthwise conv never has one, as in Keras).
        activation: applied after the pointwise conv, as Keras' ``activation=``: the ``act`` child,
            as in ``nn.Sequential(depthwise, pointwise, act)`` (no child without an activation).
    """

    activation: Final[str]
    has_activation: Final[bool]
    module_activation: Final[bool]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[int, Tuple[int, int]] = 1,
        padding: PaddingArg = "valid",
        dilation: Union[int, Tuple[int, int]] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        *,
        activation: ActivationArg = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.depthwise = DepthwiseConv2d(
            in_channels, kernel_size, stride, padding, dilation, depth_multiplier, bias=False,
            device=device, dtype=dtype,
        )
        # The depthwise conv checks the input: its errors should name the layer the user called.
        self.depthwise.layer_name = type(self).__name__
        self.pointwise = Conv2d(
            in_channels * depth_multiplier, out_channels, 1, bias=bias, device=device, dtype=dtype
        )
        self._init_activation(activation, named_as_module=True)

    @property
    def in_channels(self) -> int:
        return self.depthwise.in_channels

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        x = self.pointwise(self.depthwise(x))
        if self.has_activation:
            x = self.act(x)
        return x

    def extra_repr(self) -> str:
        dw = self.depthwise
        extra = {"depth_multiplier": dw.depth_multiplier} if dw.depth_multiplier != 1 else {}
        channels = f"{dw.in_channels}, {self.pointwise.out_channels}"
        return _conv_repr(channels, dw, self.pointwise.bias is not None, extra)
