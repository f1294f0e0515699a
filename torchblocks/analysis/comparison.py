"""A model against its standard-convolution counterpart: counts, ratios and, optionally, time."""
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import nn

from ..conv import SeparableConv2d
from .counterpart import Counterpart, build_counterpart, check_eager, nothing_replaced_message
from .counting import CountReport, Inputs, count, measure_latency
from .formulas import separable_macs_ratio
from .meta import MetaCountError, count_meta, meta_device, on_meta, to_meta
from .tables import Column, Table

UNITS = (
    "MACs = fused multiply-adds as fvcore counts them (FLOPs = 2 x MACs).",
    "params = trainable parameters; ratio = model / counterpart (below 1: the model needs less).",
)
SLOWER_NOTE = (
    "Slower at fewer MACs: depthwise convs are memory-bound (few MACs per byte moved)."
)
KIND_LABELS = (
    ("conv_dense", "  conv + dense"), ("norm", "  normalization"), ("activation", "  activations"),
    ("other", "  other (add, pool, ...)"),
)


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _single_layer_ratio(model: nn.Module) -> Optional[float]:
    """The textbook MAC ratio, for a model that is one separable, depthwise or grouped layer."""
    if isinstance(model, SeparableConv2d):
        dw = model.depthwise
        return separable_macs_ratio(model.out_channels, dw.kernel_size, dw.depth_multiplier)
    if isinstance(model, nn.Conv2d) and model.groups > 1:
        # A full conv with the same C_in -> C_out reads `groups` times as many input channels.
        return 1 / model.groups
    return None


@dataclass(frozen=True)
class Comparison:
    """A model against its counterpart: counts, ratios and (optionally) latencies.

    Every ratio is model / counterpart: below 1 the model needs fewer parameters, MACs or
    milliseconds. ``str()`` gives a readable table.

    Attributes:
        name: label of the model.
        model, counterpart: their ``CountReport``s.
        counterpart_name: what the counterpart is (default ``"standard_counterpart"``).
        theoretical_ratio: single-layer MAC ratio ``m·(1/C_out + 1/k²)`` where the model is one
            separable layer, ``1/groups`` for one depthwise or grouped conv, else None.
        latency_ms, counterpart_latency_ms: median CPU time per call, when measured.
        replaced: what ``standard_counterpart`` replaced, one line each (empty: nothing, and the
            ratios are 1.0); None when the counterpart was given.
        note: why separable pairs were not looked for, else ``""``.
    """

    name: str
    model: CountReport
    counterpart: CountReport
    counterpart_name: str = "standard_counterpart"
    theoretical_ratio: Optional[float] = None
    latency_ms: Optional[float] = None
    counterpart_latency_ms: Optional[float] = None
    replaced: Optional[Tuple[str, ...]] = None
    note: str = ""

    @property
    def macs_ratio(self) -> Optional[float]:
        """Model MACs / counterpart MACs (None when the counterpart has no MACs)."""
        return _ratio(self.model.macs, self.counterpart.macs)

    @property
    def params_ratio(self) -> Optional[float]:
        """Model / counterpart trainable parameters (None when the counterpart has none)."""
        return _ratio(self.model.params, self.counterpart.params)

    @property
    def time_ratio(self) -> Optional[float]:
        """Model time / counterpart time (> 1: the model is slower), when both were measured."""
        return _ratio(self.latency_ms, self.counterpart_latency_ms)

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
            "time_ratio": self.time_ratio,
            "replaced": None if self.replaced is None else list(self.replaced),
            "note": self.note,
        }

    def table(self) -> Table:
        """Parameters, MACs (total and by kind) and time, side by side with the ratio."""
        model, other = self.model, self.counterpart
        rows: List[List[object]] = [
            ["params (trainable)", f"{model.params:,}", f"{other.params:,}", self.params_ratio],
            ["MACs", f"{model.macs:,}", f"{other.macs:,}", self.macs_ratio],
        ]
        mine, theirs = model.macs_by_kind, other.macs_by_kind
        for key, label in KIND_LABELS:
            if mine[key] or theirs[key]:
                rows.append([label, f"{mine[key]:,}", f"{theirs[key]:,}", _ratio(mine[key], theirs[key])])
        if self.latency_ms is not None and self.counterpart_latency_ms is not None:
            rows.append(["ms per call", f"{self.latency_ms:.2f}", f"{self.counterpart_latency_ms:.2f}",
                         self.time_ratio])
        shape = ", ".join(str(tuple(s)) for s in model.input_shapes)
        columns = (Column("", "what"), Column(self.name, "model", "int"),
                   Column(self.counterpart_name, "counterpart", "int"),
                   Column("ratio model/counterpart", "ratio", "ratio"))
        return Table(f"{self.name} vs {self.counterpart_name}, input {shape}", columns, rows)

    def footer(self) -> List[str]:
        """What was replaced, notes, and the units."""
        lines = []
        if self.replaced is not None:
            if self.replaced:
                more = f" and {len(self.replaced) - 1} more" if len(self.replaced) > 1 else ""
                lines.append(f"replaced: {self.replaced[0]}{more}")
            else:
                lines.append(nothing_replaced_message(self.name))
        if self.note:
            lines.append(f"note: {self.note}")
        if self.time_ratio is not None and self.time_ratio > 1 and (self.macs_ratio or 0) < 1:
            lines.append(SLOWER_NOTE)
        if self.params_ratio is None or self.macs_ratio is None:
            lines.append("-: no ratio (the counterpart has none to divide by).")
        return lines + list(UNITS)

    def __str__(self) -> str:
        return self.table().to_text(footer=self.footer())


def count_fast(model: nn.Module, inputs: Inputs) -> CountReport:
    """``count(model, inputs)``, on the meta device where the model allows it (the same report)."""
    try:
        return count_meta(model, inputs)
    except MetaCountError:
        if on_meta(model, inputs):
            raise
        return count(model, inputs)


def count_with_counterpart(model: nn.Module, inputs: Inputs) -> Tuple[CountReport, CountReport, Counterpart, bool]:
    """Reports of ``model`` and of its standard counterpart, the counterpart, and whether it is
    real: where the model runs on the meta device the counterpart is built there, never
    allocated."""
    try:
        meta_model = to_meta(model)
        model_report = count_meta(meta_model, inputs)
        with meta_device():
            built = build_counterpart(meta_model, copy_model=False)
        return model_report, count_meta(built.module, inputs), built, False
    except MetaCountError:
        if on_meta(model, inputs):
            raise
        built = build_counterpart(model)
        return count(model, inputs), count(built.module, inputs), built, True


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

    Counting runs on the meta device where the model allows it (shapes only: no arithmetic, no
    activation memory; the same counts as a real run) and on the inputs' device otherwise.

    Args:
        model: e.g. a network of ``SeparableConv2d`` layers, taking (N, C, H, W) ``inputs``.
        inputs: a tensor or a tuple of tensors.
        counterpart: the model to compare against; default ``standard_counterpart(model)``.
        latency: also time both (median of up to ``repeats`` calls after warm-up, eval mode).
        name: label of the model; default its class name.
        counterpart_name: what ``counterpart`` is; default ``"standard_counterpart"`` or its
            class name.

    Returns:
        A ``Comparison``: ``.macs_ratio``, ``.params_ratio``, ``.time_ratio`` (model / counterpart),
        ``.replaced``; ``print()`` it for a table.

    Raises:
        TypeError: ``model`` is not an eager module (a ScriptModule, or one holding one).
        ValueError: ``latency=True`` with a model or inputs on the meta device.
        NotImplementedError: a conv to replace carries a weight parametrization or pre-hook.

    Warns:
        RuntimeWarning: the model has nothing to replace (its counterpart is itself), or fx could
        not trace it to find depthwise + pointwise pairs.
    """
    name = name or type(model).__name__
    if latency and (on_meta(model, inputs) or (counterpart is not None and on_meta(counterpart, inputs))):
        raise ValueError(
            "Invalid value for argument `latency`. Timing needs real tensors; the model or the "
            "inputs are on the meta device (shapes only). Received latency=True."
        )
    replaced: Optional[Tuple[str, ...]] = None
    note = ""
    if counterpart is None:
        check_eager(model)
        model_report, other_report, built, real = count_with_counterpart(model, inputs)
        replaced, note = built.replaced, built.note
        other = built.module if real else None
        if not replaced:
            warnings.warn(nothing_replaced_message(name), RuntimeWarning, stacklevel=2)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        counterpart_name = counterpart_name or "standard_counterpart"
    else:
        model_report, other_report = count_fast(model, inputs), count_fast(counterpart, inputs)
        other = counterpart
        counterpart_name = counterpart_name or type(counterpart).__name__
    times: Tuple[Optional[float], Optional[float]] = (None, None)
    if latency:
        if other is None:  # built on the meta device: build a real one to time it
            other = build_counterpart(model).module
        times = (measure_latency(model, inputs, repeats=repeats),
                 measure_latency(other, inputs, repeats=repeats))
    return Comparison(
        name, model_report, other_report, counterpart_name, _single_layer_ratio(model), *times,
        replaced=replaced, note=note,
    )
