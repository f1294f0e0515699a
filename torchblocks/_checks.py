"""Argument checks shared by the analysis, export and fusion entry points."""
from typing import Tuple, Union

from torch import Tensor, nn

ExampleInputs = Union[Tensor, Tuple[Tensor, ...]]


def check_module(model: object, name: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an nn.Module. "
            f"Received {name} of type {type(model).__name__}."
        )
    return model


def as_input_tuple(inputs: object, name: str = "inputs") -> Tuple[Tensor, ...]:
    """A tuple of tensors from a tensor or a non-empty tuple/list of tensors, else ``TypeError``."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return tuple(inputs)
    raise TypeError(
        f"Invalid type for argument `{name}`. Expected a Tensor or a non-empty tuple of Tensors. "
        f"Received {name} of type {type(inputs).__name__}."
    )
