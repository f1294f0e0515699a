"""Normalization and preprocessing layers: BatchNormalization, LayerNormalization, Normalization,
Rescaling."""
from typing import List

import numpy as np
import torch
from torch import nn

from ....norm import BatchNorm
from ..layers import FrozenBatchNorm, LayerNorm, Normalization, Rescaling
from .registry import LayerCall, check_rank, converts, load_into, unsupported


def _float32_only(call: LayerCall) -> None:
    if torch.get_default_dtype() != torch.float32:
        raise unsupported(
            call, "Keras computes this layer in float32 even in a float64 model (its dtype promotion), "
            "which a float64 module would not reproduce; convert the float32 model"
        )


def _axes(call: LayerCall, key: str = "axis") -> List[int]:
    axis = call.config[key]
    return [int(a) for a in axis] if isinstance(axis, (list, tuple)) else [int(axis)]


@converts("BatchNormalization")
def _batch_norm(call: LayerCall) -> nn.Module:
    check_rank(call, (2, 3, 4))
    _float32_only(call)
    config, rank = call.config, call.rank
    axes = _axes(call)
    if len(axes) != 1:
        raise unsupported(call, f"axis={config['axis']}: normalising over several axes is not supported")
    dim = call.torch_dim(axes[0])
    if dim != 1 and not (rank == 3 and dim == 2):
        raise unsupported(
            call, f"axis={config['axis']} is not the channel axis of a rank-{rank} input of this "
            f"{'channels_first' if call.channels_first else 'channels_last'} model"
        )
    if config.get("renorm"):
        raise unsupported(call, "renorm=True has no torch equivalent")
    if config.get("synchronized"):
        raise unsupported(
            call, "synchronized=True is not converted; convert the model with synchronized=False and "
            "use nn.SyncBatchNorm.convert_sync_batchnorm (or tb.SyncBatchNorm) on the result"
        )
    record = call.record()
    features = record.arrays["moving_mean"].shape[0]
    # Keras 3 runs a BatchNormalization with trainable=False in inference mode even in training.
    cls = BatchNorm if call.layer.trainable else FrozenBatchNorm
    module = cls(features, axis=1 if dim == 1 else -1, eps=float(config["epsilon"]),
                 momentum=1.0 - float(config["momentum"]))
    load_into(module, record, call.permutation)
    for role, parameter in (("gamma", module.bn.weight), ("beta", module.bn.bias)):
        if role not in record.arrays:
            parameter.requires_grad_(False)  # Keras has no such parameter: keep it fixed
    return module


@converts("LayerNormalization")
def _layer_norm(call: LayerCall) -> nn.Module:
    config, rank = call.config, call.rank
    _float32_only(call)
    if config.get("rms_scaling"):
        raise unsupported(
            call, "rms_scaling=True (deprecated in Keras: it scales by the variance) is not supported; "
            "use keras.layers.RMSNormalization"
        )
    axes = sorted(a % rank for a in _axes(call))
    dims = [call.torch_dim(a) for a in axes]
    eps, center, scale = float(config["epsilon"]), bool(config["center"]), bool(config["scale"])
    record = call.record()
    shape = [int(call.input_shapes[0][a]) for a in axes]
    trailing = dims == list(range(rank - len(dims), rank))
    if trailing and (scale or not center):
        module: nn.Module = nn.LayerNorm(shape, eps=eps, elementwise_affine=scale, bias=center and scale)
    elif len(dims) == 1:
        module = LayerNorm(shape[0], dim=dims[0], eps=eps, center=center, scale=scale)
    else:
        raise unsupported(
            call, f"axis={config['axis']} of a rank-{rank} input maps to torch dims {dims}; only one axis, "
            f"or trailing axes in Keras' order, are supported"
        )
    return load_into(module, record)


def _channel_values(call: LayerCall, array: np.ndarray, what: str) -> List[float]:
    """A per-channel (or single) constant of the layer as a list of floats."""
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    if values.size != 1 and values.size != max(np.shape(array) or (1,)):
        raise unsupported(call, f"a {what} of shape {np.shape(array)} (not one value per channel) is not supported")
    return [float(v) for v in values]


@converts("Normalization")
def _normalization(call: LayerCall) -> nn.Module:
    rank = call.rank
    axes = _axes(call) if call.config.get("axis") is not None else []
    if len(axes) > 1:
        raise unsupported(call, f"axis={call.config['axis']}: only one kept axis (or none) is supported")
    layer = call.layer
    mean = np.asarray(call.keras.ops.convert_to_numpy(layer.mean))
    variance = np.asarray(call.keras.ops.convert_to_numpy(layer.variance))
    dim = call.torch_dim(axes[0]) if axes else 1
    module = Normalization(mean.size, dim=dim, rank=rank, invert=bool(call.config.get("invert")),
                           epsilon=float(call.keras.config.epsilon()))
    record = call.record()
    record.arrays = {"mean": mean.reshape(-1), "variance": variance.reshape(-1)}
    return load_into(module, record)


@converts("Rescaling")
def _rescaling(call: LayerCall) -> nn.Module:
    scale = _channel_values(call, np.asarray(call.config["scale"]), "scale")
    offset = _channel_values(call, np.asarray(call.config["offset"]), "offset")
    if max(len(scale), len(offset)) > 1 and call.keras.config.image_data_format() != "channels_last":
        # Keras then puts a per-channel scale on axis 1 but its offset on the last axis.
        raise unsupported(call, "per-channel scale/offset under image_data_format='channels_first' is not supported")
    return Rescaling(scale, offset, dim=call.torch_dim(-1), rank=call.rank)
