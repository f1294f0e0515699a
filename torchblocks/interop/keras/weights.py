"""``load_keras_weights``: Keras weights staged into a torch module, all or nothing.

A module built by ``from_keras`` knows the Keras layer behind each submodule (its graph records
it), so each Keras layer loads into the submodule built from it, by name. Any other module is
matched kind by kind in order (the k-th Keras ``Conv2D`` into the k-th torch conv). Every tensor
and every numerics-changing config entry is checked and staged first (``staging``), and the module
is written only when nothing is wrong.
"""
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from ...norm import BatchNorm
from .activations import FEATUREWISE_TYPES
from .layers import Flatten, LayerNorm, LayerScale, Normalization
from .plan import flatten_permutation
from .sources import KerasRecord, read_source
from .staging import STAGERS, Staged, TorchUnit, stage_pair, torch_label

__all__ = ["KerasLoadResult", "Staged", "TorchUnit", "load_keras_weights", "stage_pair"]

_TORCH_KIND_NAMES = {
    "conv": "Conv2d", "depthwise": "DepthwiseConv2d", "separable": "SeparableConv2d",
    "transpose": "ConvTranspose2d", "bn": "BatchNorm", "dense": "Linear", "layernorm": "LayerNorm",
    "normalization": "Normalization", "layerscale": "LayerScale",
}


class KerasLoadResult(NamedTuple):
    """What ``load_keras_weights`` loaded: (Keras layer, torch layer) name pairs, and the torch
    layers (``missing``) and Keras layers (``unexpected``) left out, only ever non-empty with
    ``strict=False``."""

    loaded: List[Tuple[str, str]]
    missing: List[str]
    unexpected: List[str]


def _has_state(module: nn.Module) -> bool:
    return len(module.state_dict()) > 0


def _torch_kind(module: nn.Module) -> Optional[str]:
    """The kind of Keras layer ``module`` receives; "" for state of no known kind, None for none."""
    for cls, kind in (
        (SeparableConv2d, "separable"), (DepthwiseConv2d, "depthwise"), (Conv2d, "conv"),
        (nn.ConvTranspose2d, "transpose"), ((BatchNorm, _BatchNorm), "bn"), (nn.Linear, "dense"),
        ((nn.LayerNorm, LayerNorm), "layernorm"), (Normalization, "normalization"), (LayerScale, "layerscale"),
    ):
        if isinstance(module, cls):
            return kind if _has_state(module) else None
    if isinstance(module, nn.Conv2d):
        # A plain torch conv with one group per input channel is a Keras DepthwiseConv2D.
        return "depthwise" if 1 < module.groups == module.in_channels else "conv"
    own = [*module.parameters(recurse=False), *(b for _, b in module.named_buffers(recurse=False))]
    return "" if own and _has_state(module) else None


def _torch_units(module: nn.Module) -> List[TorchUnit]:
    """Weighted leaf layers in ``named_modules()`` order; a supported unit's children are part of it."""
    units: List[TorchUnit] = []
    claimed: Optional[str] = None  # name of the last supported unit: its children are skipped
    for name, sub in module.named_modules():
        if claimed is not None and (claimed == "" or name.startswith(claimed + ".")):
            continue
        kind = _torch_kind(sub)
        if kind is not None:
            units.append(TorchUnit(name, kind, sub))
            if kind:
                claimed = name
    return units


def _keras_names(module: nn.Module) -> Dict[str, str]:
    """Torch submodule path -> the Keras layer it was converted from, as ``from_keras`` records it."""
    names: Dict[str, str] = {}
    graphs = [(name, sub.graph) for name, sub in module.named_modules() if isinstance(sub, torch.fx.GraphModule)]
    for prefix, graph in graphs:
        for node in graph.nodes:
            if node.op == "call_module" and "keras_layer" in node.meta:
                names[f"{prefix}.{node.target}" if prefix else str(node.target)] = str(node.meta["keras_layer"])
    return names


_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.ReLU6, nn.Hardtanh) + FEATUREWISE_TYPES


class _ChildrenTracer(torch.fx.Tracer):
    """Traces one module's own forward: every submodule it calls stays a call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _owner_graph(owner: nn.Module, flatten: str) -> torch.fx.Graph:
    if isinstance(owner, torch.fx.GraphModule):
        return owner.graph
    try:
        return _ChildrenTracer().trace(owner)
    except Exception as exc:  # tracing runs the module's own Python code
        raise ValueError(
            f"load_keras_weights: Flatten {flatten!r} kept torch's feature order, so the Dense/BatchNorm "
            f"layers reading it need their rows permuted, but the forward of the module holding it "
            f"({type(owner).__name__}) cannot be traced to find them: {exc}"
        ) from exc


def _flatten_permutations(module: nn.Module) -> Dict[str, np.ndarray]:
    """Torch path -> row permutation of each Dense/BN fed by a ``Flatten`` that kept torch's order
    (``permuted_for``), found in the graph of the module holding it, as ``from_keras`` planned it."""
    owners: Dict[str, List[str]] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, Flatten) and sub.permuted_for:
            parent, _, child = name.rpartition(".")
            owners.setdefault(parent, []).append(child)
    found: Dict[str, np.ndarray] = {}
    for prefix, children in owners.items():
        owner = module.get_submodule(prefix) if prefix else module
        graph = _owner_graph(owner, children[0])
        for node in graph.nodes:
            if node.op != "call_module" or node.target not in children:
                continue
            index = flatten_permutation(owner.get_submodule(str(node.target)).permuted_for)
            stack = list(node.users)
            while stack:
                user = stack.pop()
                target = owner.get_submodule(str(user.target)) if user.op == "call_module" else None
                path = f"{prefix}.{user.target}" if prefix else str(user.target)
                if isinstance(target, (nn.Linear, BatchNorm, _BatchNorm)):
                    found[path] = index
                    if not isinstance(target, nn.Linear):
                        stack.extend(user.users)
                elif isinstance(target, _PASS_THROUGH):
                    stack.extend(user.users)
                else:
                    raise ValueError(
                        f"load_keras_weights: the features of Flatten {node.target!r} reach "
                        f"{user.format_node()}, not only Dense/BatchNormalization layers; cannot tell "
                        f"which rows to permute."
                    )
    return found


def _pair(records: List[KerasRecord], units: List[TorchUnit], names: Dict[str, str], staged: Staged,
          leftovers: List[str], result: KerasLoadResult) -> List[Tuple[KerasRecord, TorchUnit]]:
    """Keras records paired with torch units: by Keras layer name where the module records the
    Keras layer of each unit and those are exactly the source's layers (the model it was converted
    from), else kind by kind in order. Left-over layers go to ``leftovers``, misfits to ``staged``."""
    pairs: List[Tuple[KerasRecord, TorchUnit]] = []
    named = {names.get(u.name) for u in units if u.kind}
    if units and None not in named and named == {r.name for r in records if r.kind}:
        wanted = {names[u.name]: u for u in units if u.kind}
        used = set()
        for record in records:
            unit = wanted.get(record.name)
            if unit is None or record.name in used:
                leftovers.append(f"Keras {record.name!r} ({record.class_name}): no torch layer was converted from it")
                result.unexpected.append(record.name)
                continue
            used.add(record.name)
            if unit.kind != record.kind:
                staged.problems.append(
                    f"Keras {record.name!r} ({record.class_name}) -> {torch_label(unit)}: a "
                    f"{_TORCH_KIND_NAMES.get(record.kind, record.class_name)} layer cannot load into it"
                )
                continue
            pairs.append((record, unit))
        for keras_name, unit in wanted.items():
            if keras_name not in used:
                leftovers.append(f"{torch_label(unit)}: no Keras layer {keras_name!r} to load it")
                result.missing.append(unit.name)
        return pairs
    nested = [r.name for r in records if r.nested]
    if nested:
        raise ValueError(
            f"load_keras_weights: the .weights.h5 file holds nested models (layers {nested[:3]}...), whose "
            f"layer order such a file does not record; pass the Keras model or a .keras file, or load into "
            f"the module from_keras built."
        )
    for record in records:
        if not record.kind:
            leftovers.append(f"Keras {record.name!r} ({record.class_name}): layer kind not supported")
            result.unexpected.append(record.name)
    for unit in units:
        if not unit.kind:
            leftovers.append(f"{torch_label(unit)}: layer kind not supported")
            result.missing.append(unit.name)
    for kind in STAGERS:
        keras_side = [r for r in records if r.kind == kind]
        torch_side = [u for u in units if u.kind == kind]
        pairs.extend(zip(keras_side, torch_side))
        for record in keras_side[len(torch_side):]:
            leftovers.append(
                f"Keras {record.name!r} ({record.class_name}): no torch {_TORCH_KIND_NAMES[kind]} left to receive it"
            )
            result.unexpected.append(record.name)
        for unit in torch_side[len(keras_side):]:
            leftovers.append(f"{torch_label(unit)}: no Keras layer of its kind left to load it")
            result.missing.append(unit.name)
    return pairs


def load_keras_weights(
    module: nn.Module, keras_layer_or_model_or_path: Any, strict: bool = True
) -> KerasLoadResult:
    """Copy Keras weights into ``module``, converting layouts for (N, C, H, W) tensors.

    A module built by ``from_keras`` receives each Keras layer's weights in the submodule converted
    from it, with the row permutation ``from_keras`` applied to Dense/BatchNormalization layers after
    a ``Flatten``. Any other module is matched kind by kind: the k-th Keras ``Conv2D``
    (``DepthwiseConv2D``, ``SeparableConv2D``, ``Conv2DTranspose``, ``BatchNormalization``,
    ``Dense``, ``LayerNormalization``, ``Normalization``) in ``model.layers`` order loads into the
    k-th torch ``Conv2d`` (``DepthwiseConv2d`` or ``nn.Conv2d`` with one group per channel,
    ``SeparableConv2d``, ``nn.ConvTranspose2d``, ``BatchNorm``/``nn.BatchNorm*d``, ``nn.Linear``,
    ``nn.LayerNorm``, ...) in ``module.named_modules()`` order. Shapes are checked, and so is the
    Keras config that changes numerics (kernel size, strides, dilation, padding, depth multiplier,
    groups, use_bias, a torch layer's own activation); BatchNormalization also copies epsilon and
    momentum (Keras m is torch 1 - m).

    Every problem is collected first and reported in one ``ValueError`` naming the Keras and the
    torch layers (and the file and the place inside it); the module is written only when there is
    none, so it is never half-loaded.

    Args:
        module: the torch module to fill: a single layer or a whole model.
        keras_layer_or_model_or_path: a built Keras layer or model, a ``.keras`` file (read with
            Keras' ``safe_mode`` on) or a Keras 3 ``.weights.h5`` file of a Sequential or
            Functional model (read with h5py alone; it holds no configs, so only shapes are
            checked and epsilon/momentum keep the torch values).
        strict: if False, layers left over on either side are reported in the result instead of
            raising (shape and config mismatches still raise).

    Returns:
        ``KerasLoadResult(loaded, missing, unexpected)``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"Invalid type for argument `module`. Expected an nn.Module. Received an object of type "
            f"{type(module).__name__}."
        )
    if not isinstance(strict, bool):
        raise TypeError(f"Invalid type for argument `strict`. Expected a bool. Received strict={strict!r}.")
    records = read_source(keras_layer_or_model_or_path)
    units = _torch_units(module)
    permutations = _flatten_permutations(module)
    staged = Staged()
    result = KerasLoadResult([], [], [])
    leftovers: List[str] = []
    position = {id(record): i for i, record in enumerate(records)}
    pairs = _pair(records, units, _keras_names(module), staged, leftovers, result)
    for record, unit in pairs:
        stage_pair(staged, record, unit, permutations.get(unit.name))
    problems = staged.problems + (leftovers if strict else [])
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"load_keras_weights: {len(problems)} layer problem(s); nothing was loaded, the module "
            f"is unchanged:\n{listing}"
        )
    staged.apply()
    result.loaded.extend(
        (record.name, unit.name) for record, unit in sorted(pairs, key=lambda p: position[id(p[0])])
    )
    return result
