"""Output shapes of the common ops, for counting on the meta device without calling the ops.

torch computes most meta results with its Python reference implementations, which load the
``torch.compile`` stack on first use (seconds) and then cost far more per call than the op's
shape rule. For the ops every convolutional network runs (activations, normalization, elementwise
arithmetic, convolutions, pooling, reductions, dense layers) the result is made here directly: an
empty meta tensor of the shape and dtype torch gives, or the input itself for an in-place op.
Anything else returns None and runs as usual. Only shapes and dtypes matter to a count, so the
results are contiguous whatever the input's memory format (``torch.empty_like`` on meta would
cost a millisecond a call in torch's Python stride logic). The rules follow torch's documented
output sizes; the tests compare the counts they lead to with real runs.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Ops whose result has the shape and dtype of their first argument (op names as
# torch.jit records them; "_"-suffixed in-place forms return the argument itself).
SAME_SHAPE = frozenset({
    "relu", "hardtanh", "elu", "selu", "gelu", "sigmoid", "hardsigmoid", "tanh", "silu", "hardswish",
    "mish", "softplus", "leaky_relu", "neg", "abs", "exp", "dropout", "batch_norm", "layer_norm",
    "group_norm", "instance_norm", "clone", "softmax", "log_softmax", "clamp_min",
})
BINARY = frozenset({"add", "sub", "mul", "div", "rsub"})
_POOL_ARGS = {
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def _named(names: Sequence[str], args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound


def _tuple(value: Any, n: int) -> Tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """torch's output length of a convolution or pooling window (pooling: ``ceil_mode``)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _conv_shape(func: Callable, args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[List[int]]:
    spatial = _CONVS[func]
    a = _named(_CONV_ARGS, args, kwargs)
    x, weight = a["input"], a["weight"]
    if x.dim() != spatial + 2:
        return None
    kernel = weight.shape[2:]
    stride, dilation = _tuple(a.get("stride", 1), spatial), _tuple(a.get("dilation", 1), spatial)
    padding = a.get("padding", 0)
    if padding == "same":
        sizes = list(x.shape[2:])
    else:
        pads = (0,) * spatial if padding == "valid" else _tuple(padding, spatial)
        sizes = [_window_out(n, k, s, p, d, False)
                 for n, k, s, p, d in zip(x.shape[2:], kernel, stride, pads, dilation)]
    return [x.shape[0], weight.shape[0]] + sizes


def _pool_shape(name: str, args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[List[int]]:
    a = _named(_POOL_ARGS[name], args, kwargs)
    x = a["input"]
    if a.get("return_indices") or x.dim() not in (3, 4):
        return None
    kernel = _tuple(a["kernel_size"], 2)
    stride = _tuple(a.get("stride") or kernel, 2)
    padding, dilation = _tuple(a.get("padding", 0), 2), _tuple(a.get("dilation", 1), 2)
    sizes = [_window_out(n, k, s, p, d, bool(a.get("ceil_mode", False)))
             for n, k, s, p, d in zip(x.shape[-2:], kernel, stride, padding, dilation)]
    return list(x.shape[:-2]) + sizes


def _reduced_shape(args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[List[int]]:
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dim is None or kwargs.get("dtype") is not None or not isinstance(keepdim, bool):
        return None
    dims = {d % x.dim() for d in _tuple(dim, 1)}
    return [1 if i in dims else n for i, n in enumerate(x.shape) if keepdim or i not in dims]


def _broadcast(a: Sequence[int], b: Sequence[int]) -> Optional[List[int]]:
    """The broadcast of two shapes, or None when they do not broadcast (torch then raises).

    Written out: ``torch.broadcast_shapes`` imports sympy on its first call (seconds)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    shape = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            return None
        shape.append(y if x == 1 else x)
    return shape


def _empty(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def meta_result(func: Callable, name: str, inplace: bool, args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[Any]:
    """The result of ``func(*args, **kwargs)`` on meta tensors, made from its shape rule, or None
    where this module has no rule for the call (then the op itself runs)."""
    if not args or not isinstance(args[0], Tensor) or "out" in kwargs:
        return None
    x = args[0]
    if inplace and (name[:-1] in SAME_SHAPE or name[:-1] in BINARY):
        return x
    if name in SAME_SHAPE:
        if kwargs.get("dtype") is not None or (name in ("softmax", "log_softmax") and len(args) > 3):
            return None
        return _empty(x.shape, x.dtype)
    if name in BINARY:
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if isinstance(other, Tensor):
            shape = _broadcast(x.shape, other.shape)
            return None if shape is None else _empty(shape, torch.result_type(x, other))
        if isinstance(other, (int, float, bool)):
            return _empty(x.shape, torch.result_type(x, other))
        return None
    shape: Optional[Sequence[int]] = None
    if func in _CONVS:
        shape = _conv_shape(func, args, kwargs)
        return None if shape is None else _empty(shape, x.dtype)
    if name in _POOL_ARGS:
        shape = _pool_shape(name, args, kwargs)
    elif name in ("adaptive_avg_pool2d", "adaptive_max_pool2d") and not kwargs.get("return_indices"):
        size = args[1] if len(args) > 1 else kwargs["output_size"]
        size = _tuple(size, 2)
        shape = list(x.shape[:-2]) + [n if s is None else s for n, s in zip(x.shape[-2:], size)]
    elif name in ("mean", "sum"):
        shape = _reduced_shape(args, kwargs)
    elif func is F.linear:
        weight = args[1] if len(args) > 1 else kwargs["weight"]
        shape = list(x.shape[:-1]) + [weight.shape[0]]
    return None if shape is None else _empty(shape, x.dtype)

