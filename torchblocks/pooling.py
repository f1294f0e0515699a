"""Pooling with Keras padding: ``MaxPool2d`` and ``AvgPool2d``.

Keras ``'same'`` pooling pads like ``'same'`` convolution (output ``ceil(n / s)``, extra pixel at
the bottom/right) but padded pixels never count: max pooling never picks one, average pooling
divides by the number of real pixels in each window. ``stride=None`` means the pool size.
"""
from typing import List, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ._checks import check_window_fits
from .padding import PaddingArg, is_static_same, min_input_hw, normalize_padding, same_pad_list, to_pair


def _check_pooling(x: Tensor, layer: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{layer} expects a 4-D (N, C, H, W) input; received a {x.dim()}-D tensor of shape "
            f"{x.shape}."
        )
    if x.shape[1] == 0:
        # torch's pooling kernels refuse C = 0 with a RuntimeError of their own.
        raise ValueError(f"{layer} expects (N, C, H, W) input with C >= 1; received shape {x.shape}.")


def _resolve(
    kernel_size: object, stride: object, padding: object
) -> Tuple[Tuple[int, int], Tuple[int, int], Union[str, Tuple[int, int]], Tuple[int, int], bool]:
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


def _window(kernel: Tuple[int, int], spec: Union[str, Tuple[int, int]]) -> Tuple[int, int, str]:
    """Smallest input (H, W) for the pooling window and its description for error messages."""
    height, width = min_input_hw(kernel, (1, 1), spec)
    return height, width, f"kernel_size={kernel}, padding={spec!r}"


def _extra_repr(module: nn.Module) -> str:
    return (
        f"kernel_size={module.kernel_size}, stride={module.stride}, "
        f"padding={module.padding_spec!r}"
    )


class MaxPool2d(nn.MaxPool2d):
    """Max pooling with Keras padding. Keras: ``MaxPooling2D``.

    (N, C, H, W) -> (N, C, H', W'). ``stride=None`` is the pool size; ``padding="same"`` gives
    H' = ceil(H / stride) and never selects a padded value; an int pads with -inf as torch does.
    """

    same_is_dynamic: Final[bool]
    layer_name: Final[str]
    min_height: Final[int]
    min_width: Final[int]
    window: Final[str]

    def __init__(
        self,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[None, int, Tuple[int, int]] = None,
        padding: PaddingArg = "valid",
    ) -> None:
        kernel, strides, spec, torch_padding, dynamic = _resolve(kernel_size, stride, padding)
        super().__init__(kernel, strides, torch_padding)
        self.padding_spec = spec
        self.layer_name = type(self).__name__
        self.same_is_dynamic = dynamic
        self.min_height, self.min_width, self.window = _window(kernel, spec)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        _check_pooling(x, self.layer_name)
        check_window_fits(x, self.min_height, self.min_width, self.window, self.layer_name)
        if not self.same_is_dynamic:
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        pads: List[int] = same_pad_list(
            x.shape[-2], x.shape[-1], self.kernel_size, self.stride, (1, 1)
        )
        if pads[0] == pads[1] and pads[2] == pads[3]:
            # torch pads max pooling with -inf itself: no copy of the input needed.
            return F.max_pool2d(x, self.kernel_size, self.stride, [pads[2], pads[0]])
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return _extra_repr(self)


class AvgPool2d(nn.AvgPool2d):
    """Average pooling with Keras padding. Keras: ``AveragePooling2D``.

    (N, C, H, W) -> (N, C, H', W'). ``stride=None`` is the pool size; ``padding="same"`` gives
    H' = ceil(H / stride) and averages only the real pixels of each window (as TensorFlow and the
    Keras docs do; Keras 3.15's torch backend repeats edge pixels instead in the uneven case).
    """

    same_is_dynamic: Final[bool]
    layer_name: Final[str]
    min_height: Final[int]
    min_width: Final[int]
    window: Final[str]

    def __init__(
        self,
        kernel_size: Union[int, Tuple[int, int]],
        stride: Union[None, int, Tuple[int, int]] = None,
        padding: PaddingArg = "valid",
    ) -> None:
        kernel, strides, spec, torch_padding, dynamic = _resolve(kernel_size, stride, padding)
        # 'same' leaves padded pixels out of the mean; an explicit int pad counts them, as torch.
        super().__init__(kernel, strides, torch_padding, count_include_pad=spec != "same")
        self.padding_spec = spec
        self.layer_name = type(self).__name__
        self.same_is_dynamic = dynamic
        self.min_height, self.min_width, self.window = _window(kernel, spec)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        _check_pooling(x, self.layer_name)
        check_window_fits(x, self.min_height, self.min_width, self.window, self.layer_name)
        if not self.same_is_dynamic:
            return F.avg_pool2d(
                x, self.kernel_size, self.stride, self.padding,
                count_include_pad=self.count_include_pad,
            )
        pads: List[int] = same_pad_list(
            x.shape[-2], x.shape[-1], self.kernel_size, self.stride, (1, 1)
        )
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return F.avg_pool2d(
                x, self.kernel_size, self.stride, [pads[2], pads[0]], count_include_pad=False
            )
        # Window sums over zero padding, divided by each window's count of real pixels.
        ones = x.new_ones((1, 1, x.shape[-2], x.shape[-1]))
        summed = F.avg_pool2d(F.pad(x, pads), self.kernel_size, self.stride)
        counts = F.avg_pool2d(F.pad(ones, pads), self.kernel_size, self.stride)
        return summed / counts

    def extra_repr(self) -> str:
        return _extra_repr(self)
