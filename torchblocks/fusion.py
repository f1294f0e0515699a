"""BatchNorm folding: ``fuse_bn`` and the pairs it folds, ``conv_bn_pairs``.

``fuse_bn`` finds, with a ``torch.fx`` trace whose leaves are the torchblocks layers, every
channels-first BatchNorm whose only input is a convolution whose output feeds nothing else, folds
the BN's affine transform into that convolution's weight and bias, and replaces the BN by
``nn.Identity`` in a deep copy. The copy keeps the original module classes and forward code, so it
still scripts, traces and exports like the original. Public PyTorch APIs only.
"""
import copy
from typing import List, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._checks import check_module
from ._fx import real_users, set_submodule, trace_layers
from .norm import BatchNorm

__all__ = ["conv_bn_pairs", "fuse_bn"]

# Convolutions whose weight is (C_out, C_in / groups, *kernel): a BN over dim 1 of their output
# scales each output channel, i.e. each row of the weight. Transposed convs keep C_out in dim 1 of
# the weight and are not folded.
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _bn_stats(module: nn.Module) -> Optional[_BatchNorm]:
    """The torch BatchNorm to fold, or None where it cannot be folded into a preceding conv."""
    # tb.BatchNorm and tb.SyncBatchNorm normalise the last dim when axis=-1: nothing to fold.
    if getattr(module, "axis", 1) != 1:
        return None
    if isinstance(module, BatchNorm):
        module = module.bn
    if not isinstance(module, _BatchNorm) or module.running_mean is None or module.running_var is None:
        return None
    return module


def _foldable_conv(module: nn.Module) -> bool:
    # A conv with its own activation (tb.Conv2d(activation=...), as in ConvBN) applies it before
    # the BN: BN(act(conv(x))) is not a conv.
    return isinstance(module, _CONVS) and not getattr(module, "has_activation", False)


def _fold(conv: nn.Module, bn: _BatchNorm) -> None:
    """conv <- bn(conv) in eval numerics: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta.

    The folded weight and bias are new ``Parameter`` objects: a weight tied to another module
    (the same ``Parameter`` registered twice) keeps its value there.
    """
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        weight = conv.weight.double() * scale.reshape((-1,) + (1,) * (conv.weight.dim() - 1))
    trainable = conv.weight.requires_grad
    conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=trainable)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=trainable)


def _read_directly(graph: torch.fx.Graph) -> Set[str]:
    """Submodules whose parameters or buffers the forward code reads itself (``get_attr``), e.g.
    ``F.conv2d(x, self.conv.weight)``: folding would change what that code reads."""
    return {node.target.rpartition(".")[0] for node in graph.nodes if node.op == "get_attr"}


def conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """Qualified names ``(conv, bn)`` of the BatchNorms ``fuse_bn`` folds into a conv.

    A pair qualifies when the BN (channels-first, with running statistics) is called only on the
    output of a ``Conv1d``/``Conv2d``/``Conv3d`` without activation, that output feeds nothing
    else, each module is called exactly once in the forward pass, and no code reads the conv's or
    the BN's parameters directly.
    """
    traced = trace_layers(model)
    if traced is None:
        return []  # a single layer: no conv -> BN pair inside
    graph, calls = traced
    read = _read_directly(graph)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or _bn_stats(model.get_submodule(node.target)) is None:
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if source.op != "call_module" or not _foldable_conv(model.get_submodule(source.target)):
            continue
        if real_users(source) != [node] or calls[source.target] != 1 or calls[node.target] != 1:
            continue
        if any(name in read for name in (source.target, node.target, f"{node.target}.bn")):
            continue
        pairs.append((source.target, node.target))
    return pairs


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded in.

    Folds BN after ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d``, ``tb.Conv2d``, ``DepthwiseConv2d``,
    the pointwise conv of a ``SeparableConv2d`` and the conv of ``Projection(norm=True)``, for
    ``tb.BatchNorm(axis=1)`` and torch's ``BatchNorm1d/2d/3d``; the conv gains a bias where it
    had none and the BN becomes ``nn.Identity``. Left as they are: BatchNorm with ``axis=-1``, not
    fed by a conv, or after a conv with an activation (``ConvBN``: the ReLU sits between); a conv
    or BN module called more than once (one module cannot hold folded and unfolded weights), and
    one whose parameters the forward code reads directly. A conv whose weight is tied to another
    module (one ``Parameter`` in two places) is folded into a private copy of the weight, so the
    other module keeps the original. Outputs equal the eval-mode model's up to the dtype's
    round-off. The model must be ``torch.fx``-traceable at the layer level; ``model`` itself is
    not changed.
    """
    check_module(model)
    fused = copy.deepcopy(model).eval()
    try:
        pairs = conv_bn_pairs(fused)
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        raise TypeError(
            f"fuse_bn needs a torch.fx-traceable forward; {type(model).__name__} failed to trace: {exc}"
        ) from exc
    for conv_name, bn_name in pairs:
        _fold(fused.get_submodule(conv_name), _bn_stats(fused.get_submodule(bn_name)))
        set_submodule(fused, bn_name, nn.Identity())
    return fused
