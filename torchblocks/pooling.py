"""Pooling with Keras padding: ``MaxPool2d`` and ``AvgPool2d``, and the global pools.

Keras ``'same'`` pooling pads like ``'same'`` convolution (output ``ceil(n / s)``, extra pixel at
the bottom/right) but padded pixels never count: max pooling never picks one, average pooling
divides by the number of real pixels in each window. ``stride=None`` means the pool size.
"""
from typing import Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ._checks import check_window_fits
from .padding import (
    PaddingArg,
    is_static_same,
    min_input_hw,
    normalize_padding,
    pad_same,
    same_pads,
    to_pair,
)

Spec = Union[str, Tuple[int, int]]


def _resolve(
    kernel_size: object, stride: object, padding: object
) -> Tuple[Tuple[int, int], Tuple[int, int], Spec, Tuple[int, int], bool]:
    """Kernel, stride, padding spec, torch padding and whether 'same' must be computed per call."""
    kernel = to_pair(kernel_size, "kernel_size")
    strides = kernel if stride is None else to_pair(stride, "stride")
    spec = normalize_padding(padding)
    if spec == "same":
        static = all(is_static_same(k, s) for k, s in zip(kernel, strides))
        torch_padding = (kernel[0] // 2, kernel[1] // 2) if static else (0, 0)
        return kernel, strides, spec, torch_padding, not static
    if spec == "valid":
        return kernel, strides, spec, (0, 0), False
    if any(p > k // 2 for p, k in zip(spec, kernel)):
        raise ValueError(
            f"Invalid value for argument `padding`. An int padding may be at most half the pool "
            f"size {kernel}. Received padding={padding!r}."
        )
    return kernel, strides, spec, spec, False


class _KerasPooling:
    """What both Keras poolings share: argument resolution, the input check and ``extra_repr``.

    Mixed in before the torch pooling class, so the layer stays an ``nn.MaxPool2d`` /
    ``nn.AvgPool2d`` (same attributes, recognised by tools that look for those types).
    """

    same_is_dynamic: Final[bool]
    layer_name: Final[str]
    min_height: Final[int]
    min_width: Final[int]
    window: Final[str]

    def _configure(self, spec: Spec, kernel: Tuple[int, int], dynamic: bool) -> None:
        self.padding_spec = spec
        self.layer_name = type(self).__name__
        self.same_is_dynamic = dynamic
        self.min_height, self.min_width = min_input_hw(kernel, (1, 1), spec)
        self.window = f"kernel_size={kernel}, padding={spec!r}"

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{self.layer_name} expects a 4-D (N, C, H, W) input; received a {x.dim()}-D "
                f"tensor of shape {x.shape}."
            )
        if x.shape[1] == 0:
            # torch's pooling kernels refuse C = 0 with a RuntimeError of their own.
            raise ValueError(
                f"{self.layer_name} expects (N, C, H, W) input with C >= 1; received shape {x.shape}."
            )
        check_window_fits(x, self.min_height, self.min_width, self.window, self.layer_name)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding_spec!r}"
        )


class MaxPool2d(_KerasPooling, nn.MaxPool2d):
    """Max pooling with Keras padding. Keras: ``MaxPooling2D``.

    (N, C, H, W) -> (N, C, H', W'). ``stride=None`` is the pool size; ``padding="same"`` gives
    H' = ceil(H / stride) and never selects a padded value; an int pads with -inf as torch does.
    """

    def __init__(
        self,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[None, int, Tuple[int, int]] = None,
        padding: PaddingArg = "valid",
    ) -> None:
        kernel, strides, spec, torch_padding, dynamic = _resolve(kernel_size, stride, padding)
        super().__init__(kernel, strides, torch_padding)
        self._configure(spec, kernel, dynamic)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        self._check_input(x)
        if not self.same_is_dynamic:
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        # torch pads max pooling with -inf itself; an asymmetric pad is -inf as well.
        x, pad = pad_same(x, self.kernel_size, self.stride, (1, 1), float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, pad)


class AvgPool2d(_KerasPooling, nn.AvgPool2d):
    """Average pooling with Keras padding. Keras: ``AveragePooling2D``.

    (N, C, H, W) -> (N, C, H', W'). ``stride=None`` is the pool size; ``padding="same"`` gives
    H' = ceil(H / stride) and averages only the real pixels of each window (as TensorFlow and the
    Keras docs do; Keras 3.15's torch backend repeats edge pixels instead in the uneven case).
    """

    def __init__(
        self,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[None, int, Tuple[int, int]] = None,
        padding: PaddingArg = "valid",
    ) -> None:
        kernel, strides, spec, torch_padding, dynamic = _resolve(kernel_size, stride, padding)
        # 'same' leaves padded pixels out of the mean; an explicit int pad counts them, as torch.
        super().__init__(kernel, strides, torch_padding, count_include_pad=spec != "same")
        self._configure(spec, kernel, dynamic)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        self._check_input(x)
        if not self.same_is_dynamic:
            return F.avg_pool2d(
                x, self.kernel_size, self.stride, self.padding,
                count_include_pad=self.count_include_pad,
            )
        pads, symmetric = same_pads(x, self.kernel_size, self.stride, (1, 1))
        if symmetric:
            return F.avg_pool2d(
                x, self.kernel_size, self.stride, [pads[2], pads[0]], count_include_pad=False
            )
        # Window sums over zero padding, divided by each window's count of real pixels.
        ones = x.new_ones((1, 1, x.shape[-2], x.shape[-1]))
        summed = F.avg_pool2d(F.pad(x, pads), self.kernel_size, self.stride)
        counts = F.avg_pool2d(F.pad(ones, pads), self.kernel_size, self.stride)
        return summed / counts


class GlobalAvgPool2d(nn.Module):
    """Mean over H and W. Keras: ``GlobalAveragePooling2D``.

    (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdims=True``.
    """

    keepdims: Final[bool]

    def __init__(self, keepdims: bool = False) -> None:
        super().__init__()
        if not isinstance(keepdims, bool):
            raise TypeError(
                f"Invalid type for argument `keepdims`. Expected a bool. Received keepdims={keepdims!r}."
            )
        self.keepdims = keepdims

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C) or (N, C, 1, 1)."""
        # Keras' own reduction on its torch backend (``ops.mean``): the same float sums.
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}"


class GlobalMaxPool2d(nn.Module):
    """Maximum over H and W. Keras: ``GlobalMaxPooling2D``.

    (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdims=True``.
    """

    keepdims: Final[bool]

    def __init__(self, keepdims: bool = False) -> None:
        super().__init__()
        if not isinstance(keepdims, bool):
            raise TypeError(
                f"Invalid type for argument `keepdims`. Expected a bool. Received keepdims={keepdims!r}."
            )
        self.keepdims = keepdims

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C) or (N, C, 1, 1)."""
        x = F.adaptive_max_pool2d(x, 1)
        return x if self.keepdims else x.flatten(1)

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}"
