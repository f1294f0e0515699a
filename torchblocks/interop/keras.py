"""Keras 3 interop: copy Keras weights into torch modules, convert Keras models to torchblocks.

``load_keras_weights(module, source)`` copies the weights of a Keras layer, a Keras model, a
``.keras`` file or a ``.weights.h5`` file into an existing torch module; ``from_keras(model)``
builds the torch module too. Both work on channels-first (N, C, H, W) tensors where Keras used
channels-last (N, H, W, C), and convert the weight layouts:

================================  =========================================================
Keras                             torch
================================  =========================================================
Conv2D kernel (kh, kw, C/g, O)    ``Conv2d.weight`` (O, C/g, kh, kw)
DepthwiseConv2D (kh, kw, C, m)    ``DepthwiseConv2d.weight`` (C·m, 1, kh, kw), channel c·m + j
SeparableConv2D                   ``SeparableConv2d.depthwise`` / ``.pointwise`` (O, C·m, 1, 1)
BatchNormalization                ``BatchNorm.bn`` / ``nn.BatchNorm*d``; eps, momentum 1 - m
Dense kernel (in, out)            ``Dense`` / ``nn.Linear`` weight (out, in)
================================  =========================================================

Keras is imported only inside the functions that need it (``pip install "torchblocks[keras]"``);
where ``KERAS_BACKEND`` is unset and TensorFlow is not installed, the torch backend is selected.
A ``.weights.h5`` file is read with h5py alone.
"""
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.fx
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from ..activations import get_activation, is_identity
from ..conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from ..linear import Dense
from ..norm import BatchNorm
from ..padding import effective_kernel, is_static_same
from ..pooling import AvgPool2d, MaxPool2d

__all__ = ["KerasLoadResult", "from_keras", "load_keras_weights"]

_EXTRA_HINT = 'Install it with: pip install "torchblocks[keras]"'

# Keras layer kinds that carry weights, keyed by the snake-case class name Keras 3 uses for the
# groups of a .weights.h5 file ("conv2d", "conv2d_1", ...), with the Keras class name for messages.
_H5_KINDS: Dict[str, Tuple[str, str]] = {
    "conv2d": ("conv", "Conv2D"),
    "depthwise_conv2d": ("depthwise", "DepthwiseConv2D"),
    "separable_conv2d": ("separable", "SeparableConv2D"),
    "batch_normalization": ("bn", "BatchNormalization"),
    "dense": ("dense", "Dense"),
}
# Variable order within a layer's group of a .weights.h5 file (Keras saves trainable, then
# non-trainable variables, in creation order).
_H5_VAR_ROLES: Dict[str, Tuple[str, ...]] = {
    "conv": ("kernel", "bias"),
    "depthwise": ("kernel", "bias"),
    "separable": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "dense": ("kernel", "bias"),
}
_TORCH_KIND_NAMES = {
    "conv": "Conv2d",
    "depthwise": "DepthwiseConv2d",
    "separable": "SeparableConv2d",
    "bn": "BatchNorm",
    "dense": "Linear",
}


# --------------------------------------------------------------------------- optional imports


def _import_keras() -> Any:
    """Import keras 3, choosing the torch backend when no backend is configured and TF is absent."""
    if (
        "keras" not in sys.modules
        and "KERAS_BACKEND" not in os.environ
        and importlib.util.find_spec("tensorflow") is None
    ):
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        keras = importlib.import_module("keras")
    except ImportError as exc:
        raise ImportError(
            f"The Keras interop needs keras>=3 ({exc}). {_EXTRA_HINT}, and set KERAS_BACKEND=torch "
            f"if TensorFlow is not installed."
        ) from exc
    if not hasattr(keras, "ops"):
        raise ImportError(f"The Keras interop needs keras>=3; found {keras.__version__}. {_EXTRA_HINT}")
    return keras


def _import_h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as exc:
        raise ImportError(f"Reading .weights.h5 files needs h5py ({exc}). {_EXTRA_HINT}") from exc


# --------------------------------------------------------------------------- weight records


@dataclass
class _KerasRecord:
    """One Keras layer's weights, from a layer object or from a .weights.h5 group."""

    name: str
    class_name: str
    kind: str  # "conv" | "depthwise" | "separable" | "bn" | "dense" | "" (unsupported)
    arrays: Dict[str, np.ndarray]
    config: Optional[Dict[str, Any]]  # None when read from a .weights.h5 file
    problem: str = ""  # set when the record itself cannot be used


@dataclass
class _TorchUnit:
    """One torch layer that receives one Keras layer's weights."""

    name: str
    kind: str  # as _KerasRecord.kind, "" for a layer with parameters of no supported kind
    module: nn.Module


@dataclass
class _Staged:
    """Everything a load will write, gathered before anything is written."""

    copies: List[Tuple[Tensor, Tensor]] = field(default_factory=list)
    attributes: List[Tuple[nn.Module, str, float]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def apply(self) -> None:
        with torch.no_grad():
            for target, value in self.copies:
                target.copy_(value)
        for module, attribute, value in self.attributes:
            setattr(module, attribute, value)


class KerasLoadResult(NamedTuple):
    """What ``load_keras_weights`` loaded: (Keras layer, torch layer) name pairs, and the torch
    layers (``missing``) and Keras layers (``unexpected``) left out, only ever non-empty with
    ``strict=False``."""

    loaded: List[Tuple[str, str]]
    missing: List[str]
    unexpected: List[str]


def _keras_kind(keras: Any, layer: Any) -> str:
    layers = keras.layers
    for cls, kind in (
        (layers.SeparableConv2D, "separable"),
        (layers.DepthwiseConv2D, "depthwise"),
        (layers.Conv2D, "conv"),
        (layers.BatchNormalization, "bn"),
        (layers.Dense, "dense"),
    ):
        if isinstance(layer, cls):
            return kind
    return ""


def _record_from_layer(keras: Any, layer: Any) -> _KerasRecord:
    arrays = {v.name: np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights}
    return _KerasRecord(layer.name, type(layer).__name__, _keras_kind(keras, layer), arrays, layer.get_config())


def _records_from_model(keras: Any, model: Any) -> List[_KerasRecord]:
    """Weighted layers in ``model.layers`` order, nested models flattened in place."""
    records: List[_KerasRecord] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            records.extend(_records_from_model(keras, layer))
        elif layer.weights:
            records.append(_record_from_layer(keras, layer))
    return records


def _h5_roles(kind: str, count: int) -> Tuple[Optional[Tuple[str, ...]], str]:
    """Names of a layer's ``count`` saved variables, or a problem where they cannot be told apart."""
    if kind == "bn":
        if count == 4:
            return ("gamma", "beta", "moving_mean", "moving_variance"), ""
        if count == 2:
            return ("moving_mean", "moving_variance"), ""
        if count == 3:
            return None, (
                "3 saved variables: a .weights.h5 file cannot tell whether gamma (scale=False) or "
                "beta (center=False) is missing; pass the Keras model or a .keras file instead"
            )
    else:
        roles = _H5_VAR_ROLES[kind]
        minimum = len(roles) - 1
        if minimum <= count <= len(roles):
            return roles[:count], ""
    return None, f"unexpected number of saved variables ({count})"


def _records_from_h5(path: str) -> List[_KerasRecord]:
    """Weighted layers of a Keras 3 ``.weights.h5`` file of a Sequential or Functional model.

    Keras names each layer's group after its class, numbered in ``model.layers`` order
    (``conv2d``, ``conv2d_1``, ...), so the order within each layer kind is known, but not the
    order across kinds; layer configs (strides, padding, epsilon, momentum) are not in the file.
    """
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ValueError(
                    "no top-level 'layers' group: not the .weights.h5 file of a Keras 3 Sequential "
                    "or Functional model"
                )
            entries = []
            for key, group in f["layers"].items():
                match = re.fullmatch(r"(.+?)(?:_(\d+))?", key)
                base, index = match.group(1), int(match.group(2) or 0)
                if "layers" in group:
                    raise ValueError(
                        f"layer group {key!r} is a nested model, whose layer order a .weights.h5 "
                        f"file does not record; pass the Keras model or a .keras file instead"
                    )
                variables = group.get("vars")
                if variables is None or len(variables) == 0:
                    continue
                name = variables.attrs.get("name", key)
                name = name.decode() if isinstance(name, bytes) else str(name)
                arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
                entries.append((base, index, name, arrays))
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"Could not read the Keras weights file {path!r}: {exc}") from exc
    records = []
    for base, _, name, arrays in sorted(entries, key=lambda e: (e[0], e[1])):
        kind, class_name = _H5_KINDS.get(base, ("", base))
        record = _KerasRecord(name, class_name, kind, {}, None)
        if kind:
            roles, problem = _h5_roles(kind, len(arrays))
            if roles is None:
                record.problem = problem
            else:
                record.arrays = dict(zip(roles, arrays))
        records.append(record)
    return records


def _read_source(source: Any) -> List[_KerasRecord]:
    """Keras weight records of ``source``: a path, a model or a single layer."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No Keras file at {path!r}.")
        if path.endswith(".h5"):
            return _records_from_h5(path)
        if path.endswith(".keras"):
            keras = _import_keras()
            try:
                model = keras.saving.load_model(path, compile=False)
            except Exception as exc:  # keras raises many kinds on a corrupt archive
                raise ValueError(f"Could not read the Keras model file {path!r}: {exc}") from exc
            return _records_from_model(keras, model)
        raise ValueError(
            f"Invalid value for argument `keras_layer_or_model_or_path`. Expected a .keras or "
            f".weights.h5 file. Received {path!r}."
        )
    keras = _import_keras()
    if isinstance(source, keras.Model):
        return _records_from_model(keras, source)
    if isinstance(source, keras.layers.Layer):
        if not source.weights:
            raise ValueError(
                f"Keras layer {source.name!r} ({type(source).__name__}) has no weights; build it "
                f"(call it on an input) before loading."
            )
        return [_record_from_layer(keras, source)]
    raise TypeError(
        f"Invalid type for argument `keras_layer_or_model_or_path`. Expected a Keras layer or "
        f"model, or a path. Received an object of type {type(source).__name__}."
    )


# --------------------------------------------------------------------------- torch side


def _torch_kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, SeparableConv2d):
        return "separable"
    if isinstance(module, DepthwiseConv2d) or (
        isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels
    ):
        return "depthwise"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, (BatchNorm, _BatchNorm)):
        return "bn"
    if isinstance(module, nn.Linear):
        return "dense"
    has_state = any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )
    return "" if has_state else None


def _torch_units(module: nn.Module) -> List[_TorchUnit]:
    """Weighted leaf layers in ``named_modules()`` order; a supported unit's children are part of it."""
    units: List[_TorchUnit] = []
    claimed: Optional[str] = None  # name of the last supported unit: its children are skipped
    for name, sub in module.named_modules():
        if claimed is not None and (claimed == "" or name.startswith(claimed + ".")):
            continue
        kind = _torch_kind(sub)
        if kind is not None:
            units.append(_TorchUnit(name, kind, sub))
            if kind:
                claimed = name
    return units


def _torch_label(unit: _TorchUnit) -> str:
    return f"torch {unit.name or '<root>'!r} ({type(unit.module).__name__})"


def _describe(record: _KerasRecord, unit: _TorchUnit) -> str:
    return f"Keras {record.name!r} ({record.class_name}) -> {_torch_label(unit)}"


# --------------------------------------------------------------------------- staging per kind


def _stage_tensor(
    staged: _Staged, where: str, what: str, target: Optional[Tensor], value: np.ndarray, source_shape: Tuple[int, ...]
) -> None:
    if target is None:
        staged.problems.append(f"{where}: Keras has a {what} of shape {source_shape}, the torch layer has none")
        return
    if tuple(value.shape) != tuple(target.shape):
        staged.problems.append(
            f"{where}: Keras {what} of shape {source_shape} gives {tuple(value.shape)}, the torch "
            f"layer has {tuple(target.shape)}"
        )
        return
    tensor = torch.from_numpy(np.ascontiguousarray(value)).to(dtype=target.dtype, device=target.device)
    staged.copies.append((target, tensor))


def _padding_of(conv: nn.Conv2d) -> Union[str, Tuple[int, int]]:
    spec = getattr(conv, "padding_spec", conv.padding)
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if isinstance(spec, str):
        return spec
    return (int(spec[0]), int(spec[1]))


def _axis_padding(padding: Union[str, Tuple[int, int]], axis: int, conv: nn.Conv2d) -> Tuple[str, int]:
    """What a padding does along one axis: ("pad", p) for a static symmetric pad (0: none), or
    ("same", 0) for the per-input Keras 'same'."""
    k, s, d = conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
    if padding == "valid" or effective_kernel(k, d) == 1:
        return ("pad", 0)  # a 1×1 kernel never pads, 'same' or not
    if padding == "same":
        return ("pad", (effective_kernel(k, d) - 1) // 2) if is_static_same(k, s, d) else ("same", 0)
    return ("pad", int(padding[axis]))


def _padding_matches(keras_padding: str, conv: nn.Conv2d) -> bool:
    padding = _padding_of(conv)
    if padding == keras_padding:
        return True
    if padding not in ("valid", "same") and not isinstance(padding, tuple):
        return False  # a padding_mode other than zeros
    return all(_axis_padding(keras_padding, a, conv) == _axis_padding(padding, a, conv) for a in (0, 1))


def _check_conv_config(
    staged: _Staged, where: str, config: Optional[Dict[str, Any]], conv: nn.Conv2d, act_owner: nn.Module
) -> None:
    """Compare the Keras config entries that change numerics with the torch conv."""
    if config is None:
        return
    checks = [
        ("kernel_size", tuple(config["kernel_size"]), tuple(conv.kernel_size)),
        ("strides", tuple(config["strides"]), tuple(conv.stride)),
        ("dilation_rate", tuple(config["dilation_rate"]), tuple(conv.dilation)),
    ]
    if "groups" in config:
        checks.append(("groups", config["groups"], conv.groups))
    if "depth_multiplier" in config:
        checks.append(("depth_multiplier", config["depth_multiplier"], conv.out_channels // conv.in_channels))
    for key, keras_value, torch_value in checks:
        if keras_value != torch_value:
            staged.problems.append(f"{where}: Keras {key}={keras_value}, torch has {torch_value}")
    if not _padding_matches(config["padding"], conv):
        staged.problems.append(
            f"{where}: Keras padding={config['padding']!r}, torch has padding={_padding_of(conv)!r}"
        )
    _check_activation(staged, where, config, act_owner)


def _check_activation(staged: _Staged, where: str, config: Optional[Dict[str, Any]], owner: nn.Module) -> None:
    """A torch layer's own activation must be Keras'; without one, a separate module may follow."""
    act = getattr(owner, "act", None)
    if config is None or act is None or is_identity(act):
        return
    keras_act = config.get("activation")
    expected = None
    if isinstance(keras_act, str) and keras_act != "linear":
        try:
            expected = type(get_activation(keras_act))
        except ValueError:
            expected = None
    if expected is not type(act):
        staged.problems.append(
            f"{where}: Keras activation={keras_act!r}, torch has activation {type(act).__name__}"
        )


def _check_bias(staged: _Staged, where: str, record: _KerasRecord, bias: Optional[Tensor]) -> None:
    if "bias" not in record.arrays and bias is not None:
        staged.problems.append(f"{where}: Keras use_bias=False, the torch layer has a bias")


def _stage_conv(staged: _Staged, record: _KerasRecord, unit: _TorchUnit, where: str) -> None:
    conv: nn.Conv2d = unit.module
    kernel = record.arrays["kernel"]
    _stage_tensor(staged, where, "kernel", conv.weight, kernel.transpose(3, 2, 0, 1), kernel.shape)
    _check_conv_config(staged, where, record.config, conv, conv)


def _depthwise_weight(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, C, m) -> (C·m, 1, kh, kw), output channel c·m + j."""
    kh, kw, channels, multiplier = kernel.shape
    return kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)


def _stage_depthwise(staged: _Staged, record: _KerasRecord, unit: _TorchUnit, where: str) -> None:
    conv: nn.Conv2d = unit.module
    _stage_depthwise_kernel(staged, where, "kernel", conv, record.arrays["kernel"])
    _check_conv_config(staged, where, record.config, conv, conv)


def _stage_depthwise_kernel(staged: _Staged, where: str, what: str, conv: nn.Conv2d, kernel: np.ndarray) -> None:
    # (C, m) must match, not only C·m: the weight shape alone would accept (16, 1) for (8, 2).
    if kernel.ndim != 4 or (kernel.shape[2], kernel.shape[3]) != (
        conv.in_channels, conv.out_channels // conv.in_channels
    ):
        staged.problems.append(
            f"{where}: Keras {what} of shape {kernel.shape} (kh, kw, C, depth_multiplier) does not fit "
            f"the torch conv's in_channels={conv.in_channels}, depth_multiplier="
            f"{conv.out_channels // conv.in_channels}, weight {tuple(conv.weight.shape)}"
        )
        return
    _stage_tensor(staged, where, what, conv.weight, _depthwise_weight(kernel), kernel.shape)


def _stage_separable(staged: _Staged, record: _KerasRecord, unit: _TorchUnit, where: str) -> None:
    module: SeparableConv2d = unit.module
    depthwise, pointwise = record.arrays["depthwise_kernel"], record.arrays["pointwise_kernel"]
    _stage_depthwise_kernel(staged, where, "depthwise_kernel", module.depthwise, depthwise)
    _stage_tensor(
        staged, where, "pointwise_kernel", module.pointwise.weight, pointwise.transpose(3, 2, 0, 1), pointwise.shape
    )
    if "bias" in record.arrays:
        bias = record.arrays["bias"]
        _stage_tensor(staged, where, "bias", module.pointwise.bias, bias, bias.shape)
    _check_bias(staged, where, record, module.pointwise.bias)
    if module.depthwise.bias is not None:
        staged.problems.append(f"{where}: the torch depthwise conv has a bias, Keras' never does")
    _check_conv_config(staged, where, record.config, module.depthwise, module)


def _stage_dense(staged: _Staged, record: _KerasRecord, unit: _TorchUnit, where: str) -> None:
    linear: nn.Linear = unit.module
    kernel = record.arrays["kernel"]
    _stage_tensor(staged, where, "kernel", linear.weight, kernel.T, kernel.shape)
    _check_activation(staged, where, record.config, linear)


def _stage_bn(staged: _Staged, record: _KerasRecord, unit: _TorchUnit, where: str) -> None:
    bn: _BatchNorm = unit.module.bn if isinstance(unit.module, BatchNorm) else unit.module
    arrays = record.arrays
    if not bn.track_running_stats or bn.running_mean is None:
        staged.problems.append(f"{where}: the torch BatchNorm keeps no running statistics")
    else:
        for role, target in (("moving_mean", bn.running_mean), ("moving_variance", bn.running_var)):
            _stage_tensor(staged, where, role, target, arrays[role], arrays[role].shape)
    for role, target, default in (("gamma", bn.weight, 1.0), ("beta", bn.bias, 0.0)):
        if role in arrays:
            _stage_tensor(staged, where, role, target, arrays[role], arrays[role].shape)
        elif target is not None:
            # Keras scale=False / center=False: the torch parameter becomes the fixed identity.
            staged.copies.append((target, torch.full_like(target, default)))
    config = record.config
    if config is None:
        return
    if config.get("renorm"):
        staged.problems.append(f"{where}: Keras renorm=True has no torch equivalent")
    staged.attributes.append((bn, "eps", float(config["epsilon"])))
    staged.attributes.append((bn, "momentum", 1.0 - float(config["momentum"])))


_STAGERS: Dict[str, Callable[[_Staged, _KerasRecord, _TorchUnit, str], None]] = {
    "conv": _stage_conv,
    "depthwise": _stage_depthwise,
    "separable": _stage_separable,
    "bn": _stage_bn,
    "dense": _stage_dense,
}


def _stage_pair(staged: _Staged, record: _KerasRecord, unit: _TorchUnit) -> None:
    where = _describe(record, unit)
    if record.problem:
        staged.problems.append(f"{where}: {record.problem}")
        return
    _STAGERS[record.kind](staged, record, unit, where)
    if record.kind in ("conv", "depthwise", "dense"):
        bias = unit.module.bias
        if "bias" in record.arrays:
            _stage_tensor(staged, where, "bias", bias, record.arrays["bias"], record.arrays["bias"].shape)
        _check_bias(staged, where, record, bias)


# --------------------------------------------------------------------------- public: weights


def load_keras_weights(
    module: nn.Module, keras_layer_or_model_or_path: Any, strict: bool = True
) -> KerasLoadResult:
    """Copy Keras weights into ``module``, converting layouts for (N, C, H, W) tensors.

    Layers are matched by structure, kind by kind: the k-th Keras ``Conv2D`` (``DepthwiseConv2D``,
    ``SeparableConv2D``, ``BatchNormalization``, ``Dense``) in ``model.layers`` order loads into the
    k-th torch ``Conv2d`` (``DepthwiseConv2d``, ``SeparableConv2d``, ``BatchNorm`` or
    ``nn.BatchNorm*d``, ``nn.Linear``) in ``module.named_modules()`` order. Shapes are checked, and
    so is the Keras config that changes numerics (kernel size, strides, dilation, padding,
    depth multiplier, groups, use_bias, a torch layer's own activation); BatchNormalization also
    copies epsilon and momentum (Keras m is torch 1 - m).

    Every problem is collected first and reported in one ``ValueError`` naming the Keras and the
    torch layers; the module is written only when there is none, so it is never half-loaded.

    Args:
        module: the torch module to fill: a single layer or a whole model.
        keras_layer_or_model_or_path: a built Keras layer or model, a ``.keras`` file (read with
            ``keras.saving.load_model``) or a Keras 3 ``.weights.h5`` file of a Sequential or
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
    records = _read_source(keras_layer_or_model_or_path)
    units = _torch_units(module)
    staged = _Staged()
    result = KerasLoadResult([], [], [])
    leftovers: List[str] = []
    position = {id(record): i for i, record in enumerate(records)}
    loaded: List[Tuple[int, str, str]] = []
    for record in records:
        if not record.kind:
            leftovers.append(f"Keras {record.name!r} ({record.class_name}): layer kind not supported")
            result.unexpected.append(record.name)
    for unit in units:
        if not unit.kind:
            leftovers.append(f"{_torch_label(unit)}: layer kind not supported")
            result.missing.append(unit.name)
    for kind in _STAGERS:
        keras_side = [r for r in records if r.kind == kind]
        torch_side = [u for u in units if u.kind == kind]
        for record, unit in zip(keras_side, torch_side):
            _stage_pair(staged, record, unit)
            loaded.append((position[id(record)], record.name, unit.name))
        for record in keras_side[len(torch_side):]:
            leftovers.append(
                f"Keras {record.name!r} ({record.class_name}): no torch {_TORCH_KIND_NAMES[kind]} left "
                f"to receive it"
            )
            result.unexpected.append(record.name)
        for unit in torch_side[len(keras_side):]:
            leftovers.append(f"{_torch_label(unit)}: no Keras layer of its kind left to load it")
            result.missing.append(unit.name)
    problems = staged.problems + (leftovers if strict else [])
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"load_keras_weights: {len(problems)} layer problem(s); nothing was loaded, the module "
            f"is unchanged:\n{listing}"
        )
    staged.apply()
    result.loaded.extend((keras_name, torch_name) for _, keras_name, torch_name in sorted(loaded))
    return result


# --------------------------------------------------------------------------- conversion modules


class _Add(nn.Module):
    """Keras ``Add``: the inputs summed in order (broadcasting as Keras does)."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class _Flatten(nn.Module):
    """Keras ``Flatten`` on (N, C, H, W) input: features in Keras' (h, w, c) order when
    ``channels_last``, else torch's (c, h, w) order with the next layers' rows permuted."""

    channels_last: Final[bool]

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}"


class _GlobalAvgPool2d(nn.Module):
    """Keras ``GlobalAveragePooling2D``: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with keepdims."""

    keepdims: Final[bool]

    def __init__(self, keepdims: bool) -> None:
        super().__init__()
        self.keepdims = keepdims

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"keepdims={self.keepdims}"


# --------------------------------------------------------------------------- public: models


_SUPPORTED_LAYERS = (
    "InputLayer, Conv2D, DepthwiseConv2D, SeparableConv2D, BatchNormalization, Dense, Activation, "
    "ReLU, Add, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Dropout, "
    "ZeroPadding2D, nested Sequential/Functional models"
)


def _unsupported(layer: Any, why: str) -> ValueError:
    return ValueError(f"from_keras: layer {layer.name!r} of class {type(layer).__name__}: {why}.")


def _channels_last(layer: Any, config: Dict[str, Any]) -> None:
    if config.get("data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, f"data_format={config['data_format']!r} is not supported (only channels_last)")


def _activation(layer: Any, config: Dict[str, Any]) -> Optional[str]:
    name = config.get("activation")
    if name is None:
        return None
    if not isinstance(name, str):
        raise _unsupported(layer, f"activation {name!r} is not a built-in Keras activation")
    try:
        get_activation(name)
    except ValueError as exc:
        raise _unsupported(layer, f"activation {name!r} is not supported") from exc
    return name


def _relu(layer: Any, config: Dict[str, Any]) -> nn.Module:
    max_value, slope, threshold = config["max_value"], config["negative_slope"], config["threshold"]
    if threshold == 0 and slope == 0:
        if max_value is None:
            return nn.ReLU()
        return nn.ReLU6() if max_value == 6 else nn.Hardtanh(0.0, float(max_value))
    if threshold == 0 and max_value is None:
        return nn.LeakyReLU(float(slope))
    raise _unsupported(
        layer, f"ReLU(max_value={max_value}, negative_slope={slope}, threshold={threshold}) is not supported"
    )


def _load_into(module: nn.Module, record: _KerasRecord) -> None:
    """Stage and apply one converted layer's weights, through the same checks as loading."""
    staged = _Staged()
    _stage_pair(staged, record, _TorchUnit("", record.kind, module))
    if staged.problems:
        raise ValueError("from_keras: " + "; ".join(staged.problems))
    staged.apply()


def _convert_layer(
    keras: Any, layer: Any, input_shapes: List[Tuple[Any, ...]], permutation: Optional[np.ndarray],
    flatten_channels_last: bool,
) -> nn.Module:
    """The torch module for one Keras layer; ``permutation`` reorders a Dense/BN input's features."""
    L = keras.layers
    config = layer.get_config()
    rank = len(input_shapes[0])
    if isinstance(layer, keras.Model):
        return from_keras(layer)
    if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)):
        _channels_last(layer, config)
        record = _record_from_layer(keras, layer)
        common = dict(
            kernel_size=tuple(config["kernel_size"]), stride=tuple(config["strides"]),
            padding=config["padding"], dilation=tuple(config["dilation_rate"]),
            bias=config["use_bias"], activation=_activation(layer, config),
        )
        if isinstance(layer, L.SeparableConv2D):
            channels = record.arrays["depthwise_kernel"].shape[2]
            module: nn.Module = SeparableConv2d(
                channels, config["filters"], depth_multiplier=config["depth_multiplier"], **common
            )
        elif isinstance(layer, L.DepthwiseConv2D):
            channels = record.arrays["kernel"].shape[2]
            module = DepthwiseConv2d(channels, depth_multiplier=config["depth_multiplier"], **common)
        else:
            groups = config["groups"]
            channels = record.arrays["kernel"].shape[2] * groups
            module = Conv2d(channels, config["filters"], groups=groups, **common)
        _load_into(module, record)
        return module
    if isinstance(layer, L.BatchNormalization):
        axis = config["axis"]
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        if len(axes) != 1 or axes[0] % rank != rank - 1:
            raise _unsupported(layer, f"axis={axis} is not the channel axis (-1) of a rank-{rank} input")
        record = _record_from_layer(keras, layer)
        if permutation is not None:
            record.arrays = {k: v[permutation] for k, v in record.arrays.items()}
        features = record.arrays["moving_mean"].shape[0]
        module = BatchNorm(features, axis=1, eps=float(config["epsilon"]), momentum=1.0 - float(config["momentum"]))
        _load_into(module, record)
        for role, parameter in (("gamma", module.bn.weight), ("beta", module.bn.bias)):
            if role not in record.arrays:
                parameter.requires_grad_(False)  # Keras has no such parameter: keep it fixed
        return module
    if isinstance(layer, L.Dense):
        record = _record_from_layer(keras, layer)
        kernel = record.arrays["kernel"]
        if permutation is not None:
            record.arrays["kernel"] = kernel[permutation]
        act = _activation(layer, config)
        if rank == 4:
            # Dense on an NHWC map acts on C: a 1×1 convolution on NCHW.
            record.arrays["kernel"] = kernel[None, None]
            record.kind, record.config = "conv", None
            module = Conv2d(kernel.shape[0], kernel.shape[1], 1, bias=config["use_bias"], activation=act)
        elif rank == 2:
            module = Dense(kernel.shape[0], kernel.shape[1], bias=config["use_bias"], activation=act)
        else:
            raise _unsupported(layer, f"a rank-{rank} input is not supported (only 2 or 4)")
        _load_into(module, record)
        return module
    if isinstance(layer, L.Activation):
        return get_activation(_activation(layer, config))
    if isinstance(layer, L.ReLU):
        return _relu(layer, config)
    if isinstance(layer, L.Add):
        if len({len(s) for s in input_shapes}) != 1:
            raise _unsupported(layer, f"inputs of different ranks {input_shapes} are not supported")
        return _Add()
    if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
        _channels_last(layer, config)
        pool = MaxPool2d if isinstance(layer, L.MaxPooling2D) else AvgPool2d
        return pool(tuple(config["pool_size"]), tuple(config["strides"]), config["padding"])
    if isinstance(layer, L.GlobalAveragePooling2D):
        _channels_last(layer, config)
        return _GlobalAvgPool2d(bool(config["keepdims"]))
    if isinstance(layer, L.Flatten):
        _channels_last(layer, config)
        if rank not in (2, 4):
            raise _unsupported(layer, f"a rank-{rank} input is not supported (only 2 or 4)")
        return _Flatten(flatten_channels_last)
    if isinstance(layer, L.Dropout):
        if config.get("noise_shape") is not None:
            raise _unsupported(layer, "noise_shape is not supported")
        return nn.Dropout(float(config["rate"]))
    if isinstance(layer, L.ZeroPadding2D):
        _channels_last(layer, config)
        (top, bottom), (left, right) = config["padding"]
        return nn.ZeroPad2d((left, right, top, bottom))
    raise _unsupported(layer, f"not supported; from_keras converts {_SUPPORTED_LAYERS}")


# Names a submodule of the converted GraphModule cannot take (its attributes and methods).
_RESERVED_NAMES = frozenset(dir(torch.fx.GraphModule)) | frozenset(vars(nn.Module())) | {"meta", "graph"}


def _module_name(name: str, taken: set) -> str:
    """A Keras layer name as a submodule name (Python identifier, no clash with module attributes)."""
    ident = re.sub(r"\W", "_", name)
    if not ident or ident[0].isdigit() or ident in _RESERVED_NAMES:
        ident = "layer_" + ident
    base, i = ident, 1
    while ident in taken:
        ident, i = f"{base}_{i}", i + 1
    taken.add(ident)
    return ident


def _flatten_plan(
    keras: Any, nodes: Sequence[Any], output_ids: set
) -> Tuple[Dict[int, bool], Dict[int, np.ndarray]]:
    """For each Flatten layer on a 4-D map: keep torch's (c, h, w) order and permute the rows of
    the Dense (and BN) layers it feeds, or, where its features reach anything else, flatten in
    Keras' (h, w, c) order. Returns (flatten layer id -> channels_last, layer id -> permutation)."""
    L = keras.layers
    consumers: Dict[int, List[Any]] = {}
    node_count: Dict[int, int] = {}
    for node in nodes:
        node_count[id(node.operation)] = node_count.get(id(node.operation), 0) + 1
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
    channels_last: Dict[int, bool] = {}
    permutations: Dict[int, np.ndarray] = {}
    for node in nodes:
        layer = node.operation
        if not isinstance(layer, L.Flatten) or len(node.input_tensors[0].shape) != 4:
            continue
        _, h, w, c = node.input_tensors[0].shape
        targets = _permutable_consumers(L, node.outputs[0], consumers, output_ids)
        ok = (
            targets is not None
            and None not in (h, w, c)
            and node_count[id(layer)] == 1
            and all(node_count[id(t)] == 1 and id(t) not in permutations for t in targets)
        )
        channels_last[id(layer)] = not ok
        if ok:
            # torch feature f = (c, h, w) is Keras feature index[f] = (h, w, c).
            index = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
            for target in targets:
                permutations[id(target)] = index
    return channels_last, permutations


def _permutable_consumers(L: Any, tensor: Any, consumers: Dict[int, List[Any]], output_ids: set) -> Optional[List[Any]]:
    """Dense/BN layers fed by ``tensor`` through feature-wise layers, or None if it reaches others."""
    found: List[Any] = []
    stack = [tensor]
    while stack:
        current = stack.pop()
        if id(current) in output_ids:
            return None
        for node in consumers.get(id(current), []):
            layer = node.operation
            if isinstance(layer, L.Dense):
                found.append(layer)
            elif isinstance(layer, (L.BatchNormalization, L.Activation, L.ReLU, L.Dropout)):
                if isinstance(layer, L.BatchNormalization):
                    found.append(layer)
                stack.append(node.outputs[0])
            else:
                return None
    return found


def from_keras(keras_model: Any) -> torch.fx.GraphModule:
    """Convert a Keras Sequential or Functional model into a torchblocks module, weights included.

    The result takes (N, C, H, W) input where Keras took (N, H, W, C) (2-D (N, F) inputs are
    unchanged) and reproduces the Keras model's outputs exactly, including a final softmax
    (train with ``nn.NLLLoss`` on its log, or drop it for ``nn.CrossEntropyLoss``); feature-map
    outputs come back as (N, C, H, W). Keras ``Flatten`` orders features (h, w, c): the converted
    model flattens (c, h, w) and permutes the rows of the ``Dense``/``BatchNormalization`` layers
    it feeds, or flattens in Keras order where its features reach anything else.

    Supported layers: InputLayer, Conv2D, DepthwiseConv2D, SeparableConv2D, BatchNormalization
    (channel axis), Dense, Activation, ReLU, Add, MaxPooling2D, AveragePooling2D,
    GlobalAveragePooling2D, Flatten, Dropout, ZeroPadding2D and nested Sequential/Functional
    models; anything else raises ``ValueError`` naming the layer and its class.

    Returns:
        A ``torch.fx.GraphModule`` (class name ``KerasModel``): a static execution plan whose
        submodules are named after the Keras layers and registered in ``model.layers`` order,
        so ``load_keras_weights(result, keras_model)`` matches it. It is scriptable with
        ``torch.jit.script`` and traceable with ``torch.fx``/``torch.export``.
    """
    keras = _import_keras()
    if not isinstance(keras_model, keras.Model):
        raise TypeError(
            f"Invalid type for argument `keras_model`. Expected a keras.Model. Received an object of "
            f"type {type(keras_model).__name__}."
        )
    # Keras 3 keeps the graph in private attributes: a built Sequential wraps a Functional
    # (``_functional``), whose ``_nodes_by_depth`` Keras itself runs deepest first.
    functional = keras_model
    if isinstance(keras_model, keras.Sequential):
        functional = getattr(keras_model, "_functional", None)
        if functional is None:
            raise ValueError(
                f"from_keras: Sequential model {keras_model.name!r} has no input shape; start it with "
                f"keras.Input(shape) or call build() first."
            )
    if not hasattr(functional, "_nodes_by_depth"):
        raise ValueError(
            f"from_keras: model {keras_model.name!r} of class {type(keras_model).__name__} is "
            f"subclassed; only Sequential and Functional models have a graph to convert."
        )
    order = {id(layer): i for i, layer in enumerate(functional.layers)}
    by_depth = functional._nodes_by_depth
    # Deepest first is a valid execution order (Keras runs it so); within a depth, model.layers
    # order, so that submodules register in model.layers order.
    nodes = [
        node
        for depth in sorted(by_depth, reverse=True)
        for node in sorted(by_depth[depth], key=lambda n: order.get(id(n.operation), len(order)))
        if node.operation is not None and not node.is_input
    ]
    output_ids = {id(t) for t in functional.outputs}
    flatten_channels_last, permutations = _flatten_plan(keras, nodes, output_ids)

    graph = torch.fx.Graph()
    env: Dict[int, torch.fx.Node] = {}
    taken: set = set()
    for tensor in functional.inputs:
        if len(tensor.shape) not in (2, 4):
            raise ValueError(
                f"from_keras: input {tensor.name!r} of shape {tensor.shape} is not supported "
                f"(only (N, H, W, C) images and (N, F) vectors)."
            )
        input_layer = tensor._keras_history.operation
        env[id(tensor)] = graph.placeholder(_module_name(input_layer.name, taken))
    modules: Dict[str, nn.Module] = {}
    names: Dict[int, str] = {}
    for node in nodes:
        layer = node.operation
        if id(layer) not in names:
            shapes = [tuple(t.shape) for t in node.input_tensors]
            module = _convert_layer(
                keras, layer, shapes, permutations.get(id(layer)), flatten_channels_last.get(id(layer), True)
            )
            names[id(layer)] = _module_name(layer.name, taken)
            modules[names[id(layer)]] = module
        args = [env[id(t)] for t in node.input_tensors]
        call_args = (args,) if isinstance(layer, keras.layers.Add) else (args[0],)
        out = graph.call_module(names[id(layer)], call_args)
        for tensor in node.outputs:
            env[id(tensor)] = out
    outputs = [env[id(t)] for t in functional.outputs]
    graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    return torch.fx.GraphModule(modules, graph, class_name="KerasModel")
