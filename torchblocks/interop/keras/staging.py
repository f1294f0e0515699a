"""Staging one Keras layer's weights into one torch layer: layouts converted, shapes and the
numerics-changing config checked, nothing written until ``Staged.apply``.

Keras -> torch layouts: Conv2D kernel (kh, kw, C/g, O) -> (O, C/g, kh, kw); DepthwiseConv2D
(kh, kw, C, m) -> (C·m, 1, kh, kw), output channel c·m + j; SeparableConv2D: depthwise as above,
pointwise (1, 1, C·m, O) -> (O, C·m, 1, 1); Conv2DTranspose (kh, kw, O, C) -> (C, O, kh, kw);
Dense (in, out) -> (out, in); BatchNormalization, LayerNormalization, Normalization and LayerScale
vectors as they are; BatchNormalization epsilon as it is and momentum m -> 1 - m.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...activations import is_identity
from ...conv import SeparableConv2d
from ...norm import BatchNorm
from ...padding import effective_kernel, is_static_same
from .activations import activation_types
from .sources import KerasRecord


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


def torch_label(unit: TorchUnit) -> str:
    return f"torch {unit.name or '<root>'!r} ({type(unit.module).__name__})"


def _describe(record: KerasRecord, unit: TorchUnit) -> str:
    return f"Keras {record.name!r} ({record.class_name}{record.where}) -> {torch_label(unit)}"


# Rank of each Keras variable, checked before any layout conversion.
_RANKS = {
    "kernel": {"conv": 4, "depthwise": 4, "transpose": 4, "dense": 2},
    "depthwise_kernel": {"separable": 4}, "pointwise_kernel": {"separable": 4},
}


def _bad_rank(record: KerasRecord) -> Optional[str]:
    """A variable of the wrong rank, named with where it was read (checked before any transpose)."""
    for role, array in record.arrays.items():
        expected = _RANKS.get(role, {}).get(record.kind)
        if expected is None and record.kind != "layernorm":
            expected = 1  # biases and the vectors of the normalization layers
        if expected is not None and array.ndim != expected:
            return f"{role}{record.path_of(role)} has shape {array.shape}, expected a {expected}-D array"
    return None


def stage_tensor(
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
    if isinstance(conv, nn.ConvTranspose2d):
        return getattr(conv, "padding_spec", None) == keras_padding
    padding = _padding_of(conv)
    if padding == keras_padding:
        return True
    if padding not in ("valid", "same") and not isinstance(padding, tuple):
        return False  # a padding_mode other than zeros
    return all(_axis_padding(keras_padding, a, conv) == _axis_padding(padding, a, conv) for a in (0, 1))


def _check_conv_config(
    staged: Staged, where: str, config: Optional[Dict[str, Any]], conv: nn.Module, act_owner: nn.Module
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
    check_activation(staged, where, config, act_owner)


def check_activation(staged: Staged, where: str, config: Optional[Dict[str, Any]], owner: nn.Module) -> None:
    """A torch layer's own activation must be Keras'; without one, a separate module may follow."""
    act = getattr(owner, "act", None)
    if config is None or act is None or is_identity(act):
        return
    keras_act = config.get("activation")
    expected = activation_types(keras_act) if isinstance(keras_act, str) and keras_act != "linear" else ()
    if type(act) not in expected:
        staged.problems.append(f"{where}: Keras activation={keras_act!r}, torch has activation {type(act).__name__}")


def _check_bias(staged: Staged, where: str, record: KerasRecord, bias: Optional[Tensor]) -> None:
    if "bias" not in record.arrays and bias is not None:
        staged.problems.append(f"{where}: Keras use_bias=False, the torch layer has a bias")


def _stage_conv(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    conv: nn.Conv2d = unit.module
    kernel = record.arrays["kernel"]
    stage_tensor(staged, where, "kernel", conv.weight, kernel.transpose(3, 2, 0, 1), kernel.shape)
    _check_conv_config(staged, where, record.config, conv, conv)


def _stage_transpose(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    conv: nn.ConvTranspose2d = unit.module
    kernel = record.arrays["kernel"]  # (kh, kw, out, in) -> torch (in, out, kh, kw)
    stage_tensor(staged, where, "kernel", conv.weight, kernel.transpose(3, 2, 0, 1), kernel.shape)
    _check_conv_config(staged, where, record.config, conv, conv)
    if record.config is not None:
        keras_pad = record.config.get("output_padding")
        keras_pad = [-1, -1] if keras_pad is None else [int(p) for p in keras_pad]
        if list(getattr(conv, "keras_output_padding", [])) != keras_pad:
            staged.problems.append(
                f"{where}: Keras output_padding={record.config.get('output_padding')}, the torch layer "
                f"does not reproduce it (use torchblocks.interop.keras.layers.Conv2dTranspose)"
            )


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
    if (kernel.shape[2], kernel.shape[3]) != (conv.in_channels, conv.out_channels // conv.in_channels):
        staged.problems.append(
            f"{where}: Keras {what} of shape {kernel.shape} (kh, kw, C, depth_multiplier) does not fit "
            f"the torch conv's in_channels={conv.in_channels}, depth_multiplier="
            f"{conv.out_channels // conv.in_channels}, weight {tuple(conv.weight.shape)}"
        )
        return
    stage_tensor(staged, where, what, conv.weight, _depthwise_weight(kernel), kernel.shape)


def _stage_separable(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    module: SeparableConv2d = unit.module
    depthwise, pointwise = record.arrays["depthwise_kernel"], record.arrays["pointwise_kernel"]
    _stage_depthwise_kernel(staged, where, "depthwise_kernel", module.depthwise, depthwise)
    stage_tensor(
        staged, where, "pointwise_kernel", module.pointwise.weight, pointwise.transpose(3, 2, 0, 1), pointwise.shape
    )
    if "bias" in record.arrays:
        bias = record.arrays["bias"]
        stage_tensor(staged, where, "bias", module.pointwise.bias, bias, bias.shape)
    _check_bias(staged, where, record, module.pointwise.bias)
    if module.depthwise.bias is not None:
        staged.problems.append(f"{where}: the torch depthwise conv has a bias, Keras' never does")
    _check_conv_config(staged, where, record.config, module.depthwise, module)


def _stage_dense(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    linear: nn.Linear = unit.module
    kernel = record.arrays["kernel"]
    stage_tensor(staged, where, "kernel", linear.weight, kernel.T, kernel.shape)
    check_activation(staged, where, record.config, linear)


def _stage_bn(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    bn: _BatchNorm = unit.module.bn if isinstance(unit.module, BatchNorm) else unit.module
    arrays = record.arrays
    if not bn.track_running_stats or bn.running_mean is None:
        staged.problems.append(f"{where}: the torch BatchNorm keeps no running statistics")
    else:
        for role, target in (("moving_mean", bn.running_mean), ("moving_variance", bn.running_var)):
            stage_tensor(staged, where, role, target, arrays[role], arrays[role].shape)
    for role, target, default in (("gamma", bn.weight, 1.0), ("beta", bn.bias, 0.0)):
        if role in arrays:
            stage_tensor(staged, where, role, target, arrays[role], arrays[role].shape)
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


def _stage_layernorm(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
    module = unit.module
    for role, target in (("gamma", module.weight), ("beta", module.bias)):
        if role in record.arrays:
            stage_tensor(staged, where, role, target, record.arrays[role], record.arrays[role].shape)
        elif target is not None:
            staged.problems.append(f"{where}: Keras has no {role}, the torch layer has one")
    config = record.config
    if config is not None:
        eps = getattr(module, "eps", None)
        if eps is None or abs(float(eps) - float(config["epsilon"])) > 0:
            staged.problems.append(f"{where}: Keras epsilon={config['epsilon']}, torch has eps={eps}")


def _stage_vectors(*roles: Tuple[str, str], optional: bool = False) -> Callable[[Staged, KerasRecord, TorchUnit, str], None]:
    """A stager copying Keras vectors into torch tensors of the given names. With ``optional``, a
    record without any of them (constants of the Keras config, absent from a .weights.h5 file)
    leaves the torch values as they are."""

    def stage(staged: Staged, record: KerasRecord, unit: TorchUnit, where: str) -> None:
        present = [role for role, _ in roles if role in record.arrays]
        if optional and not present:
            return
        for keras_role, torch_name in roles:
            if keras_role not in record.arrays:
                staged.problems.append(f"{where}: Keras has no {keras_role}")
                continue
            value = record.arrays[keras_role]
            stage_tensor(staged, where, keras_role, getattr(unit.module, torch_name), value, value.shape)

    return stage


STAGERS: Dict[str, Callable[[Staged, KerasRecord, TorchUnit, str], None]] = {
    "conv": _stage_conv,
    "depthwise": _stage_depthwise,
    "separable": _stage_separable,
    "transpose": _stage_transpose,
    "bn": _stage_bn,
    "dense": _stage_dense,
    "layernorm": _stage_layernorm,
    "normalization": _stage_vectors(("mean", "mean"), ("variance", "variance"), optional=True),
    "layerscale": _stage_vectors(("gamma", "gamma")),
}


_REQUIRED = {
    "conv": ("kernel",), "depthwise": ("kernel",), "transpose": ("kernel",), "dense": ("kernel",),
    "separable": ("depthwise_kernel", "pointwise_kernel"), "bn": ("moving_mean", "moving_variance"),
}


def stage_pair(staged: Staged, record: KerasRecord, unit: TorchUnit, permutation: Optional[np.ndarray] = None) -> None:
    """Stage ``record`` into ``unit``; ``permutation`` reorders a Dense kernel's rows or a
    BatchNormalization's vectors (the features of a Flatten kept in torch's order)."""
    where = _describe(record, unit)
    missing = [role for role in _REQUIRED.get(record.kind, ()) if role not in record.arrays]
    problem = record.problem or (f"Keras has no {', '.join(missing)}" if missing else "") or _bad_rank(record)
    if problem:
        staged.problems.append(f"{where}: {problem}")
        return
    if permutation is not None:
        record = record.permuted(permutation)
        if record.problem:
            staged.problems.append(f"{where}: {record.problem}")
            return
    STAGERS[record.kind](staged, record, unit, where)
    if record.kind in ("conv", "depthwise", "dense", "transpose"):
        bias = unit.module.bias
        if "bias" in record.arrays:
            stage_tensor(staged, where, "bias", bias, record.arrays["bias"], record.arrays["bias"].shape)
        _check_bias(staged, where, record, bias)
