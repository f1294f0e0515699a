"""Every private torch API torchblocks uses: oneDNN's packed convolution, behind one probe.

``torch.ops.mkldnn._convolution_pointwise`` (a convolution with fused post-ops, on a weight
already in oneDNN's blocked layout), its ``.binary`` forms (a sum with another tensor, then an
optional activation, in the same pass; in place into that tensor with
``_convolution_pointwise_``) and ``torch._C._nn.mkldnn_reorder_conv2d_weight`` (that layout) are
what inductor itself uses on CPU, but they are private and may be renamed by any torch release.
``available()`` runs a tiny packed convolution once per process, with a sum and each fused
activation, and compares it with ``F.conv2d``; everything here is used only where it says yes,
and an activation only where its own probe does.
"""
import functools
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ._checks import check_nchw

__all__ = ["ACTIVATIONS", "Activation", "PackedConv2d", "activation_available", "available"]


class Activation(NamedTuple):
    """An activation oneDNN applies to a conv's output in the same pass: its oneDNN name, scalar
    arguments and algorithm (``Activation("hardtanh", (0.0, 6.0))`` is ReLU6)."""

    name: str
    scalars: tuple = ()
    algorithm: str = ""


def _activate(y: Tensor, name: str, scalars: List[float], algorithm: str) -> Tensor:
    """The activation ``name`` in plain torch: the reference of the probe and the layer's path
    where oneDNN does not run."""
    if name == "relu":
        return F.relu(y)
    if name == "hardtanh":
        return F.hardtanh(y, scalars[0], scalars[1])
    if name == "swish":
        return F.silu(y)
    if name == "sigmoid":
        return torch.sigmoid(y)
    if name == "tanh":
        return torch.tanh(y)
    if name == "hardswish":
        return F.hardswish(y)
    if name == "hardsigmoid":
        return F.hardsigmoid(y)
    if name == "gelu":
        return F.gelu(y, approximate=algorithm)
    if name == "leaky_relu":
        return F.leaky_relu(y, scalars[0])
    return y


# The activations a packed conv can fuse, each with the arguments its probe uses.
ACTIVATIONS = {
    "relu": Activation("relu"),
    "hardtanh": Activation("hardtanh", (-0.5, 0.5)),
    "swish": Activation("swish"),
    "sigmoid": Activation("sigmoid"),
    "tanh": Activation("tanh"),
    "hardswish": Activation("hardswish"),
    "hardsigmoid": Activation("hardsigmoid"),
    "gelu": Activation("gelu", (), "none"),
    "leaky_relu": Activation("leaky_relu", (0.1,)),
}


def available() -> bool:
    """Whether oneDNN weight packing works in this torch build (a tiny packed conv, run once)."""
    return _probe() == ""


def _probe_case() -> Dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(1, 2, 5, 5, generator=generator),
        "weight": torch.randn(3, 2, 3, 3, generator=generator),
        "bias": torch.randn(3, generator=generator),
        "other": torch.randn(1, 3, 5, 5, generator=generator),
    }


def _matches(actual: Tensor, expected: Tensor) -> bool:
    return torch.allclose(actual.to_dense() if actual.is_mkldnn else actual, expected, rtol=1e-4, atol=1e-4)


@functools.lru_cache(maxsize=None)
def _probe() -> str:
    """"" when a packed conv, alone and summed with another tensor (out of place and in place),
    runs and matches ``F.conv2d``, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn) support"
    case = _probe_case()
    x, weight, bias, other = case["x"], case["weight"], case["bias"], case["other"]
    args = ([1, 1], [1, 1], [1, 1], 1)
    try:
        packed = _reorder(weight, *args, [1, 2, 5, 5])
        plain = _conv(x, packed, bias, *args, "none", [], "")
        summed = _conv_add(x, other, packed, bias, *args, "relu", [], "")
        accumulated = other.clone()
        _conv_add_(accumulated, x, packed, bias, *args, "relu", [], "")
    except (AttributeError, RuntimeError, TypeError) as error:
        return f"oneDNN's packed convolution failed ({type(error).__name__}: {error})"
    expected = F.conv2d(x, weight, bias, 1, 1)
    if not (_matches(plain, expected) and _matches(summed, F.relu(expected + other))
            and _matches(accumulated, F.relu(expected + other))):
        return "oneDNN's packed convolution gave other values than F.conv2d"
    return ""


@functools.lru_cache(maxsize=None)
def activation_available(name: str) -> bool:
    """Whether a packed conv fuses the activation ``name`` (a key of ``ACTIVATIONS``) with the
    values torch's own function gives (a tiny case, run once per process)."""
    if not available() or name not in ACTIVATIONS:
        return False
    case = _probe_case()
    act = ACTIVATIONS[name]
    try:
        packed = _reorder(case["weight"], [1, 1], [1, 1], [1, 1], 1, [1, 2, 5, 5])
        y = _conv(case["x"], packed, case["bias"], [1, 1], [1, 1], [1, 1], 1, act.name, list(act.scalars), act.algorithm)
    except (RuntimeError, TypeError):
        return False
    expected = F.conv2d(case["x"], case["weight"], case["bias"], 1, 1)
    return _matches(y, _activate(expected, act.name, list(act.scalars), act.algorithm))


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


# TorchScript cannot pass a typed list to the op's Scalar?[] argument: scripted callers call
# back into Python here. Each calls its overload directly, without matching the op's schemas.
@torch.jit.ignore
def _conv(
    x: Tensor, packed: Tensor, bias: Tensor, padding: List[int], stride: List[int], dilation: List[int],
    groups: int, act: str, scalars: List[float], algorithm: str,
) -> Tensor:
    return torch.ops.mkldnn._convolution_pointwise.default(
        x, packed, bias, padding, stride, dilation, groups, act, scalars, algorithm
    )


@torch.jit.ignore
def _conv_add(
    x: Tensor, other: Tensor, packed: Tensor, bias: Tensor, padding: List[int], stride: List[int],
    dilation: List[int], groups: int, act: str, scalars: List[float], algorithm: str,
) -> Tensor:
    """act(conv(x) + other), in a new tensor."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, packed, bias, padding, stride, dilation, groups, "add", 1.0,
        None if act == "none" else act, scalars, None if act == "none" else algorithm,
    )


@torch.jit.ignore
def _conv_add_(
    other: Tensor, x: Tensor, packed: Tensor, bias: Tensor, padding: List[int], stride: List[int],
    dilation: List[int], groups: int, act: str, scalars: List[float], algorithm: str,
) -> Tensor:
    """act(conv(x) + other), written into ``other`` (oneDNN's sum post-op) and returned."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        other, x, packed, bias, padding, stride, dilation, groups, "add", 1.0,
        None if act == "none" else act, scalars, None if act == "none" else algorithm,
    )


def _check_dtype(x: Tensor, dtype: torch.dtype, layer: str) -> None:
    """Refuse an input whose dtype differs from the weight's, naming the layer (oneDNN's own
    message names neither)."""
    if x.dtype != dtype:
        raise TypeError(
            f"{layer} (packed for oneDNN) has {dtype} weights; received a {x.dtype} input. Convert "
            f"the model and its inputs to one dtype before optimising it."
        )


# How a PackedConv2d adds a second tensor to its output: not at all, into a new tensor, or into
# the second tensor itself (whose last use it must be).
RESIDUALS = ("none", "add", "add_")


class PackedConv2d(nn.Module):
    """Inference form of an ``nn.Conv2d`` on CPU: the weight pre-packed for oneDNN, a following
    sum and activation fused.

    (N, C_in, H, W) -> (N, C_out, H', W'), channels-last from oneDNN; ``act(conv(x) + other)``
    when called with ``other``. Eager ``nn.Conv2d`` hands oneDNN a plain weight, which it reorders
    into its blocked layout on every call; here the weight is reordered once, for the input size
    seen at construction (other sizes run too, with the same values), and only the packed copy is
    kept. A following activation and residual sum become oneDNN post-ops instead of more passes
    over the output. ``state_dict``, ``deepcopy``, pickling and ``.to()`` see the plain weight
    (unpacked on demand, exactly); on another device or dtype the layer runs ``F.conv2d`` instead.

    Args:
        conv: the convolution (static zero padding; copied, left untouched).
        input_size: the (N, C, H, W) it will see, for oneDNN's choice of layout.
        relu: fuse a ReLU applied to the output (the same as ``activation=Activation("relu")``).
        activation: fuse this activation (``activation_available`` must say yes for its name).
        residual: ``"add"`` to add ``other`` before the activation, ``"add_"`` to do so into
            ``other``'s own memory (the caller's last use of it), ``"none"`` for no sum.
    """

    relu: Final[bool]
    act: Final[str]
    algorithm: Final[str]
    residual: Final[str]
    scalars: List[float]
    in_channels: Final[int]
    layer_name: Final[str]

    def __init__(
        self, conv: nn.Conv2d, input_size: List[int], relu: bool = False, *,
        activation: Optional[Activation] = None, residual: str = "none",
    ) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(
                f"Invalid value for argument `conv`. PackedConv2d needs a static zero padding. "
                f"Received conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        if residual not in RESIDUALS:
            raise ValueError(
                f"Invalid value for argument `residual`. Expected one of {RESIDUALS}. Received residual={residual!r}."
            )
        if relu:
            activation = ACTIVATIONS["relu"]
        weight = conv.weight.detach()
        bias = weight.new_zeros(weight.shape[0]) if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.stride: List[int] = list(conv.stride)
        self.padding: List[int] = list(conv.padding)
        self.dilation: List[int] = list(conv.dilation)
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.layer_name = getattr(conv, "layer_name", type(conv).__name__)
        self.act = "none" if activation is None else activation.name
        self.scalars = [] if activation is None else [float(s) for s in activation.scalars]
        self.algorithm = "" if activation is None else activation.algorithm
        self.relu = self.act == "relu"
        self.residual = residual
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

    def forward(self, x: Tensor, other: Optional[Tensor] = None) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W'); ``other`` of the output's shape
        when the layer fuses a sum."""
        check_nchw(x, self.in_channels, self.layer_name)
        _check_dtype(x, self.bias.dtype, self.layer_name)
        if self.residual != "none":
            if other is None:
                raise TypeError(f"{self.layer_name} (packed for oneDNN) fuses a residual sum: it needs `other`.")
            if self.onednn:
                if self.residual == "add_":
                    return _conv_add_(other, x, self.packed, self.bias, self.padding, self.stride, self.dilation,
                                      self.groups, self.act, self.scalars, self.algorithm)
                return _conv_add(x, other, self.packed, self.bias, self.padding, self.stride, self.dilation,
                                 self.groups, self.act, self.scalars, self.algorithm)
        elif self.onednn:
            return _conv(x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
                         self.act, self.scalars, self.algorithm)
        y = F.conv2d(x, self.packed, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            y = y + other
        return _activate(y, self.act, self.scalars, self.algorithm)

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
        text = (
            f"{c_in}, {c_out}, kernel_size={tuple(self.packed.shape[2:])}, stride={tuple(self.stride)}, "
            f"padding={tuple(self.padding)}, groups={self.groups}, relu={self.relu}"
        )
        if self.act not in ("none", "relu"):
            text += f", activation={self.act}{tuple(self.scalars) if self.scalars else ''}"
        if self.residual != "none":
            text += f", residual={self.residual!r}"
        return text
