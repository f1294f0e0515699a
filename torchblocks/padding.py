"""Keras padding arithmetic, argument normalisation, and the one runtime of Keras ``'same'``.

Keras (and TensorFlow) define ``padding="same"`` by the output size ``ceil(n / stride)``; the total
padding that achieves it is ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``, split with the
extra pixel at the bottom/right. It is static and symmetric for every input size exactly when the
effective kernel ``(k - 1) * d + 1`` is 1 (any stride: it never pads) or odd at stride 1; every other
case depends on the input size (``is_static_same``). Where it is dynamic, ``pad_same`` computes it
per input and hands a symmetric pad to the op itself, copying the input with ``F.pad`` only when the
pad is asymmetric. Everything but ``pad_same`` is pure arithmetic on ints.
"""

import math
from typing import List, Tuple, Union

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


def same_pad_list(
    height: int, width: int, kernel_size: Tuple[int, int], stride: Tuple[int, int],
    dilation: Tuple[int, int],
) -> List[int]:
    """``F.pad`` argument ``[left, right, top, bottom]`` for Keras ``'same'`` on an (H, W) map."""
    top, bottom = same_padding(height, kernel_size[0], stride[0], dilation[0])
    left, right = same_padding(width, kernel_size[1], stride[1], dilation[1])
    return [left, right, top, bottom]


def same_pads(
    x: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int], dilation: Tuple[int, int]
) -> Tuple[List[int], bool]:
    """Keras ``'same'`` for the (H, W) of ``x``: the ``F.pad`` list and whether it is symmetric."""
    pads = same_pad_list(x.shape[-2], x.shape[-1], kernel_size, stride, dilation)
    return pads, pads[0] == pads[1] and pads[2] == pads[3]


def pad_same(
    x: Tensor, kernel_size: Tuple[int, int], stride: Tuple[int, int], dilation: Tuple[int, int],
    value: float = 0.0,
) -> Tuple[Tensor, List[int]]:
    """Keras ``'same'`` for one input: ``(input, padding for the op)``.

    A symmetric pad is returned for the op to apply itself (no copy of ``x``); an asymmetric one is
    applied here with ``F.pad(x, pads, value=value)`` and the op gets ``[0, 0]``.
    """
    pads, symmetric = same_pads(x, kernel_size, stride, dilation)
    if symmetric:
        return x, [pads[2], pads[0]]
    return F.pad(x, pads, value=value), [0, 0]
