"""Batch normalization on either channel axis. Keras: ``BatchNormalization(axis=1 | -1)``.

Keras' ``momentum`` weighs the old statistic, torch's the new one: Keras 0.99 is torch 0.01 (the
Keras interop converts). Keras' default epsilon is 1e-3, torch's 1e-5.

One numeric difference remains in training mode: torch updates ``running_var`` with the unbiased
batch variance (divided by n - 1), Keras ``moving_variance`` with the biased one (divided by n),
where n = N·H·W is the number of values per channel. The normalised outputs are identical.
"""
import math
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

from .activations import ActivationArg
from ._checks import check_module, dtype_error
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


def _check_arguments(num_features: object, axis: object, eps: object, momentum: object) -> None:
    """Keras-style errors for the arguments ``BatchNorm`` and ``SyncBatchNorm`` share."""
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
        _check_arguments(num_features, axis, eps, momentum)
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


class _AllReduceSum(torch.autograd.Function):
    """Sum over a process group; the backward pass sums the incoming gradients the same way.

    Every rank's loss depends on every rank's contribution to the sum, so the gradient of the sum
    of all ranks' losses with respect to one rank's input is the all-reduced gradient.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group: Optional[Any]) -> Tensor:  # type: ignore[override]
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=ctx.group)
        return total, None


@torch.fx.wrap
def _check_sync_input(x: Tensor, channels: int, axis: int) -> None:
    """Raise ``ValueError`` unless ``x`` has rank >= 2 and ``channels`` on ``axis`` (a torch.fx leaf)."""
    dim = 1 if axis == 1 else x.dim() - 1
    if x.dim() < 2 or x.shape[dim] != channels:
        raise ValueError(
            f"SyncBatchNorm(axis={axis}) expects an input of rank >= 2 with {channels} channels in "
            f"dim {axis}; received shape {x.shape}."
        )


class SyncBatchNorm(_BatchNorm):
    """Batch normalization with statistics over the whole batch of every process, on any backend.

    ``torch.nn.SyncBatchNorm`` runs only on CUDA tensors; this one uses ``torch.distributed``
    all-reduces with autograd, so it also works with gloo on CPU. In training mode, inside an
    initialised process group of more than one process, the mean and the (biased) variance come
    from all ranks' samples, computed in two passes (sum, then sum of squared deviations) for
    accuracy; ranks may hold different numbers of samples. Otherwise (eval mode, no process group,
    one process, TorchScript) it is exactly ``BatchNorm``. Keras: ``BatchNormalization(axis,
    synchronized=True)``.

    Every rank must call it in training mode the same number of times (each call is a collective).
    The state-dict keys are a torch BatchNorm's, so its weights load into the unsynchronised model.

    Args:
        num_features: C, the size of the normalised axis.
        axis: 1 (dim 1 of (N, C) or (N, C, *) input) or -1 (the last dim, channels-last).
        eps: added to the variance (Keras ``epsilon``).
        momentum: torch convention: ``running = (1 - momentum) * running + momentum * batch``;
            None for a cumulative average.
        process_group: the group to synchronise over (default: the whole world).
    """

    axis: Final[int]

    def __init__(
        self,
        num_features: int,
        axis: int = 1,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Optional[Any] = None,
        *,
        device=None,
        dtype=None,
    ) -> None:
        _check_arguments(num_features, axis, eps, momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.axis = axis
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        # forward checks rank and channels before any normalisation.
        pass

    def forward(self, x: Tensor) -> Tensor:
        """Shape-preserving; normalises dim 1 (``axis=1``) or the last dim (``axis=-1``)."""
        _check_sync_input(x, self.num_features, self.axis)
        if self.axis == -1:
            return _move_channels(self._normalize(_move_channels(x, True)), False)
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self.training and self._synchronized():
            return self._sync_normalize(x)
        return self._local_normalize(x)

    def _local_normalize(self, x: Tensor) -> Tensor:
        """Exactly ``_BatchNorm.forward`` (which TorchScript cannot reach through ``super()``)."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        update = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    @torch.jit.unused
    def _synchronized(self) -> bool:
        return (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    @torch.jit.unused
    def _sync_normalize(self, x: Tensor) -> Tensor:
        """Training-mode normalisation with statistics over the whole process group."""
        compute = torch.promote_types(x.dtype, torch.float32)
        values = x.to(compute)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, self.num_features] + [1] * (x.dim() - 2)
        local_count = values.new_full((1,), x.numel() // self.num_features)
        sums = _AllReduceSum.apply(torch.cat([values.sum(dims), local_count]), self.process_group)
        count = int(sums[-1].item())
        if count <= 1:
            raise ValueError(
                f"SyncBatchNorm expects more than 1 value per channel in training mode over the whole "
                f"process group; received {count} (local input shape {tuple(x.shape)})."
            )
        mean = sums[:-1] / count
        centered = values - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims), self.process_group) / count
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.to(compute).view(shape)
        if self.bias is not None:
            out = out + self.bias.to(compute).view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running_stats(mean.detach(), var.detach() * (count / (count - 1)))
        return out.to(x.dtype)

    @torch.jit.unused
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """The update torch's BatchNorm makes: exponential (``momentum``) or cumulative (None)."""
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
            self.running_var.mul_(1 - factor).add_(unbiased_var.to(self.running_var.dtype), alpha=factor)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, axis={self.axis}"


def convert_sync_batchnorm(module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
    """Replace every BatchNorm in ``module`` with a synchronised one; returns ``module``.

    Each torch ``_BatchNorm`` (``nn.BatchNorm1d/2d/3d`` and the one inside ``tb.BatchNorm``, whose
    axis handling stays) becomes ``torch.nn.SyncBatchNorm`` where its tensors live on a GPU and
    ``tb.SyncBatchNorm`` elsewhere (torch's refuses CPU tensors). The new layers share the old
    parameters and buffers (same objects: ``requires_grad``, values and state-dict keys are kept)
    and its eps, momentum and train/eval mode. A module that is itself a BatchNorm is returned
    converted. Keras: ``BatchNormalization(synchronized=True)``.
    """
    check_module(module, "module")
    if isinstance(module, _BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, SyncBatchNorm)):
        return _to_sync(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _to_sync(bn: _BatchNorm, process_group: Optional[Any]) -> nn.Module:
    tensors = [t for t in (bn.weight, bn.running_mean) if t is not None]
    if any(is_lazy(t) for t in tensors):
        raise ValueError(
            f"convert_sync_batchnorm cannot convert an uninitialized lazy BatchNorm "
            f"({type(bn).__name__}); run one forward pass first."
        )
    on_gpu = bool(tensors) and tensors[0].is_cuda
    cls = nn.SyncBatchNorm if on_gpu else SyncBatchNorm
    synced = cls(
        bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats, process_group=process_group, device="meta",
    )
    # Share the original tensors (as torch's converter does): an optimizer built on the model
    # before conversion keeps updating the live parameters.
    synced.weight, synced.bias = bn.weight, bn.bias
    synced.running_mean, synced.running_var = bn.running_mean, bn.running_var
    synced.num_batches_tracked = bn.num_batches_tracked
    synced.train(bn.training)
    if hasattr(bn, "qconfig"):
        synced.qconfig = bn.qconfig
    return synced
