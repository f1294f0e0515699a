"""Activation look-up for the Keras ``activation=`` argument: ``None`` | name | ``nn.Module``.

A layer given an activation by name applies it as a function (``apply_activation``) and holds no
child module for it, so a ``Conv2d`` or ``Dense`` stays a leaf module: hook-based tools (torchinfo,
ptflops, thop) count only leaf modules, and a layer with a child is a container to them. An
activation given as a module is kept as the layer's ``act`` child (it may hold parameters, e.g.
``nn.PReLU``), with the same state-dict keys as before.
"""
import copy
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HardSigmoid(nn.Module):
    """Keras 3 ``hard_sigmoid``: ``relu6(x + 3) / 6`` (the same as ``nn.Hardsigmoid``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.hardsigmoid(x)


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


def _check_name(name: str) -> str:
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"Invalid value for argument `activation`. Expected None, an nn.Module or one of "
            f"{ACTIVATION_NAMES}. Received activation={name!r}."
        )
    return key


def _type_error(activation: object) -> TypeError:
    return TypeError(
        f"Invalid type for argument `activation`. Expected None, a str or an nn.Module. "
        f"Received activation={activation!r} of type {type(activation).__name__}."
    )


def get_activation(activation: ActivationArg) -> nn.Module:
    """Return a fresh module for ``activation``: ``None``/``"linear"`` give ``nn.Identity``.

    A module is returned as given. Names are Keras' (case-insensitive).
    """
    if activation is None:
        return nn.Identity()
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str):
        return _ACTIVATIONS[_check_name(activation)]()
    raise _type_error(activation)


def is_identity(module: nn.Module) -> bool:
    """Whether ``module`` is the no-op activation (lets layers skip the call in ``forward``)."""
    return isinstance(module, nn.Identity)


def split_activation(activation: ActivationArg) -> Tuple[str, Optional[nn.Module]]:
    """``(name, module)`` for a layer's ``activation=``: the lower-case Keras name with no module,
    or ``("linear", module)`` for a module; ``None``, ``"linear"`` and ``nn.Identity`` give
    ``("linear", None)``."""
    if activation is None:
        return "linear", None
    if isinstance(activation, nn.Module):
        return ("linear", None) if is_identity(activation) else ("linear", activation)
    if isinstance(activation, str):
        return _check_name(activation), None
    raise _type_error(activation)


def apply_activation(x: Tensor, name: str) -> Tensor:
    """The Keras activation called ``name`` (lower case) applied to ``x``.

    Each branch makes exactly the call that the module of ``get_activation(name)`` makes in its
    ``forward``, so the two agree bit for bit (and tools that patch ``torch.nn.functional`` see
    the same calls). TorchScript compiles it; ``"linear"`` returns ``x``.
    """
    if name == "relu":
        return F.relu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "softmax":
        return F.softmax(x, 1)
    if name == "silu" or name == "swish":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "relu6":
        return F.hardtanh(x, 0.0, 6.0)
    if name == "elu":
        return F.elu(x, 1.0)
    if name == "selu":
        return F.selu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.2)
    if name == "hard_sigmoid":
        return F.hardsigmoid(x)
    if name == "hard_silu" or name == "hard_swish":
        return F.hardswish(x)
    if name == "mish":
        return F.mish(x)
    if name == "softplus":
        return F.softplus(x, 1.0, 20.0)
    if name == "softsign":
        return F.softsign(x)
    if name == "log_softmax":
        return F.log_softmax(x, 1)
    if name == "exponential":
        return torch.exp(x)
    return x


class KerasActivation:
    """What ``Conv2d``, ``Dense`` and ``SeparableConv2d`` share about their ``activation=``.

    Mixed in before the torch class. The layer itself declares the TorchScript constants
    ``activation: Final[str]``, ``has_activation: Final[bool]`` and ``module_activation:
    Final[bool]`` (TorchScript reads ``Final`` annotations from the layer's own class only). A
    named activation is applied by ``apply_activation`` unless ``named_as_module`` (then it is an
    ``act`` child, as a ``SeparableConv2d``'s, which mirrors ``Sequential(depthwise, pointwise,
    act)``); a module activation is always the ``act`` child; none leaves no child at all.
    """

    # Read-only view for Python code; TorchScript uses the ``act`` child directly.
    __jit_unused_properties__ = ["act"]

    def _init_activation(self, activation: ActivationArg, named_as_module: bool = False) -> None:
        name, module = split_activation(activation)
        if module is None and name != "linear" and named_as_module:
            module = get_activation(name)
        if module is not None:
            self.act = module
        self.activation = name
        self.module_activation = module is not None
        self.has_activation = module is not None or name != "linear"

    def activation_arg(self) -> ActivationArg:
        """The ``activation=`` that rebuilds this layer's activation: its Keras name, a copy of
        its module, or None."""
        if self.activation != "linear":
            return self.activation
        return copy.deepcopy(self._modules["act"]) if self.module_activation else None

    @property
    def act(self) -> nn.Module:
        """The activation as a module: the ``act`` child, else a fresh module for the name
        (``nn.Identity`` for none)."""
        child = self._modules.get("act")
        return child if child is not None else get_activation(self.activation)

    def __setstate__(self, state: Dict[str, object]) -> None:
        # A layer pickled by torchblocks <= 0.1.0 held an ``act`` child always (``nn.Identity``
        # for none): keep a real activation as the child, drop the Identity.
        super().__setstate__(state)  # type: ignore[misc]
        if "module_activation" not in self.__dict__:
            child = self._modules.pop("act", None)
            self._init_activation(child)

    def _activation_repr(self) -> str:
        named = self.activation != "linear" and not self.module_activation
        return f", activation={self.activation!r}" if named else ""
