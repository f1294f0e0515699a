"""``convert``: a Keras Sequential or Functional model as a torch module, weights included (the
conversion behind ``from_keras``, which can also verify it).

``convert`` walks the layer graph (``graph.keras_graph``), builds one torch module per Keras
layer or operation with the converter of its class (``converters``), and writes a ``torch.fx``
graph calling those modules in Keras' execution order. ``plan`` decides, before any module is
built, the model's data format and where a Flatten keeps torch's feature order.
"""
import keyword
import operator
import re
from typing import Any, Dict, FrozenSet, List, Mapping, Set, Tuple

import torch
import torch.fx
from torch import nn

from .backend import import_keras
from .converters import CONVERTERS, OPS_PREFIX, Converter, LayerCall, unsupported
from .converters.registry import freeze_if_untrainable
from .graph import GraphNode, KerasGraph, TensorArg, keras_graph
from .plan import check_layer, flatten_plan, model_data_format, model_dtype

__all__ = ["KerasModel", "convert"]


class KerasModel(torch.fx.GraphModule):
    """The ``torch.fx.GraphModule`` ``from_keras`` returns: its ``forward`` takes the Keras inputs,
    positionally in Keras' order or by name; a model with several inputs also takes them as one
    dict keyed by the Keras names (``model({"image": x, "meta": m})``), as Keras does."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            inputs = args[0]
            names = [(n.meta.get("keras_input", n.target), n.target) for n in self.graph.nodes if n.op == "placeholder"]
            unknown = sorted(set(inputs) - {keras_name for keras_name, _ in names})
            if unknown:
                raise TypeError(
                    f"Invalid inputs. Expected a dict keyed by the model's inputs "
                    f"{[keras_name for keras_name, _ in names]}. Received unknown keys {unknown}."
                )
            kwargs = {target: inputs[keras_name] for keras_name, target in names if keras_name in inputs}
            args = ()
        return super().__call__(*args, **kwargs)


# Names a submodule of the converted GraphModule cannot take (its attributes and methods).
_RESERVED_NAMES = frozenset(dir(KerasModel)) | frozenset(vars(nn.Module())) | {"meta", "graph"}


def _identifier(name: str, taken: Set[str], reserved: FrozenSet[str] = _RESERVED_NAMES) -> str:
    """A Keras name as a Python identifier that clashes with no ``reserved`` nor taken name."""
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit() or ident in reserved or keyword.iskeyword(ident):
        ident = "layer_" + ident
    base, i = ident, 1
    while ident in taken:
        ident, i = f"{base}_{i}", i + 1
    taken.add(ident)
    return ident


def _converter(keras: Any, layer: Any) -> Converter:
    """The converter of ``layer``'s class: only Keras' own classes, never a subclass of them."""
    cls = type(layer)
    key = cls.__name__ if isinstance(layer, keras.layers.Layer) else OPS_PREFIX + cls.__name__
    converter = CONVERTERS.get(key)
    if converter is None or not cls.__module__.startswith("keras."):
        if cls.__name__ == "Lambda":
            why = "a Lambda layer runs arbitrary Python code, which cannot be converted exactly"
        elif not cls.__module__.startswith("keras."):
            why = f"custom layer class {cls.__module__}.{cls.__name__} is not supported (its call() is Python code)"
        else:
            why = "not supported"
        raise unsupported(layer, f"{why}; from_keras converts {supported_layers()}")
    return converter


def supported_layers() -> str:
    """The Keras layers and operations ``from_keras`` converts, for messages and docs."""
    layers = sorted(k for k in CONVERTERS if not k.startswith(OPS_PREFIX))
    ops = sorted(k[len(OPS_PREFIX):] for k in CONVERTERS if k.startswith(OPS_PREFIX))
    return (
        f"the layers InputLayer, {', '.join(layers)}, nested Sequential/Functional models, and the "
        f"operations keras.ops.{{{', '.join(ops)}}}"
    )


class _Builder:
    """Writes the fx graph of one Keras model (nested models get a builder of their own)."""

    def __init__(self, keras: Any, source: KerasGraph, channels_first: bool) -> None:
        self.keras, self.source, self.channels_first = keras, source, channels_first
        self.graph = torch.fx.Graph()
        self.env: Dict[int, torch.fx.Node] = {}
        self.modules: Dict[str, nn.Module] = {}
        self.names: Dict[int, str] = {}
        self.taken: Set[str] = set()
        self.nested: Dict[int, KerasGraph] = {}
        self.flatten, self.permutations = flatten_plan(keras, source, channels_first)

    def inputs(self) -> None:
        for entry in self.source.inputs:
            if len(entry.shape) not in (2, 4):
                raise ValueError(
                    f"from_keras: input {entry.name!r} of shape {entry.shape} is not supported: only "
                    f"images (N, H, W, C) (or (N, C, H, W) in a channels_first model) and vectors "
                    f"(N, F) are."
                )
            # An argument of forward: only `self` and keywords are off limits.
            placeholder = self.graph.placeholder(_identifier(entry.name, self.taken, frozenset({"self"})))
            placeholder.meta["keras_input"] = entry.name
            self.env[entry.tensor] = placeholder

    def module_for(self, node: GraphNode) -> Tuple[str, Converter]:
        layer = node.layer
        converter = None if isinstance(layer, self.keras.Model) else _converter(self.keras, layer)
        if id(layer) not in self.names:
            if converter is None:
                module, self.nested[id(layer)] = _convert(self.keras, layer, self.channels_first)
            else:
                check_layer(self.keras, layer, node)
                config = layer.get_config() if isinstance(layer, self.keras.layers.Layer) else {}
                call = LayerCall(
                    self.keras, layer, config, node, self.channels_first,
                    self.permutations.get(id(layer)), self.flatten.get(id(layer), (True, ())),
                )
                module = freeze_if_untrainable(call, converter.build(call))
            name = _identifier(layer.name, self.taken)
            self.modules[name], self.names[id(layer)] = module, name
        return self.names[id(layer)], converter

    def call(self, node: GraphNode) -> None:
        name, converter = self.module_for(node)
        tensors = [self.env[t] for t in node.inputs]
        if converter is None:
            out = self.graph.call_module(name, tuple(self._nested_args(node, tensors)))
        elif converter.takes_list(LayerCall(self.keras, node.layer, {}, node, self.channels_first)):
            out = self.graph.call_module(name, (tensors,))
        else:
            out = self.graph.call_module(name, (tensors[0],))
        out.meta["keras_layer"] = node.layer.name
        out.meta["keras_class"] = type(node.layer).__name__
        self._outputs(node, out)

    def _nested_args(self, node: GraphNode, tensors: List[torch.fx.Node]) -> List[torch.fx.Node]:
        """A nested model's inputs, positionally in its own input order."""
        inner = self.nested[id(node.layer)]
        structure = node.args[0] if node.args else None
        if isinstance(structure, dict):
            return [tensors[structure[entry.name].index] for entry in inner.inputs]
        if isinstance(structure, (list, tuple)) and all(isinstance(a, TensorArg) for a in structure):
            return [tensors[a.index] for a in structure]
        return tensors

    def _outputs(self, node: GraphNode, out: torch.fx.Node) -> None:
        inner = self.nested.get(id(node.layer))
        if len(node.outputs) == 1:
            self.env[node.outputs[0]] = out
            return
        # Keras lists a nested model's outputs flat (a dict's keys sorted).
        keys = sorted(inner.output_keys) if inner is not None and inner.output_keys else range(len(node.outputs))
        for tensor, key in zip(node.outputs, keys):
            self.env[tensor] = self.graph.call_function(operator.getitem, (out, key))

    def finish(self) -> "KerasModel":
        outputs = [self.env[t] for t in self.source.outputs]
        if self.source.output_keys is not None:
            self.graph.output(dict(zip(self.source.output_keys, outputs)))
        elif self.source.output_sequence:
            self.graph.output(tuple(outputs))
        else:
            self.graph.output(outputs[0])
        return KerasModel(self.modules, self.graph, class_name="KerasModel")


def _convert(keras: Any, model: Any, channels_first: bool) -> Tuple[KerasModel, KerasGraph]:
    source = keras_graph(keras, model)
    builder = _Builder(keras, source, channels_first)
    builder.inputs()
    for node in source.nodes:
        builder.call(node)
    return builder.finish(), source


def convert(keras_model: Any) -> KerasModel:
    """``from_keras`` without its optional check against Keras (``verify``, which uses this).

    Returns:
        The ``KerasModel`` in eval mode.
    """
    keras = import_keras()
    if not isinstance(keras_model, keras.Model):
        raise TypeError(
            f"Invalid type for argument `keras_model`. Expected a keras.Model (Sequential or "
            f"Functional). Received an object of type {type(keras_model).__name__}."
        )
    channels_first = model_data_format(keras, keras_model) == "channels_first"
    # Modules are built in the model's dtype, so float64 weights load without a float32 detour.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(model_dtype(keras, keras_model))
    try:
        module, _ = _convert(keras, keras_model, channels_first)
    finally:
        torch.set_default_dtype(previous)
    return module.eval()
