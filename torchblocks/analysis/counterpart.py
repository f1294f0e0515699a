"""A model's standard-convolution counterpart, and the side-by-side comparison of the two."""
import copy
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from ..conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from .counting import CountReport, Inputs, count, measure_latency
from .formulas import separable_macs_ratio


def _full_conv(module: nn.Module) -> Conv2d:
    """The full ``Conv2d`` doing the job of a separable or depthwise conv (fresh weights)."""
    if isinstance(module, SeparableConv2d):
        spatial, out_channels, bias, act = (
            module.depthwise, module.out_channels, module.pointwise.bias, module.activation_arg())
    else:
        spatial, out_channels, bias, act = module, module.out_channels, module.bias, module.activation_arg()
    weight = spatial.weight
    return Conv2d(
        spatial.in_channels, out_channels, spatial.kernel_size, spatial.stride,
        spatial.padding_spec, spatial.dilation, bias=bias is not None,
        activation=act, device=weight.device, dtype=weight.dtype,
    ).train(module.training)


def _replace(module: nn.Module) -> nn.Module:
    if isinstance(module, (SeparableConv2d, DepthwiseConv2d)):
        return _full_conv(module)
    for name, child in module.named_children():
        new = _replace(child)
        if new is not child:
            setattr(module, name, new)
    return module


def standard_counterpart(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``SeparableConv2d``/``DepthwiseConv2d`` a full ``Conv2d``.

    Each replacement keeps the in/out channels, kernel, stride, Keras padding spec, dilation,
    bias flag, activation, device and dtype; its weights are freshly initialised. The model
    itself is replaced when it is one of those layers. ``model`` is not modified.

    Raises:
        TypeError: ``model`` is not an eager ``nn.Module`` (a ScriptModule cannot be rebuilt).
    """
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"Invalid type for argument `model`. Expected an eager nn.Module. "
            f"Received model of type {type(model).__name__}."
        )
    return _replace(copy.deepcopy(model))


def _single_layer_ratio(model: nn.Module) -> Optional[float]:
    """The textbook MAC ratio, for a model that is one separable or depthwise layer."""
    if isinstance(model, SeparableConv2d):
        dw = model.depthwise
        return separable_macs_ratio(model.out_channels, dw.kernel_size, dw.depth_multiplier)
    if isinstance(model, DepthwiseConv2d):
        # A full conv with the same C_in -> C_in·m does C_in times the work.
        return 1 / model.in_channels
    return None


@dataclass(frozen=True)
class Comparison:
    """A model against its counterpart: counts, ratios and (optionally) latencies.

    Attributes:
        name: label of the pair.
        model, counterpart: their ``CountReport``s.
        counterpart_name: what the counterpart is (default ``"standard_counterpart"``).
        theoretical_ratio: single-layer MAC ratio ``m·(1/C_out + 1/k²)`` where the model is one
            separable layer (``1/C_in`` for a depthwise one), else None.
        latency_ms, counterpart_latency_ms: median CPU time per call, when measured.
    """

    name: str
    model: CountReport
    counterpart: CountReport
    counterpart_name: str = "standard_counterpart"
    theoretical_ratio: Optional[float] = None
    latency_ms: Optional[float] = None
    counterpart_latency_ms: Optional[float] = None

    @property
    def macs_ratio(self) -> float:
        """Model MACs / counterpart MACs, as measured by ``count()``."""
        return self.model.macs / self.counterpart.macs

    @property
    def params_ratio(self) -> float:
        """Model trainable parameters / counterpart trainable parameters."""
        return self.model.params / self.counterpart.params

    @property
    def speedup(self) -> Optional[float]:
        """Counterpart time / model time (> 1: the model is faster), when both were measured."""
        if self.latency_ms is None or self.counterpart_latency_ms is None:
            return None
        return self.counterpart_latency_ms / self.latency_ms

    def to_dict(self) -> Dict[str, object]:
        """Flat, JSON-ready row: exact integers for counts, ``None`` where not measured."""
        return {
            "name": self.name,
            "counterpart": self.counterpart_name,
            "input_shape": list(self.model.input_shapes[0]) if self.model.input_shapes else None,
            "params": self.model.params,
            "counterpart_params": self.counterpart.params,
            "params_ratio": self.params_ratio,
            "macs": self.model.macs,
            "counterpart_macs": self.counterpart.macs,
            "flops": self.model.flops,
            "counterpart_flops": self.counterpart.flops,
            "macs_ratio": self.macs_ratio,
            "theoretical_ratio": self.theoretical_ratio,
            "latency_ms": self.latency_ms,
            "counterpart_latency_ms": self.counterpart_latency_ms,
            "speedup": self.speedup,
        }


def compare(
    model: nn.Module,
    inputs: Inputs,
    counterpart: Optional[nn.Module] = None,
    *,
    latency: bool = False,
    name: Optional[str] = None,
    counterpart_name: Optional[str] = None,
    repeats: int = 10,
) -> Comparison:
    """Count ``model`` and its standard-convolution counterpart on the same ``inputs``.

    Args:
        model: e.g. a network of ``SeparableConv2d`` layers, taking (N, C, H, W) ``inputs``.
        inputs: a tensor or a tuple of tensors.
        counterpart: the model to compare against; default ``standard_counterpart(model)``.
        latency: also time both (median of up to ``repeats`` calls after warm-up, eval mode).
        name: label of the pair; default the model's class name.
        counterpart_name: what ``counterpart`` is; default ``"standard_counterpart"`` or its
            class name.

    Returns:
        A ``Comparison`` with ``.macs_ratio``, ``.params_ratio``, ``.theoretical_ratio``.
    """
    other = standard_counterpart(model) if counterpart is None else counterpart
    model_report = count(model, inputs)
    other_report = count(other, inputs)
    times = (None, None)
    if latency:
        times = (measure_latency(model, inputs, repeats=repeats),
                 measure_latency(other, inputs, repeats=repeats))
    if counterpart_name is None:
        counterpart_name = "standard_counterpart" if counterpart is None else type(counterpart).__name__
    return Comparison(
        name or type(model).__name__, model_report, other_report, counterpart_name,
        _single_layer_ratio(model), *times,
    )
