"""The layer-level ``torch.fx`` view of a model that BatchNorm folding and the inference path share.

``LayerTracer`` stops at the torchblocks layers (convolutions, BatchNorms, pools, dense layers)
and traces through everything else, so a model's graph reads as the sequence of its layers.
``record_shapes`` and ``guard_layouts`` are the graph passes the channels-last inference path
needs to keep eager mode's memory formats where code depends on them.
"""
import copy
import operator
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .conv import SeparableConv2d
from .linear import Dense
from .models._layers import check_input_size
from .norm import BatchNorm
from .pooling import AvgPool2d, MaxPool2d, _check_global_input
from .residual import _check_same_shape

# Calls that read a tensor's shape only: folding keeps shapes, so they may share a conv's output.
SHAPE_ONLY_CALLS = (_check_same_shape, check_input_size, _check_global_input)


class LayerTracer(torch.fx.Tracer):
    """Stops at convolutions, BatchNorms, pools and dense layers (``leaf_types``); traces through
    everything else, including ``SeparableConv2d``, so its pointwise conv is a node of its own."""

    leaf_types: Tuple[type, ...] = (nn.Conv2d, BatchNorm, _BatchNorm, MaxPool2d, AvgPool2d, Dense)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, SeparableConv2d):
            return False
        if isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    """Replace the submodule of ``root`` at the qualified name ``target`` by ``module``."""
    parent_name, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, module)


def real_users(node: torch.fx.Node) -> List[torch.fx.Node]:
    """The nodes reading ``node``'s output, less the calls that read only its shape."""
    return [u for u in node.users if not (u.op == "call_function" and u.target in SHAPE_ONLY_CALLS)]


def trace_layers(model: nn.Module) -> Optional[Tuple[torch.fx.Graph, Dict[str, int]]]:
    """The layer-level fx graph of ``model`` and how often each submodule is called in it, or
    None when ``model`` is itself a leaf layer."""
    tracer = LayerTracer()
    if tracer.is_leaf_module(model, ""):
        return None
    graph = tracer.trace(model)
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return graph, calls


class _ShapeRecorder(torch.fx.Interpreter):
    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["shape"] = tuple(result.shape) if isinstance(result, Tensor) else None
        n.meta["dtype"] = result.dtype if isinstance(result, Tensor) else None
        return result


def _on_meta(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of ``module`` whose parameters and buffers are meta tensors (shapes, no data)."""
    memo: Dict[int, Any] = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def record_shapes(module: torch.fx.GraphModule, inputs: Tuple[Tensor, ...]) -> None:
    """Store each node's output shape and dtype in ``node.meta["shape"]`` and
    ``node.meta["dtype"]`` (None where the value is not a tensor), running ``module`` on
    ``inputs``: on the meta device, which computes shapes only, and where some op of the model
    has no meta implementation, for real."""
    try:
        meta = _on_meta(module)
        with torch.no_grad():
            _ShapeRecorder(meta).run(*(x.to("meta") for x in inputs))
    except Exception:  # an op without a meta kernel, or a tensor attribute left on the CPU
        with torch.no_grad():
            _ShapeRecorder(module).run(*inputs)
        return
    recorded = {n.name: n.meta for n in meta.graph.nodes}
    for node in module.graph.nodes:
        node.meta["shape"] = recorded[node.name].get("shape")
        node.meta["dtype"] = recorded[node.name].get("dtype")


def is_4d(node: Any) -> bool:
    """Whether ``node`` is an fx node whose recorded value is a 4-D tensor."""
    return isinstance(node, torch.fx.Node) and len(node.meta.get("shape") or ()) == 4


# Functions and methods whose result has the same values whatever the memory format of their
# tensor arguments: a channels-last tensor may reach them as it is. Any other function or method
# (``view`` first of all) gets the tensor in the contiguous format eager mode would give it.
_LAYOUT_FREE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.getitem, getattr,
    torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.flatten, torch.mean, torch.sum, torch.amax,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp,
    F.relu, F.relu6, F.silu, F.sigmoid, F.hardswish, F.hardsigmoid, F.gelu, F.elu, F.leaky_relu, F.dropout,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, F.avg_pool2d,
    *SHAPE_ONLY_CALLS,
}
_LAYOUT_FREE_METHODS = {
    "add", "sub", "mul", "div", "neg", "relu", "sigmoid", "tanh", "clamp", "flatten", "mean", "sum",
    "amax", "size", "dim", "contiguous", "reshape", "to", "float",
    # The in-place forms the packed path writes (``_packing``): elementwise, so layout-free too.
    "add_", "mul_",
}


def _layout_free(user: torch.fx.Node) -> bool:
    if user.op == "call_module":
        return True  # torch's and torchblocks' layers compute the same values in any layout
    if user.op == "call_function":
        return user.target in _LAYOUT_FREE_FUNCTIONS
    if user.op == "call_method":
        return user.target in _LAYOUT_FREE_METHODS
    return False


def guard_layouts(graph: torch.fx.Graph, takes_any_layout: Callable[[torch.fx.Node], bool]) -> None:
    """Give eager mode's memory format wherever it matters, in a graph whose 4-D tensors are
    channels-last (``record_shapes`` must have run).

    Every 4-D input read by a node other than ``takes_any_layout`` nodes is converted to
    channels-last once, for the layout-free readers. Every tensor read by code that may depend on
    the layout (``x.view(x.size(0), -1)``), and every output, passes through ``.contiguous()``
    first, which costs nothing where the tensor is contiguous already; tensors of any rank are
    guarded, since a view of a channels-last tensor (``x.flatten(2)``) keeps its strides.
    """
    for node in list(graph.nodes):
        if node.op == "placeholder":
            if not is_4d(node):
                continue
            readers = [u for u in node.users if _layout_free(u) and not takes_any_layout(u)]
            if readers:
                with graph.inserting_after(node):
                    converted = graph.call_method("contiguous", (node,), {"memory_format": torch.channels_last})
                converted.meta["shape"] = node.meta["shape"]
                for reader in readers:
                    reader.replace_input_with(node, converted)
            continue
        if node.meta.get("shape") is None:
            continue
        strict = [u for u in node.users if u.op == "output" or not _layout_free(u)]
        if strict:
            with graph.inserting_after(node):
                contiguous = graph.call_method("contiguous", (node,))
            contiguous.meta["shape"] = node.meta["shape"]
            for user in strict:
                user.replace_input_with(node, contiguous)
    graph.lint()
