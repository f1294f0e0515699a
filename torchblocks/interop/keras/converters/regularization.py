"""Dropout layers and the regularisers of Keras' ConvNeXt (stochastic depth, layer scale).

Each keeps Keras' training behaviour: the same distribution of dropped elements (whole channels for
SpatialDropout2D and ``noise_shape=(None, 1, 1, C)``, whole samples for stochastic depth and
``noise_shape=(None, 1, 1, 1)`` as in EfficientNet) and the same 1 / (1 - rate) scaling.
"""
from typing import Optional, Sequence, Set

from torch import nn

from ..layers import LayerScale, StochasticDepth
from .registry import LayerCall, check_data_format, check_rank, converts, load_into, unsupported


def _shared_axes(call: LayerCall, noise_shape: Sequence[Optional[int]]) -> Set[int]:
    """The non-batch Keras axes one dropout draw covers (size 1 in ``noise_shape``)."""
    shape = call.input_shapes[0]
    if len(noise_shape) != len(shape):
        raise unsupported(call, f"noise_shape={tuple(noise_shape)} does not match the input shape {shape}")
    return {a for a in range(1, len(shape)) if noise_shape[a] == 1 and shape[a] != 1}


@converts("Dropout")
def _dropout(call: LayerCall) -> nn.Module:
    rate = float(call.config["rate"])
    noise_shape = call.config.get("noise_shape")
    if noise_shape is None:
        return nn.Dropout(rate)
    shared = _shared_axes(call, noise_shape)
    rank = call.rank
    spatial = {1, 2} if call.moves_channels(rank) else {2, 3}
    if not shared:
        return nn.Dropout(rate)
    if shared == {a for a in range(1, rank) if call.input_shapes[0][a] != 1}:
        return StochasticDepth(rate)  # one draw per sample: its whole (residual) branch
    if rank == 4 and shared == spatial:
        return nn.Dropout2d(rate)  # one draw per sample and channel
    raise unsupported(
        call, f"noise_shape={tuple(noise_shape)} is not supported (only one draw per element, per "
        f"channel or per sample)"
    )


@converts("SpatialDropout2D")
def _spatial_dropout(call: LayerCall) -> nn.Module:
    check_rank(call, (4,))
    check_data_format(call)
    return nn.Dropout2d(float(call.config["rate"]))


@converts("StochasticDepth")
def _stochastic_depth(call: LayerCall) -> nn.Module:
    # keras.applications.convnext.StochasticDepth: one Bernoulli draw per sample in training.
    rate = float(call.config["drop_path_rate"])
    if not 0.0 <= rate < 1.0:
        raise unsupported(call, f"drop_path_rate={rate} (Keras divides by 1 - rate) is not supported")
    return StochasticDepth(rate)


@converts("LayerScale")
def _layer_scale(call: LayerCall) -> nn.Module:
    # keras.applications.convnext.LayerScale: x * gamma over Keras' last axis.
    record = call.record()
    channels = int(call.config["projection_dim"])
    module = LayerScale(channels, dim=call.torch_dim(-1), rank=call.rank)
    return load_into(module, record)
