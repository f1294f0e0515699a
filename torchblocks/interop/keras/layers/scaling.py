"""Per-channel scaling, normalization and Dense on a converted model's channel dim."""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final

from ....activations import apply_activation
from ....linear import Dense, _check_features
from ....norm import BatchNorm


def _channel_view(dim: int, rank: int) -> List[int]:
    """The view shape that puts a (C,) vector on ``dim`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[dim] = -1
    return shape


class Rescaling(nn.Module):
    """``x * scale + offset``, per channel where ``scale``/``offset`` have one value per channel of
    ``dim``. Keras: ``Rescaling``."""

    dim: Final[int]
    rank: Final[int]

    def __init__(self, scale: Sequence[float], offset: Sequence[float], dim: int = 1, rank: int = 4) -> None:
        super().__init__()
        self.dim, self.rank = int(dim), int(rank)
        shape = _channel_view(self.dim, self.rank)
        # Constants of the layer's config: not state, so not in the state dict.
        self.register_buffer("scale", torch.tensor([float(v) for v in scale]).view(shape), persistent=False)
        self.register_buffer("offset", torch.tensor([float(v) for v in offset]).view(shape), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Element-wise; the shape of ``x``."""
        return x * self.scale.to(x.dtype) + self.offset.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"scale={tuple(self.scale.flatten().tolist())}, offset={tuple(self.offset.flatten().tolist())}, "
            f"dim={self.dim}, rank={self.rank}"
        )


class Normalization(nn.Module):
    """``(x - mean) / max(sqrt(variance), epsilon)`` per channel of ``dim`` (``invert``:
    ``mean + x * max(sqrt(variance), epsilon)``). Keras: ``Normalization``; ``epsilon`` is Keras'
    ``keras.config.epsilon()``, 1e-7 unless changed."""

    dim: Final[int]
    rank: Final[int]
    invert: Final[bool]
    epsilon: Final[float]

    def __init__(
        self, num_features: int, dim: int = 1, rank: int = 4, invert: bool = False, epsilon: float = 1e-7
    ) -> None:
        super().__init__()
        self.dim, self.rank, self.invert, self.epsilon = int(dim), int(rank), bool(invert), float(epsilon)
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("variance", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """Element-wise per channel; the shape of ``x``."""
        shape = _channel_view(self.dim, self.rank)
        mean, variance = self.mean.view(shape), self.variance.view(shape)
        std = torch.clamp_min(torch.sqrt(variance), self.epsilon)
        if self.invert:
            return mean + x * std
        return (x - mean) / std

    def extra_repr(self) -> str:
        return (
            f"num_features={self.mean.numel()}, dim={self.dim}, rank={self.rank}, "
            f"invert={self.invert}, epsilon={self.epsilon!r}"
        )


class LayerNorm(nn.Module):
    """Layer normalization over one dim, which need not be the last (``dim=1``: the channels of
    (N, C, H, W), Keras ``axis=-1`` on an (N, H, W, C) map). Keras: ``LayerNormalization``.

    ``rms_scaling`` is Keras': ``x * rsqrt(var(x) + eps) * gamma`` (its variance is centred).
    """

    dim: Final[int]
    eps: Final[float]
    rms_scaling: Final[bool]
    normalized_shape: Final[List[int]]

    def __init__(
        self, num_features: int, dim: int = 1, eps: float = 1e-3, center: bool = True, scale: bool = True,
        rms_scaling: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.eps, self.rms_scaling = int(dim), float(eps), bool(rms_scaling)
        self.normalized_shape = [int(num_features)]
        self.weight = nn.Parameter(torch.ones(num_features)) if scale else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if center and not rms_scaling else None

    def forward(self, x: Tensor) -> Tensor:
        """Normalises ``dim``; the shape of ``x``."""
        x = x.movedim(self.dim, -1)
        if self.rms_scaling:
            variance = torch.var(x, dim=-1, unbiased=False, keepdim=True)
            out = x * torch.rsqrt(variance + self.eps)
            if self.weight is not None:
                out = out * self.weight
        else:
            out = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return out.movedim(-1, self.dim)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.normalized_shape[0]}, dim={self.dim}, eps={self.eps!r}, "
            f"center={self.bias is not None}, scale={self.weight is not None}, rms_scaling={self.rms_scaling}"
        )


class LayerScale(nn.Module):
    """``x * gamma`` with one trainable factor per channel of ``dim``. Keras: the ``LayerScale``
    of Keras' ConvNeXt."""

    dim: Final[int]
    rank: Final[int]

    def __init__(self, num_features: int, dim: int = 1, rank: int = 4, init_value: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.rank = int(dim), int(rank)
        self.gamma = nn.Parameter(torch.full((num_features,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """Element-wise per channel; the shape of ``x``."""
        return x * self.gamma.view(_channel_view(self.dim, self.rank))

    def extra_repr(self) -> str:
        return f"num_features={self.gamma.numel()}, dim={self.dim}, rank={self.rank}"


class FrozenBatchNorm(BatchNorm):
    """A ``BatchNorm`` that normalises with its running statistics in training mode too and never
    updates them: a Keras ``BatchNormalization`` with ``trainable=False`` (Keras 3 runs it in
    inference mode whatever ``training`` says)."""

    def forward(self, x: Tensor) -> Tensor:
        """Shape-preserving, as ``BatchNorm``."""
        bn = self.bn
        if self.axis == 1:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        moved = x.movedim(-1, 1)
        out = F.batch_norm(moved, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return out.movedim(1, -1)


class PointwiseDense(Dense):
    """A ``Dense`` on dim 1 of (N, C, H, W): Keras ``Dense`` on an (N, H, W, C) map, computed as
    Keras does (a matrix product over the channels-last map), not as a 1×1 convolution."""

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_features, H, W) -> (N, out_features, H, W); the activation acts on the
        channels-last view (a softmax over the channels is given as a module with dim=-1)."""
        x = x.movedim(1, -1)
        _check_features(x, self.in_features, self.layer_name)
        x = F.linear(x, self.weight, self.bias)
        if self.module_activation:
            x = self.act(x)
        elif self.has_activation:
            x = apply_activation(x, self.activation)
        return x.movedim(-1, 1)


class StochasticDepth(nn.Module):
    """Drops each sample's whole residual branch with probability ``rate`` in training, scaling the
    kept ones by 1 / (1 - rate); the identity in eval mode. Keras: the ``StochasticDepth`` of
    Keras' ConvNeXt (one Bernoulli draw per sample)."""

    rate: Final[float]

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Invalid value for argument `rate`. Expected 0 <= rate < 1. Received rate={rate!r}.")
        self.rate = float(rate)

    def forward(self, x: Tensor) -> Tensor:
        """The shape of ``x``."""
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate!r}"
