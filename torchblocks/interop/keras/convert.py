"""``from_keras``: a Keras Sequential or Functional model as a torch module, weights included.

Each Keras layer class has one converter in ``CONVERTERS`` (keyed by the class name, matched on
Keras' own classes only), which builds the torch module for one layer; ``from_keras`` walks the
layer graph (``graph.keras_graph``) and writes a ``torch.fx`` graph calling those modules.
"""
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.fx
from torch import nn

from ...activations import get_activation
from ...conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from ...linear import Dense
from ...norm import BatchNorm
from ...pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from .backend import import_keras
from .graph import GraphNode, keras_graph
from .layers import Add, Flatten
from .sources import KerasRecord, record_from_layer
from .verify import checked
from .weights import Staged, TorchUnit, stage_pair

__all__ = ["from_keras"]


@dataclass
class LayerCall:
    """What a converter knows about the Keras layer it converts."""

    keras: Any
    layer: Any
    config: Dict[str, Any]
    input_shapes: List[Tuple[Optional[int], ...]]
    permutation: Optional[np.ndarray]  # reorders a Dense/BN input's features (after a Flatten)
    flatten_channels_last: bool  # for a Flatten: flatten in Keras' (h, w, c) order

    @property
    def rank(self) -> int:
        return len(self.input_shapes[0])


@dataclass(frozen=True)
class Converter:
    """Builds the torch module of one Keras layer; ``list_input`` layers take a list of tensors."""

    build: Callable[[LayerCall], nn.Module]
    list_input: bool = False


CONVERTERS: Dict[str, Converter] = {}


def converts(*class_names: str, list_input: bool = False) -> Callable:
    """Register the decorated function as the converter of the Keras classes ``class_names``."""

    def register(build: Callable[[LayerCall], nn.Module]) -> Callable[[LayerCall], nn.Module]:
        for name in class_names:
            CONVERTERS[name] = Converter(build, list_input)
        return build

    return register


def _unsupported(layer: Any, why: str) -> ValueError:
    return ValueError(f"from_keras: layer {layer.name!r} of class {type(layer).__name__}: {why}.")


def _channels_last(call: LayerCall) -> None:
    data_format = call.config.get("data_format", "channels_last")
    if data_format != "channels_last":
        raise _unsupported(call.layer, f"data_format={data_format!r} is not supported (only channels_last)")


def _activation(call: LayerCall) -> Optional[str]:
    name = call.config.get("activation")
    if name is None:
        return None
    if not isinstance(name, str):
        raise _unsupported(call.layer, f"activation {name!r} is not a built-in Keras activation")
    try:
        get_activation(name)
    except ValueError as exc:
        raise _unsupported(call.layer, f"activation {name!r} is not supported") from exc
    return name


def _load_into(module: nn.Module, record: KerasRecord) -> nn.Module:
    """Stage and apply one converted layer's weights, through the same checks as loading."""
    staged = Staged()
    stage_pair(staged, record, TorchUnit("", record.kind, module))
    if staged.problems:
        raise ValueError("from_keras: " + "; ".join(staged.problems))
    staged.apply()
    return module


def _conv_arguments(call: LayerCall) -> Dict[str, Any]:
    _channels_last(call)
    config = call.config
    return dict(
        kernel_size=tuple(config["kernel_size"]), stride=tuple(config["strides"]),
        padding=config["padding"], dilation=tuple(config["dilation_rate"]),
        bias=config["use_bias"], activation=_activation(call),
    )


@converts("Conv2D")
def _conv(call: LayerCall) -> nn.Module:
    common = _conv_arguments(call)
    record = record_from_layer(call.keras, call.layer)
    groups = call.config["groups"]
    channels = record.arrays["kernel"].shape[2] * groups
    return _load_into(Conv2d(channels, call.config["filters"], groups=groups, **common), record)


@converts("DepthwiseConv2D")
def _depthwise(call: LayerCall) -> nn.Module:
    common = _conv_arguments(call)
    record = record_from_layer(call.keras, call.layer)
    channels = record.arrays["kernel"].shape[2]
    module = DepthwiseConv2d(channels, depth_multiplier=call.config["depth_multiplier"], **common)
    return _load_into(module, record)


@converts("SeparableConv2D")
def _separable(call: LayerCall) -> nn.Module:
    common = _conv_arguments(call)
    record = record_from_layer(call.keras, call.layer)
    channels = record.arrays["depthwise_kernel"].shape[2]
    module = SeparableConv2d(
        channels, call.config["filters"], depth_multiplier=call.config["depth_multiplier"], **common
    )
    return _load_into(module, record)


@converts("BatchNormalization")
def _batch_norm(call: LayerCall) -> nn.Module:
    config, rank = call.config, call.rank
    axis = config["axis"]
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1 or axes[0] % rank != rank - 1:
        raise _unsupported(call.layer, f"axis={axis} is not the channel axis (-1) of a rank-{rank} input")
    record = record_from_layer(call.keras, call.layer)
    if call.permutation is not None:
        record.arrays = {k: v[call.permutation] for k, v in record.arrays.items()}
    features = record.arrays["moving_mean"].shape[0]
    module = BatchNorm(features, axis=1, eps=float(config["epsilon"]), momentum=1.0 - float(config["momentum"]))
    _load_into(module, record)
    for role, parameter in (("gamma", module.bn.weight), ("beta", module.bn.bias)):
        if role not in record.arrays:
            parameter.requires_grad_(False)  # Keras has no such parameter: keep it fixed
    return module


@converts("Dense")
def _dense(call: LayerCall) -> nn.Module:
    config, rank = call.config, call.rank
    record = record_from_layer(call.keras, call.layer)
    kernel = record.arrays["kernel"]
    if call.permutation is not None:
        record.arrays["kernel"] = kernel[call.permutation]
    act = _activation(call)
    if rank == 4:
        # Dense on an NHWC map acts on C: a 1×1 convolution on NCHW.
        record.arrays["kernel"] = kernel[None, None]
        record.kind, record.config = "conv", None
        module: nn.Module = Conv2d(kernel.shape[0], kernel.shape[1], 1, bias=config["use_bias"], activation=act)
    elif rank == 2:
        module = Dense(kernel.shape[0], kernel.shape[1], bias=config["use_bias"], activation=act)
    else:
        raise _unsupported(call.layer, f"a rank-{rank} input is not supported (only 2 or 4)")
    return _load_into(module, record)


@converts("Activation")
def _activation_layer(call: LayerCall) -> nn.Module:
    return get_activation(_activation(call))


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
    raise _unsupported(
        call.layer, f"ReLU(max_value={max_value}, negative_slope={slope}, threshold={threshold}) is not supported"
    )


@converts("Add", list_input=True)
def _add(call: LayerCall) -> nn.Module:
    if len({len(s) for s in call.input_shapes}) != 1:
        raise _unsupported(call.layer, f"inputs of different ranks {call.input_shapes} are not supported")
    return Add()


@converts("MaxPooling2D", "AveragePooling2D")
def _pooling(call: LayerCall) -> nn.Module:
    _channels_last(call)
    pool = MaxPool2d if type(call.layer).__name__ == "MaxPooling2D" else AvgPool2d
    return pool(tuple(call.config["pool_size"]), tuple(call.config["strides"]), call.config["padding"])


@converts("GlobalAveragePooling2D")
def _global_average(call: LayerCall) -> nn.Module:
    _channels_last(call)
    return GlobalAvgPool2d(bool(call.config["keepdims"]))


@converts("Flatten")
def _flatten(call: LayerCall) -> nn.Module:
    _channels_last(call)
    if call.rank not in (2, 4):
        raise _unsupported(call.layer, f"a rank-{call.rank} input is not supported (only 2 or 4)")
    return Flatten(call.flatten_channels_last)


@converts("Dropout")
def _dropout(call: LayerCall) -> nn.Module:
    if call.config.get("noise_shape") is not None:
        raise _unsupported(call.layer, "noise_shape is not supported")
    return nn.Dropout(float(call.config["rate"]))


@converts("ZeroPadding2D")
def _zero_padding(call: LayerCall) -> nn.Module:
    _channels_last(call)
    (top, bottom), (left, right) = call.config["padding"]
    return nn.ZeroPad2d((left, right, top, bottom))


def _supported() -> str:
    return "InputLayer, " + ", ".join(sorted(CONVERTERS)) + ", nested Sequential/Functional models"


def _convert_layer(call: LayerCall) -> nn.Module:
    """The torch module for one Keras layer: a nested model, or its class's converter."""
    if isinstance(call.layer, call.keras.Model):
        return from_keras(call.layer)
    return _converter(call.keras, call.layer).build(call)


def _converter(keras: Any, layer: Any) -> Converter:
    """The converter of ``layer``'s class; only Keras' own classes, never a subclass of them."""
    cls = type(layer)
    converter = CONVERTERS.get(cls.__name__)
    if converter is None or not cls.__module__.startswith("keras."):
        raise _unsupported(layer, f"not supported; from_keras converts {_supported()}")
    return converter


# Names a submodule of the converted GraphModule cannot take (its attributes and methods).
_RESERVED_NAMES = frozenset(dir(torch.fx.GraphModule)) | frozenset(vars(nn.Module())) | {"meta", "graph"}


def _module_name(name: str, taken: Set[str]) -> str:
    """A Keras layer name as a submodule name (Python identifier, no clash with module attributes)."""
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit() or ident in _RESERVED_NAMES:
        ident = "layer_" + ident
    base, i = ident, 1
    while ident in taken:
        ident, i = f"{base}_{i}", i + 1
    taken.add(ident)
    return ident


def _flatten_plan(
    keras: Any, nodes: Sequence[GraphNode], output_ids: Set[int]
) -> Tuple[Dict[int, bool], Dict[int, np.ndarray]]:
    """For each Flatten layer on a 4-D map: keep torch's (c, h, w) order and permute the rows of
    the Dense (and BN) layers it feeds, or, where its features reach anything else, flatten in
    Keras' (h, w, c) order. Returns (flatten layer id -> channels_last, layer id -> permutation)."""
    L = keras.layers
    consumers: Dict[int, List[GraphNode]] = {}
    node_count: Dict[int, int] = {}
    for node in nodes:
        node_count[id(node.layer)] = node_count.get(id(node.layer), 0) + 1
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(node)
    channels_last: Dict[int, bool] = {}
    permutations: Dict[int, np.ndarray] = {}
    for node in nodes:
        layer = node.layer
        if not isinstance(layer, L.Flatten) or len(node.input_shapes[0]) != 4:
            continue
        _, h, w, c = node.input_shapes[0]
        targets = _permutable_consumers(L, node.outputs[0], consumers, output_ids)
        ok = (
            targets is not None
            and None not in (h, w, c)
            and node_count[id(layer)] == 1
            and all(node_count[id(t)] == 1 and id(t) not in permutations for t in targets)
        )
        channels_last[id(layer)] = not ok
        if ok:
            # torch feature f = (c, h, w) is Keras feature index[f] = (h, w, c).
            index = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
            for target in targets:
                permutations[id(target)] = index
    return channels_last, permutations


def _permutable_consumers(
    L: Any, tensor: int, consumers: Dict[int, List[GraphNode]], output_ids: Set[int]
) -> Optional[List[Any]]:
    """Dense/BN layers fed by ``tensor`` through feature-wise layers, or None if it reaches others."""
    found: List[Any] = []
    stack = [tensor]
    while stack:
        current = stack.pop()
        if current in output_ids:
            return None
        for node in consumers.get(current, []):
            layer = node.layer
            if isinstance(layer, L.Dense):
                found.append(layer)
            elif isinstance(layer, (L.BatchNormalization, L.Activation, L.ReLU, L.Dropout)):
                if isinstance(layer, L.BatchNormalization):
                    found.append(layer)
                stack.append(node.outputs[0])
            else:
                return None
    return found


def from_keras(keras_model: Any, verify: Any = None) -> torch.fx.GraphModule:
    """Convert a Keras Sequential or Functional model into a torchblocks module, weights included.

    The result takes (N, C, H, W) input where Keras took (N, H, W, C) (2-D (N, F) inputs are
    unchanged) and reproduces the Keras model's outputs exactly, including a final softmax
    (train with ``nn.NLLLoss`` on its log, or drop it for ``nn.CrossEntropyLoss``); feature-map
    outputs come back as (N, C, H, W). Keras ``Flatten`` orders features (h, w, c): the converted
    model flattens (c, h, w) and permutes the rows of the ``Dense``/``BatchNormalization`` layers
    it feeds, or flattens in Keras order where its features reach anything else.

    Supported layers: the keys of ``CONVERTERS`` (InputLayer, Conv2D, DepthwiseConv2D,
    SeparableConv2D, BatchNormalization on the channel axis, Dense, Activation, ReLU, Add,
    MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Dropout, ZeroPadding2D) and
    nested Sequential/Functional models; anything else raises ``ValueError`` naming the layer and
    its class.

    With ``verify=inputs`` (in the converted module's layout, as ``verify`` takes them) the result
    is checked layer by layer first; a conversion that is not exact raises ``VerificationError``
    (a ``ValueError``) whose message is the per-layer table, naming the first divergent layer.

    Returns:
        A ``torch.fx.GraphModule`` (class name ``KerasModel``): a static execution plan whose
        submodules are named after the Keras layers and registered in ``model.layers`` order,
        so ``load_keras_weights(result, keras_model)`` matches it. Each ``call_module`` node
        records its Keras layer in ``node.meta["keras_layer"]`` (name) and
        ``node.meta["keras_class"]``. It is scriptable with ``torch.jit.script`` and traceable
        with ``torch.fx``/``torch.export``.
    """
    keras = import_keras()
    if not isinstance(keras_model, keras.Model):
        raise TypeError(
            f"Invalid type for argument `keras_model`. Expected a keras.Model. Received an object of "
            f"type {type(keras_model).__name__}."
        )
    source = keras_graph(keras, keras_model)
    flatten_channels_last, permutations = _flatten_plan(keras, source.nodes, set(source.outputs))

    graph = torch.fx.Graph()
    env: Dict[int, torch.fx.Node] = {}
    taken: Set[str] = set()
    for entry in source.inputs:
        if len(entry.shape) not in (2, 4):
            raise ValueError(
                f"from_keras: input {entry.name!r} of shape {entry.shape} is not supported "
                f"(only (N, H, W, C) images and (N, F) vectors)."
            )
        env[entry.tensor] = graph.placeholder(_module_name(entry.name, taken))
    modules: Dict[str, nn.Module] = {}
    names: Dict[int, str] = {}
    for node in source.nodes:
        layer = node.layer
        if id(layer) not in names:
            call = LayerCall(
                keras, layer, layer.get_config(), list(node.input_shapes), permutations.get(id(layer)),
                flatten_channels_last.get(id(layer), True),
            )
            name = _module_name(layer.name, taken)
            modules[name] = _convert_layer(call)
            names[id(layer)] = name
        args = [env[t] for t in node.inputs]
        list_input = not isinstance(layer, keras.Model) and _converter(keras, layer).list_input
        out = graph.call_module(names[id(layer)], (args,) if list_input else (args[0],))
        out.meta["keras_layer"] = layer.name
        out.meta["keras_class"] = type(layer).__name__
        for tensor in node.outputs:
            env[tensor] = out
    outputs = [env[t] for t in source.outputs]
    graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    return checked(keras_model, torch.fx.GraphModule(modules, graph, class_name="KerasModel"), verify)
