"""A model's standard-convolution counterpart: every separable, depthwise or grouped conv made full.

What is replaced, in a copy of the model (weights of the new convs freshly initialised):

- ``tb.SeparableConv2d`` -> one full ``tb.Conv2d`` C_in -> C_out with the depthwise conv's kernel,
  stride, Keras padding and dilation, the pointwise conv's bias flag and the layer's activation.
- A separable pair written as two layers, as MobileNet does: a depthwise conv (any ``nn.Conv2d``
  with ``groups == in_channels > 1``) whose output reaches a 1×1 conv (groups 1, stride 1, no
  padding) through nothing but BatchNorm and activation modules, each called once and used nowhere
  else. The pair becomes one full k×k conv C_in -> C_out in the depthwise conv's place; the pair's
  inner BatchNorm and activations become ``nn.Identity`` and the pointwise conv its own activation
  (``tb.Conv2d(activation=...)``) or ``nn.Identity``, so what followed the pointwise conv (its
  BatchNorm and activation) now follows the full conv. That is the "Conv MobileNet" of Howard et
  al. (2017), Table 4.
- Any other ``nn.Conv2d`` with ``groups > 1`` (depthwise, or grouped as in ResNeXt) -> the same conv
  with ``groups=1``: C_in -> C_out over all input channels.

Sharing is kept: a module used in several places is replaced by one new module in each of them,
and convs sharing a parameter get replacements sharing theirs. Pairs are found on the model's
``torch.fx`` graph; a model fx cannot trace has each conv replaced on its own, and the result says
so (``Counterpart.note``).
"""
import copy
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._checks import first_line
from .._fx import LayerTracer, real_users
from ..activations import ActivationArg, Exponential, HardSigmoid
from ..conv import Conv2d, SeparableConv2d
from ..norm import BatchNorm

# Activation modules that torch.fx should keep as single nodes (torch.nn's are leaves already).
_ACTIVATION_TYPES = (HardSigmoid, Exponential, nn.Identity)


@dataclass(frozen=True)
class Counterpart:
    """The result of ``build_counterpart``.

    Attributes:
        module: the counterpart (the model itself when it is one replaced layer).
        replaced: one line per replacement, e.g. ``"blocks.0.dw + blocks.0.pw: depthwise 3x3 +
            pointwise 32->64 -> full 3x3 conv 32->64"``; empty when the model has nothing to replace.
        note: why separable pairs were not looked for (fx could not trace the model), else ``""``.
    """

    module: nn.Module
    replaced: Tuple[str, ...]
    note: str = ""


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _is_pointwise(module: nn.Module, channels: int) -> bool:
    """A 1×1, stride-1, unpadded, ungrouped conv reading ``channels`` channels."""
    return (
        isinstance(module, nn.Conv2d)
        and module.in_channels == channels
        and module.groups == 1
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid", "same")
        and not getattr(module, "same_is_dynamic", False)
    )


def _is_between(module: nn.Module) -> bool:
    """BatchNorm over the channels, or an activation module: allowed inside a separable pair."""
    if isinstance(module, _BatchNorm) or (isinstance(module, BatchNorm) and module.axis == 1):
        return True
    if isinstance(module, (nn.MultiheadAttention, nn.GLU)):  # defined beside the activations
        return False
    return type(module).__module__ == "torch.nn.modules.activation" or isinstance(module, _ACTIVATION_TYPES)


class _PairTracer(LayerTracer):
    """``LayerTracer`` that keeps ``SeparableConv2d`` and every activation module as one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, SeparableConv2d) or isinstance(m, _ACTIVATION_TYPES):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _refuse_rebuild(name: str, module: nn.Module) -> None:
    if hasattr(module, "parametrizations") or module._forward_pre_hooks:
        raise NotImplementedError(
            f"standard_counterpart: {repr(name) if name else 'the model'} ({type(module).__name__}) "
            "carries a weight parametrization or a forward pre-hook (weight norm, spectral "
            "norm...), which a new weight of another shape would break. Supported: convs without "
            "them; remove them first."
        )


class _Builder:
    """Builds the full convs, sharing parameters where the original convs share them."""

    def __init__(self) -> None:
        self.weights: Dict[Tuple[int, ...], nn.Parameter] = {}
        self.biases: Dict[Tuple[int, ...], Optional[nn.Parameter]] = {}

    def full_conv(
        self, name: str, spatial: nn.Conv2d, out_channels: int, bias_of: nn.Conv2d,
        activation: ActivationArg, key: Tuple[int, ...],
    ) -> nn.Conv2d:
        """A k×k conv over all of ``spatial``'s input channels: ``spatial``'s geometry,
        ``bias_of``'s bias flag, ``out_channels`` outputs and (tb convs) ``activation``."""
        _refuse_rebuild(name, spatial)
        weight = spatial.weight
        has_bias = bias_of.bias is not None
        if isinstance(spatial, Conv2d):
            new: nn.Conv2d = Conv2d(
                spatial.in_channels, out_channels, spatial.kernel_size, spatial.stride,
                spatial.padding_spec, spatial.dilation, bias=has_bias,
                activation=copy.deepcopy(activation), device=weight.device, dtype=weight.dtype,
            )
            new.padding_mode = spatial.padding_mode
        else:
            # Any other nn.Conv2d (torchvision, timm's 'same'-padding convs...) keeps its class and
            # forward: a copy sharing the old tensors, then given new ones of the full shape.
            new = copy.deepcopy(spatial, {id(p): p for p in spatial.parameters(recurse=False)})
            new.groups, new.out_channels = 1, out_channels
            new.weight = nn.Parameter(torch.empty(
                out_channels, spatial.in_channels, *spatial.kernel_size, device=weight.device,
                dtype=weight.dtype))
            new.bias = (nn.Parameter(torch.empty(out_channels, device=weight.device, dtype=weight.dtype))
                        if has_bias else None)
            new.reset_parameters()
        new.train(spatial.training)
        # A frozen conv stays frozen, so that trainable parameters compare like with like.
        new.weight.requires_grad_(weight.requires_grad)
        if has_bias:
            new.bias.requires_grad_(bias_of.bias.requires_grad)
        # Convs that share a weight (or a bias) get replacements that share theirs.
        new.weight = self.weights.setdefault(key, new.weight)
        if has_bias:
            bias_key = (id(bias_of.bias),) + key[1:]
            new.bias = self.biases.setdefault(bias_key, new.bias)
        return new


def _trace(model: nn.Module) -> Tuple[Optional[torch.fx.Graph], str]:
    tracer = _PairTracer()
    if tracer.is_leaf_module(model, ""):
        return None, ""
    try:
        return tracer.trace(model), ""
    except Exception as error:  # fx raises many types (TraceError, TypeError, RuntimeError...)
        return None, (
            f"torch.fx could not trace {type(model).__name__} ({first_line(error)}): depthwise + "
            "pointwise pairs were not looked for, each depthwise or grouped conv was replaced on "
            "its own"
        )


def _pairs(model: nn.Module, graph: torch.fx.Graph) -> List[Tuple[str, List[str], str]]:
    """(depthwise name, names of the modules between, pointwise name) of each separable pair."""
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    places: Dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        places[id(module)] = places.get(id(module), 0) + 1

    def single_use(target: str) -> bool:
        return calls[target] == 1 and places[id(model.get_submodule(target))] == 1

    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not single_use(node.target):
            continue
        dw = model.get_submodule(node.target)
        if not _is_depthwise(dw):
            continue
        between, current = [], node
        while True:
            users = real_users(current)
            if len(users) != 1 or users[0].op != "call_module" or not single_use(users[0].target):
                break
            current = users[0]
            module = model.get_submodule(current.target)
            if _is_pointwise(module, dw.out_channels):
                pairs.append((node.target, between, current.target))
                break
            if not _is_between(module):
                break
            between.append(current.target)
    return pairs


def _hw(module: nn.Conv2d) -> str:
    return "x".join(str(k) for k in module.kernel_size)


def _plan(model: nn.Module, graph: Optional[torch.fx.Graph]) -> Tuple[Dict[int, nn.Module], List[str]]:
    """The new module for each replaced module (by id), and a line describing each replacement."""
    builder = _Builder()
    plan: Dict[int, nn.Module] = {}
    lines: List[str] = []
    for dw_name, between, pw_name in (_pairs(model, graph) if graph is not None else []):
        dw, pw = model.get_submodule(dw_name), model.get_submodule(pw_name)
        plan[id(dw)] = builder.full_conv(
            dw_name, dw, pw.out_channels, pw, None, (id(dw.weight), id(pw.weight)))
        for name in between:
            plan[id(model.get_submodule(name))] = nn.Identity()
        # A torchblocks pointwise conv's own activation still follows, in the pointwise slot.
        plan[id(pw)] = copy.deepcopy(pw.act) if isinstance(pw, Conv2d) else nn.Identity()
        lines.append(
            f"{dw_name} + {pw_name}: depthwise {_hw(dw)} + pointwise {dw.in_channels}->"
            f"{pw.out_channels} -> full {_hw(dw)} conv {dw.in_channels}->{pw.out_channels}"
        )
    for name, module in _walk(model, plan):
        if isinstance(module, SeparableConv2d):
            dw, pw = module.depthwise, module.pointwise
            plan[id(module)] = builder.full_conv(
                name, dw, pw.out_channels, pw, module.activation_arg(), (id(dw.weight), id(pw.weight)))
            lines.append(f"{name or 'model'}: SeparableConv2d -> full {_hw(dw)} conv "
                         f"{dw.in_channels}->{pw.out_channels}")
        elif isinstance(module, nn.Conv2d) and module.groups > 1:
            act = module.activation_arg() if isinstance(module, Conv2d) else None
            plan[id(module)] = builder.full_conv(
                name, module, module.out_channels, module, act, (id(module.weight),))
            kind = "depthwise" if _is_depthwise(module) else f"groups={module.groups}"
            lines.append(f"{name or 'model'}: {kind} {_hw(module)} conv {module.in_channels}->"
                         f"{module.out_channels} -> full conv")
    return plan, lines


def _walk(model: nn.Module, plan: Dict[int, nn.Module]) -> List[Tuple[str, nn.Module]]:
    """(first name, module) of each module not planned yet, not descending into planned modules
    nor into a ``SeparableConv2d`` (replaced as a whole)."""
    found: List[Tuple[str, nn.Module]] = []
    seen = set()

    def visit(name: str, module: nn.Module) -> None:
        if id(module) in seen or id(module) in plan:
            return
        seen.add(id(module))
        found.append((name, module))
        if not isinstance(module, SeparableConv2d):
            for child_name, child in module.named_children():
                visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return found


def _apply(model: nn.Module, plan: Dict[int, nn.Module]) -> nn.Module:
    """Put each planned module in every place its original holds (shared modules included)."""
    if id(model) in plan:
        return plan[id(model)]
    seen = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        # Not named_children(), which lists a module held twice only once.
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if id(child) in plan:
                setattr(module, name, plan[id(child)])
            else:
                visit(child)

    visit(model)
    return model


def check_eager(model: object) -> nn.Module:
    """``model`` if it is an eager ``nn.Module`` holding no ScriptModule, else ``TypeError``."""
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"Invalid type for argument `model`. Expected an eager nn.Module. "
            f"Received model of type {type(model).__name__}."
        )
    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            raise TypeError(
                f"Invalid value for argument `model`. Its submodule {name!r} is a ScriptModule, whose "
                "layers cannot be replaced: pass the eager model."
            )
    return model


def build_counterpart(model: nn.Module, *, copy_model: bool = True) -> Counterpart:
    """``standard_counterpart`` with what was replaced (``copy_model=False`` rebuilds ``model``
    itself, for a copy the caller owns, such as one on the meta device)."""
    check_eager(model)
    target = copy.deepcopy(model) if copy_model else model
    # Only a depthwise conv outside SeparableConv2d can start a pair: fx is not needed otherwise.
    graph, note = None, ""
    if any(_is_depthwise(module) for _, module in _walk(target, {})):
        graph, note = _trace(target)
    plan, lines = _plan(target, graph)
    return Counterpart(_apply(target, plan), tuple(lines), note)


def nothing_replaced_message(name: str) -> str:
    return (
        f"{name}: nothing to replace (no SeparableConv2d and no depthwise or grouped conv): the "
        "standard counterpart is the model itself and every ratio is 1.0."
    )


def standard_counterpart(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose separable, depthwise and grouped convs are full convs.

    See the module docstring for what is replaced: ``tb.SeparableConv2d`` layers, depthwise +
    pointwise pairs written as two layers (MobileNet's dw -> BN -> ReLU -> pw becomes one full k×k
    conv followed by the pointwise conv's BN and ReLU), and any ``nn.Conv2d`` with ``groups > 1``.
    New convs keep the channels, kernel, stride, padding, dilation, bias flag, activation, device
    and dtype and get fresh weights; sharing (modules, parameters) is kept. ``model`` is not
    modified; a model that is itself one such layer is replaced as a whole.

    Raises:
        TypeError: ``model`` is not an eager ``nn.Module`` or holds a ScriptModule.
        NotImplementedError: a conv to replace carries a weight parametrization or pre-hook.

    Warns:
        RuntimeWarning: nothing was replaced, or fx could not trace the model (pairs not found).
    """
    result = build_counterpart(model)
    if not result.replaced:
        warnings.warn(nothing_replaced_message(type(model).__name__), RuntimeWarning, stacklevel=2)
    if result.note:
        warnings.warn(result.note, RuntimeWarning, stacklevel=2)
    return result.module
