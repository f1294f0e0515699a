"""Merging layers (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate), the element-wise
Keras operations of a functional model (``x + y``, ``x * 0.5``, ``keras.ops.add``...), and the
residual scaling of Keras' InceptionResNetV2."""
import numbers
from typing import Any, Callable, Dict

from torch import nn

from ..graph import TensorArg
from ..layers import (
    Add, Arithmetic, Average, Concatenate, Divide, Maximum, Minimum, Multiply, ScaleAdd, Subtract,
)
from .registry import OPS_PREFIX, LayerCall, converts, unsupported

_MERGES: Dict[str, Callable[[], nn.Module]] = {
    "Add": Add, "Subtract": Subtract, "Multiply": Multiply, "Average": Average, "Maximum": Maximum,
    "Minimum": Minimum,
}


def _same_rank(call: LayerCall) -> None:
    ranks = {len(s) for s in call.input_shapes}
    if len(ranks) != 1:
        raise unsupported(call, f"inputs of different ranks {call.input_shapes} are not supported")


@converts(*_MERGES, list_input=True)
def _merge(call: LayerCall) -> nn.Module:
    _same_rank(call)
    if type(call.layer).__name__ == "Subtract" and len(call.input_shapes) != 2:
        raise unsupported(call, f"Subtract takes exactly 2 inputs, received {len(call.input_shapes)}")
    return _MERGES[type(call.layer).__name__]()


@converts("Concatenate", list_input=True)
def _concatenate(call: LayerCall) -> nn.Module:
    _same_rank(call)
    return Concatenate(call.torch_dim(int(call.config["axis"])))


@converts("CustomScaleLayer", list_input=True)
def _custom_scale(call: LayerCall) -> nn.Module:
    # keras.applications.inception_resnet_v2.CustomScaleLayer: inputs[0] + inputs[1] * scale.
    _same_rank(call)
    return ScaleAdd(float(call.config["scale"]))


_OPS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Divide": "divide", "TrueDivide": "divide"}


def _constant(call: LayerCall, value: Any) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    size = getattr(value, "size", None)
    if size == 1 and getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
        return float(value.reshape(-1)[0])
    raise unsupported(call, f"an operand {value!r} that is neither a tensor of the model nor a scalar is not supported")


def _two_tensors(call: LayerCall) -> bool:
    return len(call.node.args) == 2 and all(isinstance(a, TensorArg) for a in call.node.args)


@converts(*(OPS_PREFIX + name for name in _OPS), list_input=_two_tensors)
def _arithmetic(call: LayerCall) -> nn.Module:
    op = _OPS[type(call.layer).__name__]
    args = call.node.args
    if len(args) != 2 or call.node.kwargs:
        raise unsupported(call, f"a call with arguments {args} {call.node.kwargs} is not supported")
    if _two_tensors(call):
        _same_rank(call)
        return {"add": Add, "subtract": Subtract, "multiply": Multiply, "divide": Divide}[op]()
    if isinstance(args[0], TensorArg) == isinstance(args[1], TensorArg):
        raise unsupported(call, "an operation on two constants is not supported")
    reverse = not isinstance(args[0], TensorArg)
    return Arithmetic(op, _constant(call, args[0] if reverse else args[1]), reverse=reverse)


@converts(OPS_PREFIX + "Maximum", OPS_PREFIX + "Minimum", list_input=True)
def _extremum(call: LayerCall) -> nn.Module:
    if not _two_tensors(call):
        raise unsupported(call, "only the maximum/minimum of two tensors of the model is supported")
    _same_rank(call)
    return Maximum() if type(call.layer).__name__ == "Maximum" else Minimum()
