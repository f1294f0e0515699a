"""The layer graph of a Keras 3 Sequential or Functional model, read in one place.

Keras 3 has no public API for a model's graph: a built ``Sequential`` wraps a ``Functional`` in
``_functional``, the ``Functional`` keeps its nodes in ``_nodes_by_depth`` (Keras itself runs them
deepest first), each node keeps the arguments of its call in ``arguments``, and each symbolic
tensor names the layer that made it in ``_keras_history``. This module is the only code in
torchblocks that touches those private attributes: ``keras_graph`` turns them into plain records,
after checking the Keras version against the ones this release admits, so that a Keras release
that moves them breaks here with one clear message.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

# Keras releases whose private graph attributes this module reads (setup.cfg admits keras 3.x).
SUPPORTED_MAJOR = 3
TESTED_VERSION = "3.15"

Shape = Tuple[Optional[int], ...]


@dataclass(frozen=True)
class GraphInput:
    """One model input: its symbolic tensor's id, its name (the key of a dict input, else the
    ``InputLayer`` name) and the Keras shape."""

    tensor: int
    name: str
    shape: Shape


@dataclass(frozen=True)
class TensorArg:
    """A symbolic tensor among a call's arguments: the ``index``-th of the node's inputs."""

    index: int


@dataclass(frozen=True)
class GraphNode:
    """One call of a layer or operation: what it is, the ids of the tensors it reads and writes,
    their shapes, and the call's arguments with each symbolic tensor replaced by a ``TensorArg``."""

    layer: Any
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    input_shapes: Tuple[Shape, ...]
    output_shapes: Tuple[Shape, ...]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]


@dataclass(frozen=True)
class KerasGraph:
    """A model's calls in an execution order, with its inputs and outputs.

    ``outputs`` lists the output tensor ids: for a dict output in the order of its keys as written,
    which ``output_keys`` holds (Keras' own flat order sorts them); ``output_sequence`` says whether
    the outputs form a list or tuple of more than one.
    ``operations`` lists every layer and operation in the model's own order (``model.layers``
    with Keras operations such as ``x + 3.0`` in between).
    """

    inputs: List[GraphInput]
    nodes: List[GraphNode]
    outputs: List[int]
    output_keys: Optional[Tuple[str, ...]]
    output_sequence: bool
    operations: List[Any]


def _check_version(keras: Any) -> None:
    major = str(getattr(keras, "__version__", "0")).split(".")[0]
    if major != str(SUPPORTED_MAJOR):
        raise NotImplementedError(
            f"from_keras reads the layer graph of Keras {SUPPORTED_MAJOR}.x models (tested with "
            f"{TESTED_VERSION}); found keras {keras.__version__}. Install keras>=3,<4."
        )


def _functional(keras: Any, model: Any) -> Any:
    """The ``Functional`` holding ``model``'s graph, or a clear error for models without one."""
    functional = model
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"from_keras: Sequential model {model.name!r} has no input shape; start it with "
                f"keras.Input(shape) or call build() first."
            )
    if not isinstance(functional, keras.Model) or type(functional).__name__ not in ("Functional", "Sequential"):
        raise ValueError(
            f"from_keras: model {model.name!r} of class {type(model).__name__} is subclassed: its "
            f"call() is Python code, not a graph of layers. Only Sequential and Functional models "
            f"can be converted; rebuild it with keras.Input and layer calls."
        )
    if not hasattr(functional, "_nodes_by_depth"):
        raise NotImplementedError(
            f"from_keras: keras {keras.__version__} keeps no `_nodes_by_depth` on Functional models "
            f"(tested with {TESTED_VERSION}); this Keras release is not supported."
        )
    return functional


def _template(value: Any, positions: Dict[int, int], keras: Any) -> Any:
    """``value`` with every symbolic tensor replaced by its ``TensorArg``."""
    if isinstance(value, keras.KerasTensor):
        return TensorArg(positions[id(value)])
    if isinstance(value, (list, tuple)):
        return type(value)(_template(v, positions, keras) for v in value)
    if isinstance(value, dict):
        return {k: _template(v, positions, keras) for k, v in value.items()}
    return value


def _node(keras: Any, node: Any) -> GraphNode:
    inputs = list(node.input_tensors)
    positions = {id(t): i for i, t in enumerate(inputs)}
    arguments = node.arguments
    return GraphNode(
        node.operation,
        tuple(id(t) for t in inputs),
        tuple(id(t) for t in node.outputs),
        tuple(tuple(t.shape) for t in inputs),
        tuple(tuple(t.shape) for t in node.outputs),
        tuple(_template(a, positions, keras) for a in arguments.args),
        {k: _template(v, positions, keras) for k, v in arguments.kwargs.items()},
    )


def _inputs(keras: Any, functional: Any) -> List[GraphInput]:
    struct = functional.input
    if isinstance(struct, dict):
        return [GraphInput(id(t), str(key), tuple(t.shape)) for key, t in struct.items()]
    return [
        GraphInput(id(t), t._keras_history.operation.name, tuple(t.shape)) for t in functional.inputs
    ]


def keras_graph(keras: Any, model: Any) -> KerasGraph:
    """The layer graph of a Keras ``Sequential`` or ``Functional`` ``model``.

    Nodes come deepest first (an execution order: Keras runs them so) and, within a depth, in the
    model's own order, so that converted submodules register in ``model.layers`` order. Inputs come
    in the order of the model's ``input``: its list, or the keys of its dict as written.

    Raises:
        ValueError: a subclassed model, or a ``Sequential`` without an input shape.
        NotImplementedError: a Keras release whose graph attributes this module does not know.
    """
    _check_version(keras)
    functional = _functional(keras, model)
    operations = list(getattr(functional, "operations", functional.layers))
    order: Dict[int, int] = {id(op): i for i, op in enumerate(operations)}
    by_depth = functional._nodes_by_depth
    nodes: List[GraphNode] = []
    for depth in sorted(by_depth, reverse=True):
        for node in sorted(by_depth[depth], key=lambda n: order.get(id(n.operation), len(order))):
            if node.operation is None or node.is_input:
                continue
            nodes.append(_node(keras, node))
    outputs = functional.output
    keys = tuple(str(k) for k in outputs) if isinstance(outputs, dict) else None
    return KerasGraph(
        _inputs(keras, functional),
        nodes,
        [id(t) for t in outputs.values()] if keys is not None else [id(t) for t in functional.outputs],
        keys,
        keys is None and isinstance(outputs, (list, tuple)) and len(functional.outputs) > 1,
        [op for op in operations if not isinstance(op, keras.layers.InputLayer)],
    )
