"""The layer graph of a Keras 3 Sequential or Functional model, read in one place.

Keras 3 has no public API for a model's graph: a built ``Sequential`` wraps a ``Functional`` in
``_functional``, the ``Functional`` keeps its nodes in ``_nodes_by_depth`` (Keras itself runs them
deepest first), and each symbolic tensor names the layer that made it in ``_keras_history``. This
module is the only code in torchblocks that touches those private attributes: ``keras_graph``
turns them into plain records, after checking the Keras version against the ones this release
admits, so that a Keras release that moves them breaks here with one clear message.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

# Keras releases whose private graph attributes this module reads (setup.cfg admits keras 3.x).
SUPPORTED_MAJOR = 3
TESTED_VERSION = "3.15"

Shape = Tuple[Optional[int], ...]


@dataclass(frozen=True)
class GraphInput:
    """One model input: its symbolic tensor's id, the ``InputLayer`` name and the Keras shape."""

    tensor: int
    name: str
    shape: Shape


@dataclass(frozen=True)
class GraphNode:
    """One call of a layer: the layer, the ids of the tensors it reads and writes, and the input shapes."""

    layer: Any
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    input_shapes: Tuple[Shape, ...]


@dataclass(frozen=True)
class KerasGraph:
    """A model's layer calls in an execution order, with its inputs and output tensor ids."""

    inputs: List[GraphInput]
    nodes: List[GraphNode]
    outputs: List[int]


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
            f"from_keras: model {model.name!r} of class {type(model).__name__} is subclassed; only "
            f"Sequential and Functional models have a graph to convert."
        )
    if not hasattr(functional, "_nodes_by_depth"):
        raise NotImplementedError(
            f"from_keras: keras {keras.__version__} keeps no `_nodes_by_depth` on Functional models "
            f"(tested with {TESTED_VERSION}); this Keras release is not supported."
        )
    return functional


def keras_graph(keras: Any, model: Any) -> KerasGraph:
    """The layer graph of a Keras ``Sequential`` or ``Functional`` ``model``.

    Nodes come deepest first (an execution order: Keras runs them so) and, within a depth, in
    ``model.layers`` order, so that converted submodules register in ``model.layers`` order.

    Raises:
        ValueError: a subclassed model, or a ``Sequential`` without an input shape.
        NotImplementedError: a Keras release whose graph attributes this module does not know.
    """
    _check_version(keras)
    functional = _functional(keras, model)
    order: Dict[int, int] = {id(layer): i for i, layer in enumerate(functional.layers)}
    by_depth = functional._nodes_by_depth
    nodes: List[GraphNode] = []
    for depth in sorted(by_depth, reverse=True):
        for node in sorted(by_depth[depth], key=lambda n: order.get(id(n.operation), len(order))):
            if node.operation is None or node.is_input:
                continue
            nodes.append(GraphNode(
                node.operation,
                tuple(id(t) for t in node.input_tensors),
                tuple(id(t) for t in node.outputs),
                tuple(tuple(t.shape) for t in node.input_tensors),
            ))
    inputs = [
        GraphInput(id(t), t._keras_history.operation.name, tuple(t.shape)) for t in functional.inputs
    ]
    return KerasGraph(inputs, nodes, [id(t) for t in functional.outputs])
