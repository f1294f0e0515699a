"""The layer-level ``torch.fx`` view of a model that BatchNorm folding and the inference path share.

``LayerTracer`` stops at the torchblocks layers (convolutions, BatchNorms, pools, dense layers)
and traces through everything else, so a model's graph reads as the sequence of its layers.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .conv import SeparableConv2d
from .linear import Dense
from .models._layers import check_input_size
from .norm import BatchNorm
from .pooling import AvgPool2d, MaxPool2d
from .residual import _check_same_shape

# Calls that read a tensor's shape only: folding keeps shapes, so they may share a conv's output.
SHAPE_ONLY_CALLS = (_check_same_shape, check_input_size)


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
