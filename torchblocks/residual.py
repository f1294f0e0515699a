"""Residual connections: ``y = body(x) + shortcut(x)``, and the book's residual blocks."""
from collections import OrderedDict
from typing import Optional

import torch
import torch.fx
from torch import Tensor, nn
from torch.jit import Final

from .activations import ActivationArg
from .conv import Conv2d
from .linear import Dense
from .norm import BatchNorm
from .padding import check_positive_int, to_pair
from .pooling import MaxPool2d


@torch.fx.wrap
def _check_same_shape(y: Tensor, s: Tensor) -> None:
    """Refuse to broadcast a residual sum; a leaf for torch.fx, so blocks stay traceable."""
    if y.shape != s.shape:
        raise ValueError(
            f"Residual: the body's output shape {y.shape} differs from the shortcut's "
            f"{s.shape}. Where the body changes channels or resolution, pass "
            f"shortcut=Projection(in_channels, out_channels, stride)."
        )


class Residual(nn.Module):
    """``body(x) + shortcut(x)``. Keras: ``layers.add([body_output, shortcut_output])``.

    The shortcut is the identity when ``shortcut`` is None. Both branches must produce the same
    shape: a mismatch raises ``ValueError`` naming both shapes rather than broadcasting.

    Args:
        body: any module; its output must have the shape of the shortcut's.
        shortcut: ``None`` (identity) or a module such as ``Projection`` when the body changes the
            channel count or the resolution.
    """

    identity_shortcut: Final[bool]

    def __init__(self, body: nn.Module, shortcut: Optional[nn.Module] = None) -> None:
        super().__init__()
        for name, value in (("body", body), ("shortcut", shortcut)):
            if value is not None and not isinstance(value, nn.Module):
                raise TypeError(
                    f"Invalid type for argument `{name}`. Expected an nn.Module. "
                    f"Received {name}={value!r} of type {type(value).__name__}."
                )
        if body is None:
            raise TypeError("Invalid value for argument `body`. Expected an nn.Module. Received body=None.")
        self.body = body
        self.shortcut = nn.Identity() if shortcut is None else shortcut
        self.identity_shortcut = isinstance(self.shortcut, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        """Shape of ``body(x)``, which must equal that of ``shortcut(x)``."""
        y = self.body(x)
        s = x if self.identity_shortcut else self.shortcut(x)
        _check_same_shape(y, s)
        return y + s


class Projection(nn.Module):
    """Linear projection shortcut, no activation: a 1×1 strided conv, or a ``Dense`` for vectors.

    Keras: ``Conv2D(out, 1, strides=stride, padding='same')`` on feature maps, ``Dense(out)`` on
    vectors (``vector=True``). (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride),
    ceil(W / stride)), or (N, in_channels) -> (N, out_channels). With ``norm`` a ``BatchNorm``
    follows and the projection has no bias (BN's shift makes it redundant, as in torchvision).

    Submodules: ``proj`` (``Conv2d`` or ``Dense``) and ``bn`` (``BatchNorm`` or ``nn.Identity``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, norm: bool = False, *, vector: bool = False
    ) -> None:
        super().__init__()
        strides = to_pair(stride, "stride")
        for name, value in (("norm", norm), ("vector", vector)):
            if not isinstance(value, bool):
                raise TypeError(f"Invalid type for argument `{name}`. Expected a bool. Received {name}={value!r}.")
        if vector:
            if strides != (1, 1):
                raise ValueError(
                    f"Invalid value for argument `stride`. A vector projection has no stride. "
                    f"Received stride={stride!r} with vector=True."
                )
            self.proj: nn.Module = Dense(in_channels, out_channels, bias=not norm)
        else:
            # A 1×1 kernel never needs padding: 'valid' gives Keras' 'same' size ceil(n / s).
            self.proj = Conv2d(in_channels, out_channels, 1, strides, "valid", bias=not norm)
        self.bn = BatchNorm(out_channels) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W'), or (N, C_in) -> (N, C_out) with ``vector=True``."""
        return self.bn(self.proj(x))


class IdentityResidualBlock(Residual):
    """The book's identity residual block: three 3×3 'same' ReLU convs, plus the input.

    Keras::

        y = Conv2D(128, 3, activation='relu', padding='same')(x)   # three times
        y = layers.add([y, x])

    (N, channels, H, W) -> (N, channels, H, W). Body submodules ``conv1``..``conv3``.
    """

    def __init__(self, channels: int = 128, kernel_size: int = 3, activation: ActivationArg = "relu") -> None:
        check_positive_int(channels, "channels")
        body = nn.Sequential(
            OrderedDict(
                (f"conv{i}", Conv2d(channels, channels, kernel_size, padding="same", activation=activation))
                for i in (1, 2, 3)
            )
        )
        super().__init__(body)


class DownsamplingResidualBlock(Residual):
    """The book's downsampling residual block: two convs, 2×2 max pooling, 1×1 stride-2 shortcut.

    Keras::

        y = Conv2D(128, 3, activation='relu', padding='same')(x)   # twice
        y = MaxPooling2D(2, strides=2)(y)
        residual = Conv2D(128, 1, strides=2, padding='same')(x)
        y = layers.add([y, residual])

    (N, in_channels, H, W) -> (N, channels, H // 2, W // 2); H and W must be even, since the
    pooling floors and the shortcut rounds up (Keras fails on odd sizes too).
    """

    def __init__(
        self, in_channels: int, channels: int = 128, kernel_size: int = 3, activation: ActivationArg = "relu"
    ) -> None:
        check_positive_int(in_channels, "in_channels")
        check_positive_int(channels, "channels")
        body = nn.Sequential(
            OrderedDict(
                conv1=Conv2d(in_channels, channels, kernel_size, padding="same", activation=activation),
                conv2=Conv2d(channels, channels, kernel_size, padding="same", activation=activation),
                pool=MaxPool2d(2, 2),
            )
        )
        super().__init__(body, Projection(in_channels, channels, stride=2))
