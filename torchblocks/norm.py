"""Batch normalization on either channel axis. Keras: ``BatchNormalization(axis=1 | -1)``.

Keras' ``momentum`` weighs the old statistic, torch's the new one: Keras 0.99 is torch 0.01 (the
Keras interop converts). Keras' default epsilon is 1e-3, torch's 1e-5.

One numeric difference remains in training mode: torch updates ``running_var`` with the unbiased
batch variance (divided by n - 1), Keras ``moving_variance`` with the biased one (divided by n),
where n = N·H·W is the number of values per channel. The normalised outputs are identical.
"""
import math

import torch
import torch.fx
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from .activations import ActivationArg
from ._checks import dtype_error
from .conv import Conv2d
from .linear import Dense
from .padding import PaddingArg, check_positive_int


@torch.fx.wrap
def _check_rank(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` has rank >= 2 (a torch.fx leaf, so BatchNorm traces)."""
    if x.dim() < 2:
        raise ValueError(f"BatchNorm expects an input of rank >= 2; received {x.dim()}-D.")


@torch.fx.wrap
def _check_channels(x: Tensor, channels: int, axis: int) -> None:
    """Raise ``ValueError`` unless ``x`` has ``channels`` on ``axis`` (a torch.fx leaf)."""
    if x.dim() < 2:
        raise ValueError(
            f"BatchNorm expects an input of rank >= 2 with {channels} channels; received shape "
            f"{x.shape}."
        )
    if axis == 1:
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
    elif x.shape[-1] != channels:
        raise ValueError(
            f"BatchNorm(axis=-1) expects {channels} channels in the last dim; received shape "
            f"{x.shape}."
        )


@torch.fx.wrap
def _move_channels(x: Tensor, to_front: bool) -> Tensor:
    """``x.movedim(-1, 1)`` (``to_front``) or ``x.movedim(1, -1)``, written as the same ``permute``
    view: FLOP counters that trace (fvcore) know ``aten::permute`` and warn on ``aten::movedim``."""
    rank = x.dim()
    if to_front:
        dims = [0, rank - 1] + list(range(1, rank - 1))
    else:
        dims = [0] + list(range(2, rank)) + [1]
    return x.permute(dims)


class _ChannelsFirstBatchNorm(_BatchNorm):
    """A real torch BatchNorm over dim 1 of an (N, C) or (N, C, *) tensor.

    Kept a ``_BatchNorm`` so ``nn.SyncBatchNorm.convert_sync_batchnorm`` and BN-aware tools see it.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        _check_rank(input)


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
        _check_channels(x, self.bn.num_features, self.axis)
        if self.axis == 1:
            return self._normalize(x)
        return _move_channels(self._normalize(_move_channels(x, True)), False)

    def _normalize(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self.bn(x)
        return self._normalize_or_explain(x)

    @torch.jit.unused
    def _normalize_or_explain(self, x: Tensor) -> Tensor:
        # Eager only (TorchScript has no try): a dtype torch refuses ("mixed dtype (CPU)") is named
        # after the fact, so the inputs torch accepts (half with float parameters) cost nothing.
        try:
            return self.bn(x)
        except RuntimeError as error:
            reference = self.bn.weight if self.bn.weight is not None else self.bn.running_mean
            explained = dtype_error("BatchNorm", x, error, reference)
            if explained is None:
                raise
            raise explained from error

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
