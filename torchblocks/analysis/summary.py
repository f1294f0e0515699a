"""A Keras ``model.summary()``-style table: layer, output shape, parameters, MACs."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..conv import Conv2d, SeparableConv2d
from ..linear import Dense
from ..norm import BatchNorm
from ..pooling import AvgPool2d, MaxPool2d
from .counting import CountReport, Inputs, count
from .tables import Column, Table, human

# Modules shown as one row, as Keras shows one layer: their children (activation, the wrapped
# torch BatchNorm, the depthwise/pointwise pair) are parts of the layer.
LAYER_TYPES = (Conv2d, SeparableConv2d, Dense, BatchNorm, MaxPool2d, AvgPool2d)


@dataclass(frozen=True)
class SummaryRow:
    """One row: a layer, or the ops a container runs itself (a residual add, a flatten)."""

    name: str
    type_name: str
    output_shape: str
    params: int
    macs: int


@dataclass(frozen=True)
class Summary:
    """Rows in execution order plus the model's ``CountReport``; ``str()`` gives the table.

    The rows partition the model: their params and MACs add up to ``report.params`` (plus
    non-trainable ones) and ``report.macs``.
    """

    model_name: str
    rows: Tuple[SummaryRow, ...]
    report: CountReport

    def table(self) -> Table:
        """The rows as a ``Table`` (for markdown/csv/json output)."""
        return Table(
            f'Model: "{self.model_name}", input {_shape_text(self.report.input_shapes)}',
            (
                Column("layer (type)", "layer"),
                Column("output shape", "output_shape"),
                Column("params", "params", "int"),
                Column("MACs", "macs", "macs"),
            ),
            [[f"{r.name} ({r.type_name})", r.output_shape, r.params, r.macs] for r in self.rows],
        )

    def footer(self) -> List[str]:
        """Totals: parameters (and Keras' count with BN statistics), MACs and FLOPs."""
        r = self.report
        lines = [
            f"Total params: {r.total_params:,} (trainable {r.params:,}, "
            f"non-trainable {r.non_trainable_params:,})",
            f"Buffers (BN moving statistics): {r.buffers:,}; Keras count_params(): "
            f"{r.keras_count_params:,}",
            f"Total MACs: {r.macs:,} ({human(r.macs)}; one fused multiply-add = 1 MAC; "
            f"FLOPs = 2 x MACs = {human(r.flops)})",
        ]
        if r.note:
            lines.append(f"Note: {r.note}")
        return lines

    def __str__(self) -> str:
        return self.table().to_text(footer=self.footer())


def _shape_text(shapes) -> str:
    parts = ["(" + ", ".join(str(d) for d in s) + ")" for s in shapes]
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"


def _output_shapes(output: object) -> Optional[Tuple[Tuple[int, ...], ...]]:
    # Under fvcore's trace, sizes are traced values: int() makes them plain numbers.
    if isinstance(output, Tensor):
        return (tuple(int(d) for d in output.shape),)
    if isinstance(output, (tuple, list)) and all(isinstance(t, Tensor) for t in output):
        return tuple(tuple(int(d) for d in t.shape) for t in output)
    return None


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def summary(model: nn.Module, inputs: Inputs, *, depth: Optional[int] = None) -> Summary:
    """Layer-by-layer table of ``model`` on ``inputs``, like Keras' ``model.summary()``.

    Rows follow execution order. A row is a layer (a module without children, or a torchblocks
    layer such as ``SeparableConv2d``), or a module at ``depth`` (its descendants summed); a
    container that runs ops of its own (the add of a ``Residual``) gets a row "own ops" for them.

    Args:
        model: an eager module (a ScriptModule hides its layers: use ``count``).
        inputs: a tensor or a tuple of tensors, e.g. (1, 3, 299, 299).
        depth: show no module deeper than this (1 = the model's children); None = every layer.
    """
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise TypeError(
            "Invalid type for argument `model`. summary() needs an eager nn.Module to list its "
            "layers; a ScriptModule hides them (use torchblocks.analysis.count)."
        )
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(
            f"Invalid value for argument `depth`. Expected an int >= 1 or None. Received depth={depth!r}."
        )
    modules = dict(model.named_modules())
    names: Dict[nn.Module, str] = {}  # a module shared under two names is listed once
    for name, module in modules.items():
        names.setdefault(module, name)

    def is_row(name: str, module: nn.Module) -> bool:
        level = 0 if name == "" else name.count(".") + 1
        return (
            isinstance(module, LAYER_TYPES)
            or not any(True for _ in module.children())
            or (depth is not None and level >= depth)
        )

    def shown(name: str) -> bool:
        # Inside a row everything is summed into that row: only modules with no row above them
        # appear, as a row or as their own ops.
        parts = name.split(".") if name else []
        prefixes = (".".join(parts[:k]) for k in range(len(parts)))
        return not any(is_row(prefix, modules[prefix]) for prefix in prefixes)

    order: List[Tuple[str, Tuple[Tuple[int, ...], ...]]] = []
    seen = set()

    def hook(module: nn.Module, args: object, output: object) -> None:
        name = names[module]
        if name not in seen:
            seen.add(name)
            order.append((name, _output_shapes(output)))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        report = count(model, inputs)
    finally:
        for handle in handles:
            handle.remove()

    rows: List[SummaryRow] = []
    for name, shapes in order:
        module = modules[name]
        if not shown(name):
            continue
        shape = _shape_text(shapes) if shapes else "-"
        kind = type(module).__name__
        if isinstance(module, nn.Identity):
            continue  # an activation=None or a skipped BN: nothing to show
        if is_row(name, module):
            params = sum(p.numel() for p in module.parameters())
            rows.append(SummaryRow(name or kind, kind, shape, params, report.by_module.get(name, 0)))
            continue
        children = {names[c] for c in module.children()}
        own_macs = report.by_module.get(name, 0) - sum(report.by_module.get(c, 0) for c in children)
        own_params = _own_params(module)
        if own_macs or own_params:
            rows.append(SummaryRow(name or "(model)", f"{kind}, own ops", shape, own_params, own_macs))
    # Layers the forward never reached still own parameters: list them so the totals add up.
    for name, module in modules.items():
        if name not in seen and is_row(name, module) and shown(name):
            params = sum(p.numel() for p in module.parameters())
            if params:
                rows.append(SummaryRow(name, type(module).__name__, "not called", params, 0))
    return Summary(type(model).__name__, tuple(rows), report)
