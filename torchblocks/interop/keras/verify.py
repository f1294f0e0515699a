"""``verify``: a converted module checked against its Keras model, layer by layer.

Both models run in inference mode on the same inputs. Keras runs its layer graph one call at a
time (as Keras' own ``Functional`` does), so every call's output is at hand, shared layers and
nested models included; the torch module runs under a ``torch.fx`` interpreter that keeps the
output of every submodule call. Each Keras call is compared with its torch counterpart, in the
torch layout: 4-D tensors channels-first, features after a ``Flatten`` in the converted module's
order.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.fx
from torch import Tensor, nn

from ..._checks import check_module
from .backend import import_keras
from .graph import KerasGraph, keras_graph
from .layers import Flatten

__all__ = ["LayerError", "VerifyReport", "VerificationError", "TOLERANCES", "verify"]

# Allowed relative error (max |torch - keras| / max |keras|, per layer) by the less precise of the
# two outputs' dtypes: a few hundred ulps of accumulated rounding, far below any real mistake.
TOLERANCES: Dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}

Inputs = Union[Tensor, Sequence[Tensor], Mapping[str, Tensor]]


@dataclass(frozen=True)
class LayerError:
    """The error of one Keras layer call's torch counterpart.

    ``max_rel`` is ``max_abs / max |keras output|``, so near-zero entries cannot inflate it;
    ``shape`` is the compared shape in the torch layout; ``note`` says why a pair could not be
    compared (then both errors are infinite).
    """

    layer: str
    keras_class: str
    module: str
    shape: Tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance


class VerifyReport(Sequence[LayerError]):
    """Per-layer errors in Keras' execution order; ``print(report)`` shows the table.

    ``first_divergent`` is the first layer whose error exceeds its tolerance (``None`` when the
    conversion is exact), ``exact`` whether there is none.
    """

    def __init__(self, model: str, records: Sequence[LayerError]) -> None:
        self.model = model
        self.records: Tuple[LayerError, ...] = tuple(records)

    def __getitem__(self, index):  # type: ignore[override]
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[LayerError]:
        return iter(self.records)

    @property
    def first_divergent(self) -> Optional[LayerError]:
        return next((r for r in self.records if not r.ok), None)

    @property
    def exact(self) -> bool:
        return self.first_divergent is None

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.records), default=0.0)

    def summary(self) -> str:
        """One line: the verdict, and the first divergent layer when there is one."""
        head = f"verify {self.model!r}: {len(self)} layer calls"
        bad = self.first_divergent
        if bad is None:
            return f"{head}, exact: max relative error {self.max_rel:.2g} within tolerance"
        why = bad.note or f"relative error {bad.max_rel:.3g} > tolerance {bad.tolerance:g} ({bad.dtype})"
        return f"{head}, NOT exact: first divergent layer {bad.layer!r} ({bad.keras_class}): {why}"

    def table(self) -> str:
        """The per-layer table, one row per Keras layer call in execution order."""
        header = ("#", "Keras layer", "class", "torch module", "shape", "max abs", "max rel", "tol", "")
        rows = [header]
        for i, r in enumerate(self.records):
            mark = "ok" if r.ok else "DIVERGES" + (f" ({r.note})" if r.note else "")
            rows.append((
                str(i), r.layer, r.keras_class, r.module, "x".join(map(str, r.shape)),
                f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.tolerance:g}", mark,
            ))
        widths = [max(len(row[j]) for row in rows) for j in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table()

    def __repr__(self) -> str:
        return f"VerifyReport({self.summary()})"


class VerificationError(ValueError):
    """A converted module that does not reproduce its Keras model; ``report`` has the table."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(str(report))
        self.report = report


def _tolerance(dtypes: Sequence[str], rtol: Optional[float]) -> float:
    if rtol is not None:
        return rtol
    tolerances = [TOLERANCES.get(getattr(torch, name, None), 0.0) for name in dtypes]
    return max(tolerances)  # the less precise dtype sets the bar; integers must match exactly


def is_channels_first(keras: Any, model: Any) -> bool:
    """Whether the model's image layers are channels-first (converted modules keep that layout)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if is_channels_first(keras, layer):
                return True
        elif layer.get_config().get("data_format") == "channels_first":
            return True
    return False


def _ordered_inputs(inputs: Inputs, names: Sequence[Tuple[str, str]]) -> Tuple[Tensor, ...]:
    """``inputs`` as a tuple in the Keras model's input order; ``names`` holds each input's Keras
    name and the converted module's argument name, either of which may key a dict."""
    if isinstance(inputs, Mapping):
        ordered = []
        for keras_name, torch_name in names:
            key = keras_name if keras_name in inputs else torch_name
            if key not in inputs:
                raise ValueError(
                    f"Invalid value for argument `inputs`. Expected a tensor for every model input "
                    f"{[n for n, _ in names]}. Received keys {sorted(map(str, inputs))}."
                )
            ordered.append(inputs[key])
        extra = set(inputs) - {n for pair in names for n in pair}
        if extra:
            raise ValueError(
                f"Invalid value for argument `inputs`. The model has no input named "
                f"{sorted(map(str, extra))}; its inputs are {[n for n, _ in names]}."
            )
        values: Sequence[Any] = ordered
    elif isinstance(inputs, Tensor):
        values = (inputs,)
    elif isinstance(inputs, (tuple, list)):
        values = inputs
    else:
        raise TypeError(
            f"Invalid type for argument `inputs`. Expected a Tensor, a tuple of Tensors or a dict "
            f"of Tensors by input name. Received inputs of type {type(inputs).__name__}."
        )
    if not all(isinstance(v, Tensor) for v in values):
        raise TypeError(
            f"Invalid type for argument `inputs`. Expected Tensors. Received "
            f"{[type(v).__name__ for v in values]}."
        )
    if len(values) != len(names):
        raise ValueError(
            f"Invalid value for argument `inputs`. The model takes {len(names)} input(s) "
            f"{[n for n, _ in names]}. Received {len(values)}."
        )
    return tuple(values)


def _check_input(x: Tensor, name: str, keras_shape: Tuple[Optional[int], ...], channels_first: bool) -> None:
    """``x`` must be the Keras input ``name`` in the torch layout: (N, C, H, W) or (N, F)."""
    if len(keras_shape) == 4 and not channels_first:
        _, h, w, c = keras_shape
        expected: Tuple[Optional[int], ...] = (None, c, h, w)
    else:
        expected = tuple(keras_shape)
    if x.dim() != len(expected) or any(e is not None and e != s for e, s in zip(expected[1:], x.shape[1:])):
        layout = {4: "(N, C, H, W)", 2: "(N, F)"}.get(len(expected), f"rank {len(expected)}")
        shown = "(N, " + ", ".join("?" if e is None else str(e) for e in expected[1:]) + ")"
        raise ValueError(
            f"Invalid value for argument `inputs`. Input {name!r} must have shape {shown}, "
            f"{layout} as the converted module takes it. Received shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise TypeError(f"Invalid dtype for input {name!r}. Expected a float tensor. Received {x.dtype}.")


class _LeafTracer(torch.fx.Tracer):
    """Traces only the root's forward: every submodule call is one node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _torch_calls(module: nn.Module, keras_model: Any) -> Tuple[torch.fx.GraphModule, List[torch.fx.Node]]:
    """The module as a GraphModule whose ``call_module`` nodes carry ``meta["keras_layer"]``.

    A module ``from_keras`` built has them; any other module (the one ``to_source`` writes) is
    traced, and its submodule calls are matched in order with those of ``from_keras(keras_model)``,
    which must have the same classes.
    """
    if isinstance(module, torch.fx.GraphModule):
        calls = [n for n in module.graph.nodes if n.op == "call_module"]
        if calls and all("keras_layer" in n.meta for n in calls):
            return module, calls
    from .convert import from_keras

    reference = from_keras(keras_model)
    expected = [n for n in reference.graph.nodes if n.op == "call_module"]
    try:
        graph = _LeafTracer().trace(module)
    except Exception as exc:  # torch.fx raises many kinds on untraceable Python
        raise ValueError(
            f"verify: could not trace module {type(module).__name__} with torch.fx "
            f"({type(exc).__name__}); verify compares the module from_keras or to_source made."
        ) from exc
    traced = torch.fx.GraphModule(module, graph)
    calls = [n for n in traced.graph.nodes if n.op == "call_module"]
    for i, (node, ref) in enumerate(zip(calls, expected)):
        ours, theirs = type(traced.get_submodule(node.target)), type(reference.get_submodule(ref.target))
        if not (ours is theirs or issubclass(theirs, torch.fx.GraphModule)):  # nested model: any class
            raise ValueError(
                f"verify: call #{i} of module {type(module).__name__} is {node.target!r} "
                f"({ours.__name__}) where Keras layer {ref.meta['keras_layer']!r} converts to "
                f"{theirs.__name__}; verify compares the module from_keras or to_source made."
            )
        node.meta.update(keras_layer=ref.meta["keras_layer"], keras_class=ref.meta["keras_class"])
    if len(calls) != len(expected):
        raise ValueError(
            f"verify: module {type(module).__name__} makes {len(calls)} submodule calls where the "
            f"Keras model has {len(expected)} layer calls; verify compares the module from_keras or "
            f"to_source made."
        )
    return traced, calls


def _run_torch(graph_module: torch.fx.GraphModule, inputs: Tuple[Tensor, ...]) -> Dict[torch.fx.Node, Any]:
    outputs: Dict[torch.fx.Node, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            if n.op in ("placeholder", "call_module"):
                outputs[n] = result
            return result

    with torch.no_grad():
        Recorder(graph_module).run(*inputs)
    return outputs


def _run_keras(keras: Any, source: KerasGraph, inputs: List[np.ndarray]) -> List[List[Any]]:
    """Each layer call's outputs, running Keras' graph one call at a time in inference mode."""
    from .convert import CONVERTERS

    values: Dict[int, Any] = {entry.tensor: x for entry, x in zip(source.inputs, inputs)}
    results: List[List[Any]] = []
    with torch.no_grad():
        for node in source.nodes:
            args = [values[t] for t in node.inputs]
            converter = CONVERTERS.get(type(node.layer).__name__)
            as_list = converter.list_input if converter is not None else len(args) > 1
            out = node.layer(args if as_list else args[0], training=False)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            for tensor, value in zip(node.outputs, outs):
                values[tensor] = value
            results.append(outs)
    return results


def _flatten_permutations(
    graph_module: torch.fx.GraphModule, outputs: Dict[torch.fx.Node, Any]
) -> Dict[torch.fx.Node, np.ndarray]:
    """Nodes whose features come in torch's (c, h, w) order after a converted ``Flatten`` (which
    Keras orders (h, w, c)): torch feature f is Keras feature ``index[f]``."""
    permutations: Dict[torch.fx.Node, np.ndarray] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_module":
            continue
        sub = graph_module.get_submodule(node.target)
        source = node.args[0] if len(node.args) == 1 and isinstance(node.args[0], torch.fx.Node) else None
        if isinstance(sub, Flatten) and not sub.channels_last and source is not None:
            shape = tuple(outputs[source].shape) if source in outputs else None
            if shape is None or len(shape) != 4:
                continue
            _, c, h, w = shape
            permutations[node] = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
        elif source in permutations and not isinstance(sub, nn.Linear):
            permutations[node] = permutations[source]  # feature-wise layers keep the order
    return permutations


def _as_numpy(keras: Any, value: Any) -> Tuple[np.ndarray, str]:
    """A Keras output as a float64 array (exact for every float dtype) and its dtype's name."""
    if isinstance(value, Tensor):
        return value.detach().cpu().double().numpy(), str(value.dtype).replace("torch.", "")
    array = np.asarray(keras.ops.convert_to_numpy(value))
    return array.astype(np.float64), str(array.dtype)


def _compare(
    keras_outs: List[Tuple[np.ndarray, str]], torch_outs: List[Tensor], rtol: Optional[float]
) -> Tuple[Tuple[int, ...], str, float, float, float, str]:
    """(shape, dtypes, max_abs, max_rel, tolerance, note) of one layer call's outputs."""
    if len(keras_outs) != len(torch_outs):
        note = f"{len(torch_outs)} outputs, Keras has {len(keras_outs)}"
        return (), "", math.inf, math.inf, 0.0, note
    names = {name for _, name in keras_outs} | {str(t.dtype).replace("torch.", "") for t in torch_outs}
    dtypes = "/".join(sorted(names))
    tolerance = _tolerance(sorted(names), rtol)
    worst_abs, scale = 0.0, 0.0
    for (expected, _), t in zip(keras_outs, torch_outs):
        if tuple(expected.shape) != tuple(t.shape):
            note = f"shape {tuple(t.shape)}, Keras {tuple(expected.shape)}"
            return tuple(t.shape), dtypes, math.inf, math.inf, tolerance, note
        actual = t.detach().cpu().double().numpy()
        # Equal entries (infinities included) and NaN in both count as agreeing; a NaN in one only
        # is an infinite error.
        same = (expected == actual) | (np.isnan(expected) & np.isnan(actual))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(expected - actual))
        finite = np.abs(expected[np.isfinite(expected)])
        if diff.size:
            worst_abs = max(worst_abs, math.inf if np.isnan(diff).any() else float(diff.max()))
        if finite.size:
            scale = max(scale, float(finite.max()))
    rel = worst_abs / scale if scale > 0 else (0.0 if worst_abs == 0 else math.inf)
    return tuple(torch_outs[0].shape), dtypes, worst_abs, rel, tolerance, ""


def verify(
    keras_model: Any, module: nn.Module, inputs: Inputs, *, rtol: Optional[float] = None
) -> VerifyReport:
    """Compare every Keras layer call with its torch counterpart. Keras: no equivalent.

    Args:
        keras_model: a Keras Sequential or Functional model.
        module: its conversion (``from_keras`` or the module ``to_source`` wrote).
        inputs: in the module's layout: an (N, C, H, W) image or (N, F) vector tensor, a tuple of
            them in the Keras model's input order, or a dict keyed by input name.
        rtol: the allowed relative error per layer; default by dtype (``TOLERANCES``: 1e-5 for
            float32, 1e-10 for float64), the less precise of the two outputs' dtypes deciding.

    Returns:
        A ``VerifyReport``: one ``LayerError`` per Keras layer call in execution order, with
        ``first_divergent`` and ``exact``; ``print(report)`` shows the table. Both models run in
        inference mode; ``module``'s training flags are restored.

    Raises:
        TypeError / ValueError: a non-Keras model, a non-module, inputs of the wrong kind or shape.
    """
    keras = import_keras()
    if not isinstance(keras_model, keras.Model):
        raise TypeError(
            f"Invalid type for argument `keras_model`. Expected a keras.Model. Received an object of "
            f"type {type(keras_model).__name__}."
        )
    if isinstance(module, keras.layers.Layer):  # on Keras' torch backend, also an nn.Module
        raise TypeError(
            f"Invalid type for argument `module`. Expected the converted torch module. Received the "
            f"Keras {type(module).__name__} {module.name!r}."
        )
    check_module(module, "module")
    source = keras_graph(keras, keras_model)
    graph_module, calls = _torch_calls(module, keras_model)
    placeholders = [str(n.target) for n in graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(source.inputs):
        raise ValueError(
            f"verify: module {type(module).__name__} takes {len(placeholders)} input(s) where the "
            f"Keras model takes {len(source.inputs)}."
        )
    ordered = _ordered_inputs(inputs, [(e.name, p) for e, p in zip(source.inputs, placeholders)])
    channels_first = is_channels_first(keras, keras_model)
    for x, entry in zip(ordered, source.inputs):
        _check_input(x, entry.name, entry.shape, channels_first)
    parameter = next(iter(module.parameters()), None)
    if parameter is not None and any(x.dtype != parameter.dtype for x in ordered):
        raise TypeError(
            f"Invalid dtype for argument `inputs`. Expected {parameter.dtype}, the module's parameter "
            f"dtype. Received {[x.dtype for x in ordered]}."
        )

    training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        torch_outputs = _run_torch(graph_module, ordered)
    finally:
        for m, flag in training.items():
            m.training = flag
    # NumPy has no bfloat16: float32 holds it exactly, and each Keras layer casts to its own dtype.
    arrays = [(x.float() if x.dtype == torch.bfloat16 else x).detach().cpu().numpy() for x in ordered]
    keras_inputs = [a.transpose(0, 2, 3, 1) if a.ndim == 4 and not channels_first else a for a in arrays]
    keras_results = _run_keras(keras, source, keras_inputs)
    permutations = _flatten_permutations(graph_module, torch_outputs)

    by_layer: Dict[str, List[torch.fx.Node]] = {}
    for node in calls:
        by_layer.setdefault(node.meta["keras_layer"], []).append(node)
    records = []
    for node, outs in zip(source.nodes, keras_results):
        layer = node.layer
        counterparts = by_layer.get(layer.name, [])
        keras_outs = [_as_numpy(keras, o) for o in outs]
        if not counterparts:
            missing = LayerError(layer.name, type(layer).__name__, "", (), "", math.inf, math.inf, 0.0,
                                 "no torch counterpart")
            records.append(missing)
            continue
        torch_node = counterparts.pop(0)
        result = torch_outputs[torch_node]
        torch_outs = list(result) if isinstance(result, (list, tuple)) else [result]
        keras_outs = [
            (k.transpose(0, 3, 1, 2) if k.ndim == 4 and not channels_first else k, dtype)
            for k, dtype in keras_outs
        ]
        if torch_node in permutations and len(keras_outs) == 1 and keras_outs[0][0].ndim == 2:
            (features, dtype), index = keras_outs[0], permutations[torch_node]
            if features.shape[1] == index.size:
                keras_outs = [(features[:, index], dtype)]
        shape, dtype, max_abs, max_rel, tolerance, note = _compare(keras_outs, torch_outs, rtol)
        records.append(LayerError(
            layer.name, type(layer).__name__, str(torch_node.target), shape, dtype, max_abs, max_rel,
            tolerance, note,
        ))
    return VerifyReport(keras_model.name, records)


def checked(keras_model: Any, module: nn.Module, inputs: Optional[Inputs]) -> nn.Module:
    """``module``, after ``verify`` found it exact on ``inputs`` (no check when ``inputs`` is None).

    Raises:
        VerificationError: a ``ValueError`` whose message is the report (summary line, then the
        table), naming the first divergent layer.
    """
    if inputs is None:
        return module
    report = verify(keras_model, module, inputs)
    if not report.exact:
        raise VerificationError(report)
    return module
