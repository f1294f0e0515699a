"""Pooling with Keras padding: ``MaxPool2d`` and ``AvgPool2d``, and the global pools.

Keras ``'same'`` pooling pads like ``'same'`` convolution (output ``ceil(n / s)``, extra pixel at
the bottom/right) but padded pixels never count: max pooling never picks one, average pooling
divides by the number of real pixels in each window. ``stride=None`` means the pool size.

Every path is one torch pooling call on the input itself (``padding.same_pool_plan``): torch's own
implicit padding, with ``ceil_mode`` supplying Keras' extra pixel, so nothing is padded by value.
Dtype rule, the same on every path: the output has the input's dtype, for every dtype torch's
pooling kernels take (floating types; integers for max pooling; int64 for average pooling, where
torch's integer mean rounds toward zero); any other dtype raises a ``TypeError`` naming the layer.
"""
from typing import List, NamedTuple, Tuple, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ._checks import check_window_fits, dtype_error
from .padding import PaddingArg, min_input_hw, normalize_padding, same_pool_padding, same_pool_plan, to_pair

Spec = Union[str, Tuple[int, int]]

# Reads sizes in Python: a torch.fx leaf (fx.wrap patches this module's name for it).
torch.fx.wrap("same_pool_padding")


class _Plan(NamedTuple):
    """How a pooling layer calls torch: the padding of every path and what 'same' adds."""

    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    spec: Spec
    padding: Tuple[int, int]  # the torch padding of the static path
    before_h: List[int]  # 'same': padding by input height mod stride
    before_w: List[int]
    trim_h: int  # 'same', stride 1, even pool size: outputs dropped at the start
    trim_w: int


def _plan(kernel_size: object, stride: object, padding: object) -> _Plan:
    kernel = to_pair(kernel_size, "kernel_size")
    strides = kernel if stride is None else to_pair(stride, "stride")
    spec = normalize_padding(padding)
    if spec == "same":
        (before_h, trim_h), (before_w, trim_w) = (same_pool_plan(k, s) for k, s in zip(kernel, strides))
        return _Plan(kernel, strides, spec, (before_h[0], before_w[0]), before_h, before_w, trim_h, trim_w)
    if spec == "valid":
        return _Plan(kernel, strides, spec, (0, 0), [0], [0], 0, 0)
    if any(p > k // 2 for p, k in zip(spec, kernel)):
        raise ValueError(
            f"Invalid value for argument `padding`. An int padding may be at most half the pool "
            f"size {kernel}. Received padding={padding!r}."
        )
    return _Plan(kernel, strides, spec, spec, [spec[0]], [spec[1]], 0, 0)


@torch.fx.wrap
def _check_pool_input(x: Tensor, min_height: int, min_width: int, window: str, layer: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, C, H, W) with C >= 1 and room for the window."""
    if x.dim() != 4:
        raise ValueError(
            f"{layer} expects a 4-D (N, C, H, W) input; received a {x.dim()}-D tensor of shape {x.shape}."
        )
    if x.shape[1] == 0:
        # torch's pooling kernels refuse C = 0 with a RuntimeError of their own.
        raise ValueError(f"{layer} expects (N, C, H, W) input with C >= 1; received shape {x.shape}.")
    check_window_fits(x, min_height, min_width, window, layer)


class _KerasPooling:
    """What both Keras poolings share: the 'same' plan, the input check and ``extra_repr``.

    Mixed in before the torch pooling class, so the layer stays an ``nn.MaxPool2d`` /
    ``nn.AvgPool2d`` (same attributes, recognised by tools that look for those types). The layer
    declares the TorchScript constants (TorchScript reads ``Final`` from the layer's own class).
    """

    def _configure(self, plan: _Plan) -> None:
        self.padding_spec = plan.spec
        self.layer_name = type(self).__name__
        self.same_is_dynamic = len(set(plan.before_h)) > 1 or len(set(plan.before_w)) > 1
        self.same_before_h = plan.before_h
        self.same_before_w = plan.before_w
        self.trim_h, self.trim_w = plan.trim_h, plan.trim_w
        self.trims = plan.trim_h > 0 or plan.trim_w > 0
        self.min_height, self.min_width = min_input_hw(plan.kernel, (1, 1), plan.spec)
        self.window = f"kernel_size={plan.kernel}, padding={plan.spec!r}"

    def _trim(self, y: Tensor) -> Tensor:
        # Same memory format as an untrimmed output (a copy: a view would not be contiguous).
        return y[:, :, self.trim_h:, self.trim_w:].clone(memory_format=torch.preserve_format)

    @torch.jit.unused
    def _pool_or_explain(self, x: Tensor) -> Tensor:
        # Eager only (TorchScript has no try): a dtype torch cannot pool is named after the fact.
        try:
            return self._pool(x)
        except RuntimeError as error:
            explained = dtype_error(self.layer_name, x, error)
            if explained is None:
                raise
            raise explained from error

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding_spec!r}"
        )


class MaxPool2d(_KerasPooling, nn.MaxPool2d):
    """Max pooling with Keras padding. Keras: ``MaxPooling2D``.

    (N, C, H, W) -> (N, C, H', W'), the input's dtype. ``stride=None`` is the pool size;
    ``padding="same"`` gives H' = ceil(H / stride) and never selects a padded position, for
    integer inputs too; an int pads as torch does (never selected either).
    """

    same_is_dynamic: Final[bool]
    trims: Final[bool]
    trim_h: Final[int]
    trim_w: Final[int]
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
        plan = _plan(kernel_size, stride, padding)
        super().__init__(plan.kernel, plan.stride, plan.padding, ceil_mode=plan.spec == "same")
        self._configure(plan)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        _check_pool_input(x, self.min_height, self.min_width, self.window, self.layer_name)
        if torch.jit.is_scripting():
            return self._pool(x)
        return self._pool_or_explain(x)

    def _pool(self, x: Tensor) -> Tensor:
        if self.same_is_dynamic:
            padding = same_pool_padding(x.shape[-2], x.shape[-1], self.same_before_h, self.same_before_w)
            y = F.max_pool2d(x, self.kernel_size, self.stride, padding, ceil_mode=True)
        else:
            y = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return self._trim(y) if self.trims else y


class AvgPool2d(_KerasPooling, nn.AvgPool2d):
    """Average pooling with Keras padding. Keras: ``AveragePooling2D``.

    (N, C, H, W) -> (N, C, H', W'), the input's dtype. ``stride=None`` is the pool size;
    ``padding="same"`` gives H' = ceil(H / stride) and averages only the real pixels of each window
    (as TensorFlow and the Keras docs do; Keras 3.15's torch backend repeats edge pixels instead
    in the uneven case); an int padding counts its zeros, as torch does.
    """

    same_is_dynamic: Final[bool]
    trims: Final[bool]
    trim_h: Final[int]
    trim_w: Final[int]
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
        plan = _plan(kernel_size, stride, padding)
        # 'same' leaves padded pixels out of the mean; an explicit int pad counts them, as torch.
        same = plan.spec == "same"
        super().__init__(plan.kernel, plan.stride, plan.padding, ceil_mode=same, count_include_pad=not same)
        self._configure(plan)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H', W')."""
        _check_pool_input(x, self.min_height, self.min_width, self.window, self.layer_name)
        if torch.jit.is_scripting():
            return self._pool(x)
        return self._pool_or_explain(x)

    def _pool(self, x: Tensor) -> Tensor:
        if self.same_is_dynamic:
            padding = same_pool_padding(x.shape[-2], x.shape[-1], self.same_before_h, self.same_before_w)
            y = F.avg_pool2d(x, self.kernel_size, self.stride, padding, ceil_mode=True, count_include_pad=False)
        else:
            y = F.avg_pool2d(
                x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode,
                count_include_pad=self.count_include_pad,
            )
        return self._trim(y) if self.trims else y


@torch.fx.wrap
def _check_global_input(x: Tensor, layer: str) -> None:
    """Raise ``ValueError`` unless ``x`` is 4-D: torch's adaptive pooling would take a 3-D tensor as
    one unbatched (C, H, W) sample and pool the wrong axes."""
    if x.dim() != 4:
        raise ValueError(
            f"{layer} expects a 4-D (N, C, H, W) input; received a {x.dim()}-D tensor of shape {x.shape}."
        )


class _GlobalPooling(nn.Module):
    """What both global poolings share: ``keepdims``, the input check and the dtype errors."""

    keepdims: Final[bool]
    layer_name: Final[str]

    def __init__(self, keepdims: bool = False) -> None:
        super().__init__()
        if not isinstance(keepdims, bool):
            raise TypeError(
                f"Invalid type for argument `keepdims`. Expected a bool. Received keepdims={keepdims!r}."
            )
        self.keepdims = keepdims
        self.layer_name = type(self).__name__

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C) or (N, C, 1, 1)."""
        _check_global_input(x, self.layer_name)
        if torch.jit.is_scripting():
            y = self._pool(x)
        else:
            y = self._pool_or_explain(x)
        return y if self.keepdims else y.flatten(1)

    def _pool(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.jit.unused
    def _pool_or_explain(self, x: Tensor) -> Tensor:
        try:
            return self._pool(x)
        except RuntimeError as error:
            explained = dtype_error(self.layer_name, x, error)
            if explained is None:
                raise
            raise explained from error

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}"


class GlobalAvgPool2d(_GlobalPooling):
    """Mean over H and W. Keras: ``GlobalAveragePooling2D``.

    (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdims=True``, for floating inputs.
    """

    def _pool(self, x: Tensor) -> Tensor:
        # torch computes a 1×1 adaptive average as mean over (H, W), the reduction Keras' torch
        # backend uses (the same float sums), and tools count it as nn.AdaptiveAvgPool2d.
        return F.adaptive_avg_pool2d(x, 1)


class GlobalMaxPool2d(_GlobalPooling):
    """Maximum over H and W. Keras: ``GlobalMaxPooling2D``.

    (N, C, H, W) -> (N, C), or (N, C, 1, 1) with ``keepdims=True``, for floating inputs.
    """

    def _pool(self, x: Tensor) -> Tensor:
        return F.adaptive_max_pool2d(x, 1)
