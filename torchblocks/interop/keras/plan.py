"""Decisions ``from_keras`` takes for a whole model before building modules: its data format, the
checks every layer must pass, and where a Flatten keeps torch's feature order.

A Keras ``Flatten`` on a channels-last map orders features (h, w, c); torch flattens an
(N, C, H, W) tensor (c, h, w). Where the flattened features reach only Dense and
BatchNormalization layers (through element-wise layers), the converted model flattens in torch's
order and those layers get their rows permuted (``flatten_permutation``); elsewhere it flattens in
Keras' order. ``load_keras_weights`` applies the same permutation, read from the converted module.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from .converters.reshaping import flatten_reorders
from .graph import GraphNode, KerasGraph

# Layers a Flatten's features may pass through on their way to the Dense/BN layers whose rows are
# permuted: each acts on every feature alike, so permuting its input permutes its output.
_FEATUREWISE = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "Identity")
_TARGETS = ("Dense", "BatchNormalization")


def _spatial_formats(keras: Any, model: Any, found: Dict[str, str]) -> None:
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model):
            _spatial_formats(keras, layer, found)
            continue
        if type(layer).__name__ == "Flatten":
            continue  # its data_format only orders features, handled by the flatten plan
        data_format = getattr(layer, "data_format", None)
        if data_format in ("channels_last", "channels_first"):
            found.setdefault(data_format, layer.name)


def model_data_format(keras: Any, model: Any) -> str:
    """'channels_first' or 'channels_last': the one data format of the model's spatial layers
    (channels_last for a model without any). Mixed models are refused."""
    found: Dict[str, str] = {}
    _spatial_formats(keras, model, found)
    if len(found) > 1:
        raise ValueError(
            f"from_keras: model {model.name!r} mixes data formats: layer {found['channels_last']!r} is "
            f"channels_last and layer {found['channels_first']!r} channels_first; convert a model that "
            f"uses one data format throughout."
        )
    return next(iter(found), "channels_last")


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _all_layers(keras: Any, model: Any) -> List[Any]:
    found: List[Any] = []
    for layer in getattr(model, "layers", []):
        found.extend(_all_layers(keras, layer) if isinstance(layer, keras.Model) else [layer])
    return found


def model_dtype(keras: Any, model: Any) -> torch.dtype:
    """The one floating dtype of the model's layers (float32 or float64); others are refused."""
    layers = [layer for layer in _all_layers(keras, model) if not isinstance(layer, keras.layers.InputLayer)]
    name = str(getattr(layers[0], "variable_dtype", "float32")) if layers else "float32"
    if name not in _DTYPES:
        raise _refuse(layers[0], f"dtype {name!r} is not supported (only float32 and float64 models are converted)")
    return _DTYPES[name]


def _refuse(layer: Any, why: str) -> ValueError:
    return ValueError(f"from_keras: layer {layer.name!r} of class {type(layer).__name__}: {why}.")


def check_layer(keras: Any, layer: Any, node: GraphNode) -> None:
    """What every layer (or operation) call must satisfy to be converted exactly."""
    for key, value in node.kwargs.items():
        # Keras records training=False on every symbolic call and overrides it with the model's own
        # `training`; only a call that forces training mode (Monte Carlo dropout) differs from that.
        if isinstance(layer, keras.layers.Layer) and value is not None and not (key == "training" and value is False):
            raise _refuse(
                layer, f"called with {key}={value!r}, which is not supported (the converted module runs "
                f"in training mode under .train() and in inference mode under .eval(), as a Keras model "
                f"follows its `training` argument)"
            )
    if not isinstance(layer, keras.layers.Layer):
        return
    expected = str(torch.get_default_dtype()).replace("torch.", "")  # the model's, while converting
    for attribute in ("compute_dtype", "variable_dtype"):
        dtype = str(getattr(layer, attribute, expected))
        if dtype != expected:
            raise _refuse(
                layer, f"{attribute}={dtype!r} in a {expected} model is not supported (a model converts in "
                f"one dtype, float32 or float64: no mixed precision)"
            )
    config = layer.get_config()
    for key, value in config.items():
        if value is not None and (key.endswith("_regularizer") or key.endswith("_constraint")):
            raise _refuse(
                layer, f"{key}={value!r} changes Keras' training (a loss term or a projection after each "
                f"step) in a way a torch module cannot carry; set it to None before converting, and add "
                f"it to your torch loss or optimizer step"
            )


def flatten_permutation(dims: Sequence[int]) -> np.ndarray:
    """For a flatten of a torch tensor of non-batch ``dims`` (C, ...): ``index[f]`` is the Keras
    feature (dim 1 last: (..., c)) that torch feature ``f`` ((c, ...)) holds."""
    keras_order = np.arange(math.prod(dims)).reshape(tuple(dims[1:]) + (dims[0],))
    return np.moveaxis(keras_order, -1, 0).reshape(-1)


def _torch_dims(shape: Sequence[Optional[int]], channels_first: bool) -> Tuple[Optional[int], ...]:
    dims = tuple(shape[1:])
    if len(shape) == 4 and not channels_first:
        return (dims[-1],) + dims[:-1]
    return dims


def flatten_plan(
    keras: Any, source: KerasGraph, channels_first: bool
) -> Tuple[Dict[int, Tuple[bool, Tuple[int, ...]]], Dict[int, np.ndarray]]:
    """For each Flatten whose Keras feature order differs from torch's: (channels_last,
    permuted_for), and the row permutation of each Dense/BN layer it feeds (keyed by layer id)."""
    consumers: Dict[int, List[GraphNode]] = {}
    uses: Dict[int, int] = {}
    for node in source.nodes:
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(node)
    outputs = set(source.outputs)
    flatten: Dict[int, Tuple[bool, Tuple[int, ...]]] = {}
    permutations: Dict[int, np.ndarray] = {}
    for node in source.nodes:
        layer = node.layer
        if type(layer).__name__ != "Flatten" or not isinstance(layer, keras.layers.Layer):
            continue
        shape = node.input_shapes[0]
        dims = _torch_dims(shape, channels_first)
        data_format = getattr(layer, "data_format", "channels_last")
        if not flatten_reorders(channels_first, data_format, len(shape), dims):
            continue
        targets = _permutable_consumers(node.outputs[0], consumers, outputs)
        ok = (
            targets is not None
            and None not in dims
            and uses[id(layer)] == 1
            and all(uses[id(t)] == 1 and id(t) not in permutations for t in targets)
        )
        flatten[id(layer)] = (not ok, tuple(int(d) for d in dims) if ok else ())
        if ok:
            index = flatten_permutation([int(d) for d in dims])
            for target in targets:
                permutations[id(target)] = index
    return flatten, permutations


def _permutable_consumers(
    tensor: int, consumers: Dict[int, List[GraphNode]], outputs: Set[int]
) -> Optional[List[Any]]:
    """Dense/BN layers fed by ``tensor`` through feature-wise layers, or None if it reaches others."""
    found: List[Any] = []
    stack = [tensor]
    while stack:
        current = stack.pop()
        if current in outputs:
            return None
        for node in consumers.get(current, []):
            name = type(node.layer).__name__
            if not type(node.layer).__module__.startswith("keras.src.layers"):
                return None
            if name == "Dense":
                found.append(node.layer)
            elif name in _FEATUREWISE or name == "BatchNormalization":
                if name == "BatchNormalization":
                    found.append(node.layer)
                if name == "Activation" and node.layer.get_config().get("activation") == "glu":
                    return None
                stack.append(node.outputs[0])
            else:
                return None
    return found
