"""Keras activation operations called in a functional model (``keras.ops.relu(x)``,
``keras.ops.gelu(x, approximate=True)``, ``keras.ops.softmax(x, axis=1)``, ``keras.ops.swish``
(an ``Silu`` operation), ...)."""
from torch import nn

from .core import activation_or_refuse
from .registry import OPS_PREFIX, LayerCall, converts, unsupported

# Keras operation class -> Keras activation name (the same torch function on Keras' torch backend).
_PLAIN = {
    "Relu": "relu", "Relu6": "relu6", "Sigmoid": "sigmoid", "Silu": "silu", "HardSigmoid": "hard_sigmoid",
    "HardSilu": "hard_silu", "Tanh": "tanh", "Selu": "selu", "Softplus": "softplus", "Softsign": "softsign",
    "LogSigmoid": "log_sigmoid", "TanhShrink": "tanh_shrink", "Exp": "exponential",
}


def _single_tensor(call: LayerCall) -> None:
    if len(call.node.inputs) != 1:
        raise unsupported(call, f"a call on {len(call.node.inputs)} tensors is not supported")


@converts(*(OPS_PREFIX + name for name in _PLAIN))
def _plain(call: LayerCall) -> nn.Module:
    _single_tensor(call)
    return activation_or_refuse(call, _PLAIN[type(call.layer).__name__], -1)


@converts(OPS_PREFIX + "Gelu")
def _gelu(call: LayerCall) -> nn.Module:
    _single_tensor(call)
    return nn.GELU(approximate="tanh" if call.layer.approximate else "none")


@converts(OPS_PREFIX + "LeakyRelu")
def _leaky_relu(call: LayerCall) -> nn.Module:
    _single_tensor(call)
    return nn.LeakyReLU(float(call.layer.negative_slope))


@converts(OPS_PREFIX + "Elu", OPS_PREFIX + "Celu")
def _elu(call: LayerCall) -> nn.Module:
    _single_tensor(call)
    cls = nn.ELU if type(call.layer).__name__ == "Elu" else nn.CELU
    return cls(float(call.layer.alpha))


@converts(OPS_PREFIX + "Softmax", OPS_PREFIX + "LogSoftmax")
def _softmax(call: LayerCall) -> nn.Module:
    _single_tensor(call)
    axis = call.layer.axis
    if axis is None or isinstance(axis, (list, tuple)):
        raise unsupported(call, f"axis={axis!r} is not supported (one axis only)")
    cls = nn.Softmax if type(call.layer).__name__ == "Softmax" else nn.LogSoftmax
    return cls(dim=call.torch_dim(int(axis)))
