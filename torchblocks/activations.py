"""Activation look-up for the Keras ``activation=`` argument: ``None`` | name | ``nn.Module``."""
from typing import Callable, Dict, Union

import torch
from torch import Tensor, nn


class HardSigmoid(nn.Module):
    """Keras 3 ``hard_sigmoid``: ``relu6(x + 3) / 6`` (the same as ``nn.Hardsigmoid``)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.hardsigmoid(x)


class Exponential(nn.Module):
    """Keras ``exponential``: ``exp(x)``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


# Keras names -> module factories. Keras 3's ``gelu`` is the exact erf form (approximate=False); its
# ``softmax``/``log_softmax`` act on the channel axis, which is dim 1 for NCHW and (N, C) tensors;
# ``leaky_relu`` uses negative_slope 0.2 and ``elu`` alpha 1.0.
_ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": HardSigmoid,
    "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(dim=1),
    "log_softmax": lambda: nn.LogSoftmax(dim=1),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "hard_silu": nn.Hardswish,
    "hard_swish": nn.Hardswish,
    "mish": nn.Mish,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "exponential": Exponential,
}

ACTIVATION_NAMES = tuple(sorted(_ACTIVATIONS))

ActivationArg = Union[None, str, nn.Module]


def get_activation(activation: ActivationArg) -> nn.Module:
    """Return a fresh module for ``activation``: ``None``/``"linear"`` give ``nn.Identity``.

    A module is returned as given. Names are Keras' (case-insensitive).
    """
    if activation is None:
        return nn.Identity()
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str):
        factory = _ACTIVATIONS.get(activation.lower())
        if factory is None:
            raise ValueError(
                f"Invalid value for argument `activation`. Expected None, an nn.Module or one of "
                f"{ACTIVATION_NAMES}. Received activation={activation!r}."
            )
        return factory()
    raise TypeError(
        f"Invalid type for argument `activation`. Expected None, a str or an nn.Module. "
        f"Received activation={activation!r} of type {type(activation).__name__}."
    )


def is_identity(module: nn.Module) -> bool:
    """Whether ``module`` is the no-op activation (lets layers skip the call in ``forward``)."""
    return isinstance(module, nn.Identity)
