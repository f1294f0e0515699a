"""Layers that move elements: Flatten, Reshape, Permute, ZeroPadding2D, Cropping2D, UpSampling2D.

Keras reshapes in its own layout; where a converted model's (N, C, H, W) tensor stands for a Keras
(N, H, W, C) map, the element order differs, and the modules here move dim 1 as Keras' order needs
(nothing is moved where the two orders agree, as for a 1×1 map).
"""
import math
from typing import List, Sequence

from torch import nn

from ..layers import Cropping2d, Flatten, Permute, Reshape
from .registry import LayerCall, check_data_format, check_rank, converts, unsupported


def _order_differs(dims: Sequence[int]) -> bool:
    """Whether flattening a torch tensor of non-batch ``dims`` with dim 1 moved last changes the
    element order (it does not when dim 1 or all the others have size 1)."""
    return len(dims) > 1 and dims[0] != 1 and math.prod(dims[1:]) != 1


def flatten_reorders(channels_first_model: bool, data_format: str, rank: int, dims: Sequence[int]) -> bool:
    """Whether a Keras Flatten (``data_format``) on a rank-``rank`` tensor of non-batch torch ``dims``
    reads the elements in another order than torch's flatten: its Keras order is torch's with dim 1
    moved last, where the tensor is a channels-last map in Keras (or Flatten itself moves the
    channels of a channels_first tensor last)."""
    if rank <= 2:
        return False
    moves = data_format == "channels_first" or (rank == 4 and not channels_first_model)
    return moves and (None in dims or _order_differs(dims))


@converts("Flatten")
def _flatten(call: LayerCall) -> nn.Module:
    check_rank(call, (2, 3, 4))
    data_format = call.config.get("data_format") or "channels_last"
    if call.rank == 4 and data_format == "channels_first" and not call.channels_first:
        raise unsupported(call, "data_format='channels_first' in a channels_last model is not supported")
    dims = _torch_shape(call, call.input_shapes[0][1:])
    if not flatten_reorders(call.channels_first, data_format, call.rank, dims):
        return nn.Flatten()
    channels_last, permuted_for = call.flatten
    return Flatten(channels_last, permuted_for)


def _torch_shape(call: LayerCall, keras_shape: Sequence[int]) -> List[int]:
    """A Keras non-batch shape in the converted model's layout."""
    dims = list(keras_shape)
    if call.moves_channels(len(dims) + 1):
        return [dims[-1]] + dims[:-1]
    return dims


@converts("Reshape")
def _reshape(call: LayerCall) -> nn.Module:
    check_rank(call, (2, 3, 4))
    out_shape = call.output_shape
    if len(out_shape) not in (2, 3, 4):
        raise unsupported(call, f"an output of shape {out_shape} is not supported (rank 2, 3 or 4 only)")
    target = [-1 if d is None else int(d) for d in out_shape[1:]]
    in_dims = _torch_shape(call, [d for d in call.input_shapes[0][1:]])
    move_in = call.moves_channels(call.rank) and (None in in_dims or _order_differs(in_dims))
    torch_target = _torch_shape(call, target)
    move_out = call.moves_channels(len(out_shape)) and (-1 in torch_target or _order_differs(torch_target))
    if not move_in and not move_out:
        if len(torch_target) == 1:
            return nn.Flatten()
        if call.rank == 2:
            return nn.Unflatten(1, torch_target)
        return Reshape(torch_target, False, False)
    return Reshape(target if move_out else torch_target, move_in, move_out)


@converts("Permute")
def _permute(call: LayerCall) -> nn.Module:
    rank = call.rank
    check_rank(call, (3, 4))
    keras_perm = [0] + [int(d) for d in call.config["dims"]]
    # torch dim -> Keras axis of the input and of the output, and Keras axis -> torch dim.
    to_keras = [0, 3, 1, 2] if call.moves_channels(rank) else list(range(rank))
    to_torch = [to_keras.index(a) for a in range(rank)]
    order = [to_torch[keras_perm[to_keras[j]]] for j in range(rank)]
    if order == list(range(rank)):
        return nn.Identity()
    return Permute(order[1:])


@converts("ZeroPadding2D")
def _zero_padding(call: LayerCall) -> nn.Module:
    check_rank(call, (4,))
    check_data_format(call)
    (top, bottom), (left, right) = call.config["padding"]
    return nn.ZeroPad2d((left, right, top, bottom))


@converts("Cropping2D")
def _cropping(call: LayerCall) -> nn.Module:
    check_rank(call, (4,))
    check_data_format(call)
    (top, bottom), (left, right) = call.config["cropping"]
    return Cropping2d(top, bottom, left, right)


@converts("UpSampling2D")
def _upsampling(call: LayerCall) -> nn.Module:
    check_rank(call, (4,))
    check_data_format(call)
    interpolation = call.config["interpolation"]
    height, width = (int(s) for s in call.config["size"])
    if interpolation == "nearest":
        return nn.Upsample(scale_factor=(float(height), float(width)), mode="nearest")
    if interpolation == "bilinear":
        return nn.Upsample(
            scale_factor=(float(height), float(width)), mode="bilinear", align_corners=False,
            recompute_scale_factor=True,
        )
    raise unsupported(
        call, f"interpolation={interpolation!r} is not supported (only 'nearest' and 'bilinear': Keras' "
        f"backends disagree on the others)"
    )
