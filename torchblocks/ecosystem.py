"""Extension hooks for the FLOP counters that look modules up by exact type: thop and ptflops.

thop's ``profile`` and ptflops' ``pytorch`` backend keep a table keyed by module class and count
any class missing from it as zero, a subclass of ``nn.Conv2d`` included. The other tools
(torchinfo, fvcore, ptflops' ``aten`` backend, ``torch.utils.flop_counter``) need nothing: they
count torchblocks layers exactly as the plain torch modules they are built on. The tables here
give each torchblocks layer the tool's own rule for its torch class (``Conv2d`` and
``DepthwiseConv2d``: ``nn.Conv2d``; ``Dense``: ``nn.Linear``; the module inside ``BatchNorm``:
``nn.BatchNorm2d``; the pools: ``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``,
``nn.AdaptiveMaxPool2d``), plus, for a layer's own activation, the tool's rule for that
activation's module, so a layer counts as the plain ``nn.Sequential(layer, activation)``::

    thop.profile(model, inputs=(x,), custom_ops=tb.ecosystem.thop_custom_ops())
    ptflops.get_model_complexity_info(model, (3, 224, 224), backend="pytorch",
                                      custom_modules_hooks=tb.ecosystem.ptflops_custom_modules_hooks())
"""
import importlib
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from .conv import Conv2d, DepthwiseConv2d
from .linear import Dense
from .norm import _ChannelsFirstBatchNorm
from .pooling import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d

Hook = Callable[[nn.Module, Tuple[Any, ...], Any], None]

# Each torchblocks class and the torch class whose rule counts it.
TORCH_CLASSES: Dict[type, type] = {
    Conv2d: nn.Conv2d,
    DepthwiseConv2d: nn.Conv2d,
    Dense: nn.Linear,
    _ChannelsFirstBatchNorm: nn.BatchNorm2d,
    MaxPool2d: nn.MaxPool2d,
    AvgPool2d: nn.AvgPool2d,
    GlobalAvgPool2d: nn.AdaptiveAvgPool2d,
    GlobalMaxPool2d: nn.AdaptiveMaxPool2d,
}


def _import(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is not installed: pip install {package}") from error


def _as_torch_output(module: nn.Module, output: Tensor) -> Tensor:
    """The output the torch class would give: (N, C, 1, 1) for a global pool without keepdims."""
    if isinstance(module, (GlobalAvgPool2d, GlobalMaxPool2d)) and not module.keepdims:
        return output.reshape(output.shape[0], output.shape[1], 1, 1)
    return output


def _activation_cost(module: nn.Module, output: Tensor, rules: Dict[type, Hook], counter: str) -> Any:
    """What the tool's rule for the layer's activation module adds to its ``counter`` attribute
    (0 without an activation or a rule). The activation's input has the output's shape."""
    if not getattr(module, "has_activation", False):
        return 0
    act = module.act
    rule = rules.get(type(act))
    if rule is None:
        return 0
    # The rule adds to act's own counter: read the difference and put the counter back, so a child
    # activation the tool also hooks keeps its own count.
    before = getattr(act, counter, None)
    setattr(act, counter, torch.zeros(1, dtype=torch.float64) if counter == "total_ops" else 0)
    rule(act, (output,), output)
    added = getattr(act, counter)
    if before is None:
        delattr(act, counter)
    else:
        setattr(act, counter, before)
    return added


def _hook(base: Hook, rules: Dict[type, Hook], counter: str) -> Hook:
    def count(module: nn.Module, inputs: Tuple[Any, ...], output: Tensor) -> None:
        base(module, inputs, _as_torch_output(module, output))
        cost = _activation_cost(module, output, rules, counter)
        setattr(module, counter, getattr(module, counter) + cost)

    return count


def _table(rules: Dict[type, Hook], counter: str) -> Dict[type, Hook]:
    return {ours: _hook(rules[theirs], rules, counter) for ours, theirs in TORCH_CLASSES.items() if theirs in rules}


def thop_custom_ops() -> Dict[type, Hook]:
    """thop's ``custom_ops`` for the torchblocks layers (``thop.profile(..., custom_ops=...)``).

    Merge your own entries into the returned dict. Needs ``pip install thop``.
    """
    registry = _import("thop.profile", "thop").register_hooks
    return _table(registry, "total_ops")


def ptflops_custom_modules_hooks() -> Dict[type, Hook]:
    """ptflops' ``custom_modules_hooks`` for the torchblocks layers, for its ``pytorch`` backend
    (``get_model_complexity_info(..., backend="pytorch", custom_modules_hooks=...)``; the
    ``aten`` backend needs none). Needs ``pip install ptflops``.
    """
    registry = _import("ptflops.pytorch_ops", "ptflops").MODULES_MAPPING
    return _table(registry, "__flops__")
