"""Dense and the activation layers: Dense, Activation, ReLU, LeakyReLU, ELU, Softmax, Identity."""
from torch import nn

from ....linear import Dense
from ..activations import ACTIVATION_NAMES, activation_module
from ..layers import PointwiseDense
from .registry import LayerCall, check_rank, config_activation, converts, load_into, unsupported


@converts("Dense")
def _dense(call: LayerCall) -> nn.Module:
    check_rank(call, (2, 3, 4))
    record = call.record()
    kernel = record.arrays["kernel"]
    # Dense acts on Keras' last axis: the channels of an (N, H, W, C) map, which are dim 1 of the
    # converted (N, C, H, W) tensor; the module computes on its channels-last view (dim -1).
    pointwise = call.moves_channels(call.rank)
    cls = PointwiseDense if pointwise else Dense
    module = cls(kernel.shape[0], kernel.shape[1], bias=call.config["use_bias"],
                 activation=config_activation(call, call.rank - 1))
    return load_into(module, record, call.permutation)


@converts("Activation")
def _activation(call: LayerCall) -> nn.Module:
    # Always a module: its softmax acts on Keras' last axis, wherever that is in torch.
    name = call.config.get("activation")
    if not isinstance(name, str):
        raise unsupported(call, f"activation {name!r} is not a built-in Keras activation")
    return activation_or_refuse(call, name, call.torch_dim(-1))


@converts("ReLU")
def _relu(call: LayerCall) -> nn.Module:
    config = call.config
    max_value, slope, threshold = config["max_value"], config["negative_slope"], config["threshold"]
    if threshold == 0 and slope == 0:
        if max_value is None:
            return nn.ReLU()
        return nn.ReLU6() if max_value == 6 else nn.Hardtanh(0.0, float(max_value))
    if threshold == 0 and max_value is None:
        return nn.LeakyReLU(float(slope))
    raise unsupported(
        call, f"ReLU(max_value={max_value}, negative_slope={slope}, threshold={threshold}) is not "
        f"supported (a threshold, or a slope with a maximum, has no torch module)"
    )


@converts("LeakyReLU")
def _leaky_relu(call: LayerCall) -> nn.Module:
    return nn.LeakyReLU(float(call.config["negative_slope"]))


@converts("ELU")
def _elu(call: LayerCall) -> nn.Module:
    return nn.ELU(float(call.config["alpha"]))


@converts("Softmax")
def _softmax(call: LayerCall) -> nn.Module:
    axis = call.config["axis"]
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise unsupported(call, f"softmax over several axes {axis} is not supported")
        axis = axis[0]
    return nn.Softmax(dim=call.torch_dim(int(axis)))


@converts("Identity")
def _identity(call: LayerCall) -> nn.Module:
    return nn.Identity()


def activation_or_refuse(call: LayerCall, name: str, dim: int) -> nn.Module:
    """The module of Keras activation ``name``, or the refusal naming the supported ones."""
    module = activation_module(name, dim)
    if module is None:
        raise unsupported(call, f"activation {name!r} has no exact torch form; supported: {', '.join(ACTIVATION_NAMES)}")
    return module
