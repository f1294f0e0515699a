"""``load_keras_weights``: Keras weights staged into a torch module, all or nothing.

Layers are matched kind by kind in order (the k-th Keras ``Conv2D`` into the k-th torch conv);
every tensor and every numerics-changing config entry is checked and staged first, and the module
is written only when nothing is wrong.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...activations import get_activation, is_identity
from ...conv import DepthwiseConv2d, SeparableConv2d
from ...norm import BatchNorm
from ...padding import effective_kernel, is_static_same
from .sources import KerasRecord, read_source

__all__ = ["KerasLoadResult", "load_keras_weights"]

_TORCH_KIND_NAMES = {
    "conv": "Conv2d",
    "depthwise": "DepthwiseConv2d",
    "separable": "SeparableConv2d",
    "bn": "BatchNorm",
    "dense": "Linear",
}


@dataclass
class TorchUnit:
    """One torch layer that receives one Keras layer's weights."""

    name: str
    kind: str  # as KerasRecord.kind, "" for a layer with parameters of no supported kind
    module: nn.Module


@dataclass
class Staged:
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


def _torch_label(unit: TorchUnit) -> str:
    return f"torch {unit.name or '<root>'!r} ({type(unit.module).__name__})"


def _describe(record: KerasRecord, unit: TorchUnit) -> str:
    return f"Keras {record.name!r} ({record.class_name}) -> {_torch_label(unit)}"


def _stage_tensor(
    staged: Staged, where: str, what: str, target: Optional[Tensor], value: np.ndarray, source_shape: Tuple[int, ...]
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
    staged: Staged, where: str, config: Optional[Dict[str, Any]], conv: nn.Conv2d, act_owner: nn.Module
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


def _check_activation(staged: Staged, where: str, config: Optional[Dict[str, Any]], owner: nn.Module) -> None:
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


def _check_bias(staged: Staged, where: str, record: KerasRecord, bias: Optional[Tensor]) -> None:
    if "bias" not in record.arrays and bias is not None:
        staged.problems.append(f"{where}: Keras use_bias=False, the torch layer has a bias")


def _stage_conv(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    conv: nn.Conv2d = unit.module
    kernel = record.arrays["kernel"]
    _stage_tensor(staged, where, "kernel", conv.weight, kernel.transpose(3, 2, 0, 1), kernel.shape)
    _check_conv_config(staged, where, record.config, conv, conv)


def _depthwise_weight(kernel: np.ndarray) -> np.ndarray:
    """(kh, kw, C, m) -> (C·m, 1, kh, kw), output channel c·m + j."""
    kh, kw, channels, multiplier = kernel.shape
    return kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)


def _stage_depthwise(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    conv: nn.Conv2d = unit.module
    _stage_depthwise_kernel(staged, where, "kernel", conv, record.arrays["kernel"])
    _check_conv_config(staged, where, record.config, conv, conv)


def _stage_depthwise_kernel(staged: Staged, where: str, what: str, conv: nn.Conv2d, kernel: np.ndarray) -> None:
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


def _stage_separable(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
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


def _stage_dense(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    linear: nn.Linear = unit.module
    kernel = record.arrays["kernel"]
    _stage_tensor(staged, where, "kernel", linear.weight, kernel.T, kernel.shape)
    _check_activation(staged, where, record.config, linear)


def _stage_bn(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
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


_STAGERS: Dict[str, Callable[[Staged, KerasRecord, TorchUnit, str], None]] = {
    "conv": _stage_conv,
    "depthwise": _stage_depthwise,
    "separable": _stage_separable,
    "bn": _stage_bn,
    "dense": _stage_dense,
}


def stage_pair(staged: Staged, record: KerasRecord, unit: TorchUnit) -> None:
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
    records = read_source(keras_layer_or_model_or_path)
    units = _torch_units(module)
    staged = Staged()
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
            stage_pair(staged, record, unit)
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

