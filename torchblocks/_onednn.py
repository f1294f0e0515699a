"""Every private torch API torchblocks uses: oneDNN's packed convolution, behind one probe.

``torch.ops.mkldnn._convolution_pointwise`` (a convolution with a fused post-op, on a weight
already in oneDNN's blocked layout) and ``torch._C._nn.mkldnn_reorder_conv2d_weight`` (that
layout) are what inductor itself uses on CPU, but they are private and may be renamed by any torch
release. ``available()`` runs a tiny packed convolution once per process and compares it with
``F.conv2d``; everything here is used only where it says yes.
"""
import functools
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ._checks import check_nchw

__all__ = ["PackedConv2d", "available"]


def available() -> bool:
    """Whether oneDNN weight packing works in this torch build (a tiny packed conv, run once)."""
    return _probe() == ""


@functools.lru_cache(maxsize=None)
def _probe() -> str:
    """"" when a packed conv runs and matches ``F.conv2d``, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn) support"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 5, generator=generator)
    weight = torch.randn(3, 2, 3, 3, generator=generator)
    bias = torch.randn(3, generator=generator)
    try:
        packed = _reorder(weight, [1, 1], [1, 1], [1, 1], 1, [1, 2, 5, 5])
        y = _packed_conv(x, packed, bias, [1, 1], [1, 1], [1, 1], 1, True)
    except (AttributeError, RuntimeError, TypeError) as error:
        return f"oneDNN's packed convolution failed ({type(error).__name__}: {error})"
    expected = F.relu(F.conv2d(x, weight, bias, 1, 1))
    if not torch.allclose(y.to_dense() if y.is_mkldnn else y, expected, rtol=1e-4, atol=1e-4):
        return "oneDNN's packed convolution gave other values than F.conv2d"
    return ""


def unavailable_reason() -> str:
    """Why ``available()`` is False ("" when it is True)."""
    return _probe()


def _reorder(
    weight: Tensor, padding: List[int], stride: List[int], dilation: List[int], groups: int,
    input_size: List[int],
) -> Tensor:
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), padding, stride, dilation, groups, input_size
    )


def _packed_conv(
    x: Tensor, packed: Tensor, bias: Tensor, padding: List[int], stride: List[int],
    dilation: List[int], groups: int, relu: bool,
) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, padding, stride, dilation, groups, "relu" if relu else "none", [], ""
    )


def _check_dtype(x: Tensor, dtype: torch.dtype, layer: str) -> None:
    """Refuse an input whose dtype differs from the weight's, naming the layer (oneDNN's own
    message names neither)."""
    if x.dtype != dtype:
        raise TypeError(
            f"{layer} (packed for oneDNN) has {dtype} weights; received a {x.dtype} input. Convert "
            f"the model and its inputs to one dtype before optimising it."
        )


class PackedConv2d(nn.Module):
    """Inference form of an ``nn.Conv2d`` on CPU: the weight pre-packed for oneDNN, a ReLU fused.

    (N, C_in, H, W) -> (N, C_out, H', W'), channels-last from oneDNN. Eager ``nn.Conv2d`` hands
    oneDNN a plain weight, which it reorders into its blocked layout on every call; here the weight
    is reordered once, for the input size seen at construction (other sizes run too, with the same
    values), and only the packed copy is kept. A following ReLU becomes a oneDNN post-op instead of a second pass
    over the output. ``state_dict``, ``deepcopy``, pickling and ``.to()`` see the plain weight
    (unpacked on demand, exactly); on another device or dtype the layer runs ``F.conv2d`` instead.

    Args:
        conv: the convolution (static zero padding; copied, left untouched).
        input_size: the (N, C, H, W) it will see, for oneDNN's choice of layout.
        relu: fuse a ReLU applied to the conv's output.
    """

    relu: Final[bool]
    in_channels: Final[int]
    layer_name: Final[str]

    def __init__(self, conv: nn.Conv2d, input_size: List[int], relu: bool = False) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(
                f"Invalid value for argument `conv`. PackedConv2d needs a static zero padding. "
                f"Received conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        weight = conv.weight.detach()
        bias = weight.new_zeros(weight.shape[0]) if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.stride: List[int] = list(conv.stride)
        self.padding: List[int] = list(conv.padding)
        self.dilation: List[int] = list(conv.dilation)
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.layer_name = getattr(conv, "layer_name", type(conv).__name__)
        self.relu = relu
        self.input_size: List[int] = list(input_size)
        self._set_weight(weight)

    def _set_weight(self, weight: Tensor) -> None:
        """Keep ``weight`` packed for oneDNN where it runs there (CPU float32), else as it is."""
        self.onednn = weight.device.type == "cpu" and weight.dtype == torch.float32 and available()
        if self.onednn:
            weight = _reorder(weight, self.padding, self.stride, self.dilation, self.groups, self.input_size)
        self.packed = weight

    @property
    def weight(self) -> Tensor:
        """The plain (C_out, C_in / groups, kh, kw) weight."""
        return self.packed.to_dense() if self.packed.is_mkldnn else self.packed

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        check_nchw(x, self.in_channels, self.layer_name)
        _check_dtype(x, self.bias.dtype, self.layer_name)
        if self.onednn:
            return _packed_conv(
                x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups, self.relu
            )
        y = F.conv2d(x, self.packed, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu(y) if self.relu else y

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # The opaque oneDNN tensor has no storage to convert: convert the plain weight, repack.
        super()._apply(fn, recurse)
        self._set_weight(fn(self.weight))
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
        elif weight.shape != self.packed.shape:
            error_msgs.append(
                f"size mismatch for {prefix}weight: copying a param with shape {tuple(weight.shape)}, "
                f"the shape in current model is {tuple(self.packed.shape)}."
            )
            return  # nothing of this layer is loaded
        rest = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        errors = len(error_msgs)
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight is not None and len(error_msgs) == errors:
            self._set_weight(weight.detach().to(self.bias.dtype).clone())

    def __getstate__(self) -> Dict[str, object]:
        state = self.__dict__.copy()
        state["packed"] = self.weight
        return state

    def __setstate__(self, state: Dict[str, object]) -> None:
        super().__setstate__(state)
        self._set_weight(self.packed)

    def extra_repr(self) -> str:
        c_out, c_in = self.packed.shape[0], self.packed.shape[1] * self.groups
        return (
            f"{c_in}, {c_out}, kernel_size={tuple(self.packed.shape[2:])}, stride={tuple(self.stride)}, "
            f"padding={tuple(self.padding)}, groups={self.groups}, relu={self.relu}"
        )

