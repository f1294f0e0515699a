"""Keras padding arithmetic, argument normalisation, and the one runtime of Keras ``'same'``.

Keras (and TensorFlow) define ``padding="same"`` by the output size ``ceil(n / stride)``; the total
padding that achieves it is ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``, split with the
extra pixel at the bottom/right. It is static and symmetric for every input size exactly when the
effective kernel ``(k - 1) * d + 1`` is 1 (any stride: it never pads) or odd at stride 1; every other
case depends on the input size (``is_static_same``), and then only on ``n mod stride``: layers build
a ``same_pad_table`` once, and ``pad_same`` reads each input's pad from it, hands a symmetric pad
to the op itself and copies the input with ``F.pad`` only when the pad is asymmetric. Pooling
needs no copy at all (``same_pool_plan``). Everything but the two runtimes ``pad_same`` and
``same_pool_padding`` is pure arithmetic on ints.
"""

import math
import warnings
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

IntPair = Union[int, Tuple[int, int]]
PaddingArg = Union[str, int, Tuple[int, int]]

PADDING_MODES = ("valid", "same")

# Upper bound on every size argument and on a weight's element count. torch keeps pooling sizes in
# 32-bit ints, and a bigger weight is a typo: refusing it at construction beats asking the allocator
# for terabytes and getting an opaque RuntimeError back.
MAX_SIZE = 2**31 - 1


def to_pair(value: object, name: str, minimum: int = 1) -> Tuple[int, int]:
    """Normalise an int or a pair of ints to a tuple, checking type and lower bound.

    Keras: ``standardize_tuple(value, 2, name)``. ``name`` appears in every error message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list)):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an int or a tuple of 2 ints. "
            f"Received {name}={value!r} of type {type(value).__name__}."
        )
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(
            f"Invalid value for argument `{name}`. Expected an int or a tuple of 2 ints. "
            f"Received {name}={value!r}."
        )
    if any(v < minimum for v in pair):
        bound = "strictly positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected {bound} values. Received {name}={value!r}."
        )
    if any(v > MAX_SIZE for v in pair):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected values <= {MAX_SIZE}. Received {name}={value!r}."
        )
    return pair[0], pair[1]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an int. "
            f"Received {name}={value!r} of type {type(value).__name__}."
        )
    if value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a strictly positive value. "
            f"Received {name}={value}."
        )
    if value > MAX_SIZE:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a value <= {MAX_SIZE}. Received {name}={value}."
        )
    return value


def check_weight_size(shape: Tuple[int, ...], names: str) -> None:
    """Raise ``ValueError`` naming the arguments ``names`` if a weight of ``shape`` exceeds ``MAX_SIZE``."""
    numel = math.prod(shape)
    if numel > MAX_SIZE:
        raise ValueError(
            f"Invalid values for arguments {names}. The weight of shape {tuple(shape)} would hold "
            f"{numel} elements; expected at most {MAX_SIZE}."
        )


def normalize_padding(padding: object) -> Union[str, Tuple[int, int]]:
    """Return ``"valid"``/``"same"`` (case-insensitive input) or a pair of non-negative ints."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in PADDING_MODES:
            raise ValueError(
                f"Invalid value for argument `padding`. Expected one of {PADDING_MODES}, an int "
                f"or a tuple of 2 ints. Received padding={padding!r}."
            )
        return mode
    return to_pair(padding, "padding", minimum=0)


def effective_kernel(kernel_size: int, dilation: int) -> int:
    """Extent of a dilated kernel: ``(k - 1) * d + 1``."""
    return (kernel_size - 1) * dilation + 1


def min_input_size(kernel_size: int, dilation: int, padding: int) -> int:
    """Smallest input length a ``'valid'`` or int-padded window fits: ``(k - 1) * d + 1 - 2 * pad``, >= 1."""
    return max(effective_kernel(kernel_size, dilation) - 2 * padding, 1)


def min_input_hw(
    kernel_size: Tuple[int, int], dilation: Tuple[int, int], padding: Union[str, Tuple[int, int]]
) -> Tuple[int, int]:
    """Smallest (H, W) input for a window: 1 under ``'same'``, else the (dilated) kernel less the padding."""
    if padding == "same":
        return 1, 1
    pads = (0, 0) if padding == "valid" else padding
    height, width = (min_input_size(k, d, p) for k, d, p in zip(kernel_size, dilation, pads))
    return height, width


def same_padding(size: int, kernel_size: int, stride: int, dilation: int = 1) -> Tuple[int, int]:
    """(before, after) zero padding for Keras ``'same'`` along one axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel(kernel_size, dilation) - size, 0)
    return total // 2, total - total // 2


def is_static_same(kernel_size: int, stride: int, dilation: int = 1) -> bool:
    """Whether Keras ``'same'`` is one symmetric pad for every input size along this axis.

    True for stride 1 with an odd effective kernel, and for a 1×1 kernel at any stride (which
    never pads: ``(ceil(n / s) - 1) * s + 1 <= n``).
    """
    k = effective_kernel(kernel_size, dilation)
    return k == 1 or (stride == 1 and k % 2 == 1)


def output_size(
    size: int, kernel_size: int, stride: int, padding: Union[str, int], dilation: int = 1
) -> int:
    """Output length along one axis, the Keras/torch formula for ``'valid'``, ``'same'`` or an int pad.

    Returns 0 or less where the (padded) input is smaller than the kernel.
    """
    if padding == "same":
        return math.ceil(size / stride)
    pad = 0 if padding == "valid" else int(padding)
    return (size + 2 * pad - effective_kernel(kernel_size, dilation)) // stride + 1


def same_pad_table(kernel_size: int, stride: int, dilation: int = 1) -> List[List[int]]:
    """Keras ``'same'`` ``[before, after]`` padding along one axis for every input length ``n``, at
    index ``n % stride``.

    The total pad depends on ``n`` only through ``n mod s``: with ``r = n mod s`` it is
    ``max(ek - r, 0)`` for ``r > 0`` and ``max(ek - s, 0)`` for ``r = 0`` (``ek`` the effective
    kernel), so a table of ``s`` entries built once replaces the per-call arithmetic.
    """
    return [list(same_padding(r if r else stride, kernel_size, stride, dilation)) for r in range(stride)]


def same_pool_plan(kernel_size: int, stride: int) -> Tuple[List[int], int]:
    """Keras ``'same'`` pooling along one axis as one torch pooling call with ``ceil_mode=True``:
    ``(symmetric padding at index n % stride, outputs to drop at the start)``.

    torch pads a pooling window implicitly (max pooling never picks the pad, average pooling with
    ``count_include_pad=False`` leaves it out of the count), for every dtype, but only
    symmetrically. Keras' extra pixel after the input is that implicit pad's last window:
    at stride >= 2, padding by Keras' ``before`` with ``ceil_mode`` gives exactly ``ceil(n / s)``
    windows at Keras' positions (the last one clipped to the input). At stride 1 the pad is static,
    ``(k - 1) / 2`` for an odd kernel; for an even kernel ``k / 2`` on both sides gives one window
    too many at the start, which is dropped.
    """
    if stride == 1:
        return ([(kernel_size - 1) // 2], 0) if kernel_size % 2 else ([kernel_size // 2], 1)
    return [before for before, _ in same_pad_table(kernel_size, stride)], 0


@torch.fx.wrap
def same_pads(height: int, width: int, table_h: List[List[int]], table_w: List[List[int]]) -> List[int]:
    """The ``F.pad`` list ``[left, right, top, bottom]`` of Keras ``'same'`` for an (H, W) input.

    A ``torch.fx`` leaf that reads only sizes: FX quantization then knows its output is no tensor.
    """
    pad_h = table_h[height % len(table_h)]
    pad_w = table_w[width % len(table_w)]
    return [pad_w[0], pad_w[1], pad_h[0], pad_h[1]]


def pad_same(x: Tensor, table_h: List[List[int]], table_w: List[List[int]]) -> Tuple[Tensor, List[int]]:
    """Keras ``'same'`` for one input, from ``same_pad_table``s: ``(input, padding for the op)``.

    A symmetric pad is returned for the op to apply itself (no copy of ``x``); an asymmetric one is
    applied here with ``F.pad`` and the op gets ``[0, 0]``. Under ``torch.fx`` tracing the pad is
    always applied here, so the traced op has a fixed padding (FX quantization packs it); under
    ``torch.jit.trace`` too, read from the tables at the traced size, so a trace stays right for
    every input size.
    """
    if torch.jit.is_tracing():
        return _pad_same_traced(x, table_h, table_w), [0, 0]
    pads = same_pads(x.shape[-2], x.shape[-1], table_h, table_w)
    # Under torch.fx, pads is a Proxy (same_pads is a leaf): always padded, never a branch on it.
    if isinstance(pads, list) and pads[0] == pads[1] and pads[2] == pads[3]:
        return x, [pads[2], pads[0]]
    return F.pad(x, pads), [0, 0]


def same_pool_padding(height: int, width: int, before_h: List[int], before_w: List[int]) -> List[int]:
    """The ``[pad_h, pad_w]`` of ``same_pool_plan`` for an (H, W) input (traced sizes too).

    It reads only sizes: registered as a ``torch.fx`` leaf where it is called (``pooling.py``), FX
    quantization knows its output is no tensor.
    """
    if torch.jit.is_tracing():
        return _traced_entries(height, width, [[b] for b in before_h], [[b] for b in before_w], 0)
    return [before_h[height % len(before_h)], before_w[width % len(before_w)]]


@torch.jit.unused
def _traced_entries(
    height: int, width: int, table_h: List[List[int]], table_w: List[List[int]], column: int
) -> List[int]:
    # Index a constant tensor with the traced size (aten::remainder, aten::select: ops that
    # FLOP counters ignore) rather than with a Python int, which would freeze this input's pad
    # into the trace. Tracing warns that torch.tensor is a constant: it is one.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.tensor results are registered as constants")
        rows_h = torch.tensor(table_h)[height % len(table_h)]
        rows_w = torch.tensor(table_w)[width % len(table_w)]
    return [rows_h[column], rows_w[column]]


@torch.jit.unused
def _pad_same_traced(x: Tensor, table_h: List[List[int]], table_w: List[List[int]]) -> Tensor:
    top, left = _traced_entries(x.shape[-2], x.shape[-1], table_h, table_w, 0)
    bottom, right = _traced_entries(x.shape[-2], x.shape[-1], table_h, table_w, 1)
    # Zero blocks joined with cat rather than F.pad: the same values, and FLOP counters that trace
    # (fvcore) ignore new_zeros and cat but report aten::pad as an unsupported op.
    n, c, h, w = x.shape
    x = torch.cat([x.new_zeros((n, c, top, w)), x, x.new_zeros((n, c, bottom, w))], 2)
    h = x.shape[2]
    return torch.cat([x.new_zeros((n, c, h, left)), x, x.new_zeros((n, c, h, right))], 3)
