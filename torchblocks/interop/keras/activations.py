"""Keras' built-in activations as torch modules, where torch has an exact form of them.

Keras 3 on its torch backend computes each of these with the torch function of the same name and
Keras' default arguments (``leaky_relu`` slope 0.2, ``elu``/``celu`` alpha 1, ``hard_shrink`` and
``soft_shrink`` threshold 0.5, ``gelu`` exact); ``softmax``, ``log_softmax`` and ``glu`` act on
Keras' last axis, which is torch dim ``dim`` of the converted model's tensor. Keras activations
without an exact torch form (``sparse_plus``, ``sparse_sigmoid``, ``squareplus``, ``sparsemax``,
``threshold``) are not in the table, and a layer using them is refused.
"""
from typing import Callable, Dict, Optional, Tuple, Type

from torch import nn

from ...activations import Exponential, get_activation

# Keras name -> factory(dim); dim is the torch dim of Keras' axis -1 (used by the axis-wise ones).
_TABLE: Dict[str, Callable[[int], nn.Module]] = {
    "linear": lambda dim: nn.Identity(),
    "relu": lambda dim: nn.ReLU(),
    "relu6": lambda dim: nn.ReLU6(),
    "leaky_relu": lambda dim: nn.LeakyReLU(0.2),
    "elu": lambda dim: nn.ELU(1.0),
    "celu": lambda dim: nn.CELU(1.0),
    "selu": lambda dim: nn.SELU(),
    "gelu": lambda dim: nn.GELU(),
    "silu": lambda dim: nn.SiLU(),
    "swish": lambda dim: nn.SiLU(),
    "mish": lambda dim: nn.Mish(),
    "sigmoid": lambda dim: nn.Sigmoid(),
    "log_sigmoid": lambda dim: nn.LogSigmoid(),
    "hard_sigmoid": lambda dim: nn.Hardsigmoid(),
    "hard_silu": lambda dim: nn.Hardswish(),
    "hard_swish": lambda dim: nn.Hardswish(),
    "tanh": lambda dim: nn.Tanh(),
    "hard_tanh": lambda dim: nn.Hardtanh(-1.0, 1.0),
    "tanh_shrink": lambda dim: nn.Tanhshrink(),
    "hard_shrink": lambda dim: nn.Hardshrink(0.5),
    "soft_shrink": lambda dim: nn.Softshrink(0.5),
    "softplus": lambda dim: nn.Softplus(),
    "softsign": lambda dim: nn.Softsign(),
    "exponential": lambda dim: Exponential(),
    "softmax": lambda dim: nn.Softmax(dim=dim),
    "log_softmax": lambda dim: nn.LogSoftmax(dim=dim),
    "glu": lambda dim: nn.GLU(dim=dim),
}

ACTIVATION_NAMES: Tuple[str, ...] = tuple(sorted(_TABLE))


def activation_module(name: str, dim: int) -> Optional[nn.Module]:
    """The torch module of Keras activation ``name`` (None where torch has no exact form)."""
    factory = _TABLE.get(name)
    return None if factory is None else factory(dim)


def activation_types(name: str) -> Tuple[Type[nn.Module], ...]:
    """The torch module classes that compute Keras activation ``name`` exactly: this table's and
    torchblocks' own ``activation=`` choice (the two differ for ``hard_sigmoid``)."""
    types = []
    factory = _TABLE.get(name)
    if factory is not None:
        types.append(type(factory(-1)))
    try:
        types.append(type(get_activation(name)))
    except ValueError:
        pass
    return tuple(types)


# The modules of the activations that act on each feature alone (or, like softmax, commute with any
# reordering of the features): a Flatten's features may pass them before a Dense whose rows are permuted.
FEATUREWISE_TYPES: Tuple[Type[nn.Module], ...] = tuple(
    {type(factory(1)) for name, factory in _TABLE.items() if name != "glu"}
)
