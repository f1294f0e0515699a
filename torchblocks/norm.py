"""Batch normalization on either channel axis. Keras: ``BatchNormalization(axis=1 | -1)``.

Keras' ``momentum`` weighs the old statistic, torch's the new one: Keras 0.99 is torch 0.01 (the
Keras interop converts). Keras' default epsilon is 1e-3, torch's 1e-5.

One numeric difference remains in training mode: torch updates ``running_var`` with the unbiased
batch variance (divided by n - 1), Keras ``moving_variance`` with the biased one (divided by n),
where n = N·H·W is the number of values per channel. The normalised outputs are identical.
"""
import math

from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from .activations import ActivationArg
from .conv import Conv2d
from .linear import Dense
from .padding import PaddingArg, check_positive_int


class _ChannelsFirstBatchNorm(_BatchNorm):
    """A real torch BatchNorm over dim 1 of an (N, C) or (N, C, *) tensor.

    Kept a ``_BatchNorm`` so ``nn.SyncBatchNorm.convert_sync_batchnorm`` and BN-aware tools see it.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects an input of rank >= 2; received {input.dim()}-D.")


class BatchNorm(nn.Module):
    """Batch normalization over one channel axis. Keras: ``BatchNormalization``.

    ``axis=1`` normalises dim 1 of (N, C) or (N, C, H, W) tensors (Keras ``axis=1``, the PyTorch
    convention); ``axis=-1`` the last dim of channels-last tensors such as (N, H, W, C) (Keras'
    default). The statistics live in ``self.bn``, a real torch BatchNorm, so
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` converts it and the axis handling is kept.

    Args:
        num_features: C, the size of the normalised axis.
        axis: 1 or -1.
        eps: added to the variance (Keras ``epsilon``).
        momentum: torch convention: ``running = (1 - momentum) * running + momentum * batch``.
    """

    axis: Final[int]

    def __init__(
        self,
        num_features: int,
        axis: int = 1,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int(num_features, "num_features")
        if isinstance(axis, bool) or axis not in (1, -1):
            raise ValueError(
                f"Invalid value for argument `axis`. Expected 1 (channels-first) or -1 "
                f"(channels-last). Received axis={axis!r}."
            )
        # The chained comparison also refuses NaN, and inf (which would zero every output).
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"Invalid value for argument `eps`. Expected a positive float. Received eps={eps!r}.")
        if momentum is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1
        ):
            raise ValueError(
                f"Invalid value for argument `momentum`. Expected a float in [0, 1] or None "
                f"(cumulative average). Received momentum={momentum!r}."
            )
        self.axis = axis
        self.bn = _ChannelsFirstBatchNorm(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )

    @property
    def num_features(self) -> int:
        return self.bn.num_features

    def forward(self, x: Tensor) -> Tensor:
        """Shape-preserving; normalises dim 1 (``axis=1``) or the last dim (``axis=-1``)."""
        channels = self.bn.num_features
        if x.dim() < 2:
            raise ValueError(
                f"BatchNorm expects an input of rank >= 2 with {channels} channels; received shape "
                f"{x.shape}."
            )
        if self.axis == 1:
            if x.shape[1] != channels:
                hint = ""
                if x.shape[-1] == channels:
                    hint = (
                        " It looks channels-last: use BatchNorm(axis=-1), or pass "
                        "x.permute(0, 3, 1, 2) for (N, H, W, C) input."
                    )
                raise ValueError(
                    f"BatchNorm(axis=1) expects {channels} channels in dim 1; received shape "
                    f"{x.shape}.{hint}"
                )
            return self.bn(x)
        if x.shape[-1] != channels:
            raise ValueError(
                f"BatchNorm(axis=-1) expects {channels} channels in the last dim; received shape "
                f"{x.shape}."
            )
        return self.bn(x.movedim(-1, 1)).movedim(1, -1)

    def extra_repr(self) -> str:
        return f"{self.bn.num_features}, axis={self.axis}"


class ConvBN(nn.Module):
    """``Conv2d`` (with its activation) followed by ``BatchNorm``: the book's Keras pattern
    ``Conv2D(..., activation='relu')`` then ``BatchNormalization()`` on NCHW tensors.

    (N, in_channels, H, W) -> (N, out_channels, H', W'). Submodules ``conv`` and ``bn``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: PaddingArg = "valid",
        activation: ActivationArg = "relu",
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, activation=activation
        )
        self.bn = BatchNorm(out_channels, 1, eps, momentum)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class DenseBN(nn.Module):
    """``Dense`` (with its activation) followed by ``BatchNorm``: the book's Keras pattern
    ``Dense(32, activation='relu')`` then ``BatchNormalization()``.

    (N, in_features) -> (N, out_features). Submodules ``dense`` and ``bn``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: ActivationArg = "relu",
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.dense = Dense(in_features, out_features, activation=activation)
        self.bn = BatchNorm(out_features, 1, eps, momentum)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.dense(x))
