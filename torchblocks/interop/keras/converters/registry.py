"""The converter table: one function per Keras layer class (or Keras operation), keyed by class.

A converter receives a ``LayerCall`` (the Keras layer, its config, the shapes of its call and the
model's data format) and returns the torch module for that layer. ``converts`` registers it; the
family modules of this package (``conv``, ``core``, ``merging``, ...) hold the converters.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import nn

from ....activations import ACTIVATION_NAMES as TORCHBLOCKS_ACTIVATIONS
from ....activations import ActivationArg
from ..activations import ACTIVATION_NAMES, activation_module
from ..graph import GraphNode, Shape
from ..sources import KerasRecord, record_from_layer
from ..staging import Staged, TorchUnit, stage_pair

# Operations that are not layers (``x + 3.0`` in a functional model) are keyed "ops.<Class>".
OPS_PREFIX = "ops."


@dataclass
class LayerCall:
    """What a converter knows about the Keras layer or operation it converts."""

    keras: Any
    layer: Any
    config: Dict[str, Any]
    node: GraphNode
    channels_first: bool  # the model's data format: its maps are already (N, C, H, W) in Keras
    permutation: Optional[np.ndarray] = None  # reorders a Dense/BN input's features (after a Flatten)
    flatten: Tuple[bool, Tuple[int, ...]] = (True, ())  # for a Flatten: (channels_last, permuted_for)

    @property
    def name(self) -> str:
        return str(self.layer.name)

    @property
    def input_shapes(self) -> List[Shape]:
        return list(self.node.input_shapes)

    @property
    def rank(self) -> int:
        return len(self.node.input_shapes[0])

    @property
    def output_shape(self) -> Shape:
        return self.node.output_shapes[0]

    def moves_channels(self, rank: int) -> bool:
        """Whether a rank-``rank`` Keras tensor of this model is channels-last in Keras and
        (N, C, H, W) in torch: the 4-D maps of a channels_last model."""
        return rank == 4 and not self.channels_first

    def torch_dim(self, axis: int, rank: Optional[int] = None) -> int:
        """The torch dim of Keras axis ``axis`` of a rank-``rank`` tensor (the input's by default)."""
        rank = self.rank if rank is None else rank
        if not -rank <= axis < rank:
            raise unsupported(self, f"axis={axis} is out of range for a rank-{rank} input")
        axis %= rank
        if axis == 0:
            raise unsupported(self, "an axis over the batch dim is not supported")
        if self.moves_channels(rank):
            return 1 if axis == rank - 1 else axis + 1
        return axis

    def record(self) -> KerasRecord:
        """The layer's weights and config as a loading record."""
        return record_from_layer(self.keras, self.layer)


@dataclass(frozen=True)
class Converter:
    """Builds the torch module of one Keras class. ``list_input`` modules take the call's tensors
    as one list (a function of the call where that depends on it, as for ``x + y`` and ``x + 3``)."""

    build: Callable[[LayerCall], nn.Module]
    list_input: Union[bool, Callable[[LayerCall], bool]] = False

    def takes_list(self, call: LayerCall) -> bool:
        return self.list_input(call) if callable(self.list_input) else bool(self.list_input)


CONVERTERS: Dict[str, Converter] = {}


def converts(*keys: str, list_input: Union[bool, Callable[[LayerCall], bool]] = False) -> Callable:
    """Register the decorated function as the converter of the Keras classes named ``keys``
    (``"ops.<Class>"`` for an operation that is not a layer)."""

    def register(build: Callable[[LayerCall], nn.Module]) -> Callable[[LayerCall], nn.Module]:
        for key in keys:
            if key in CONVERTERS:
                raise RuntimeError(f"two converters for Keras {key!r}")
            CONVERTERS[key] = Converter(build, list_input)
        return build

    return register


def unsupported(call: Any, why: str) -> ValueError:
    """The error for a layer ``from_keras`` cannot convert exactly (``call``: a LayerCall or a layer)."""
    layer = call.layer if isinstance(call, LayerCall) else call
    return ValueError(f"from_keras: layer {layer.name!r} of class {type(layer).__name__}: {why}.")


def check_data_format(call: LayerCall) -> None:
    """A spatial layer's ``data_format`` must be the model's (mixed models are refused)."""
    data_format = call.config.get("data_format") or "channels_last"
    expected = "channels_first" if call.channels_first else "channels_last"
    if data_format != expected:
        raise unsupported(
            call, f"data_format={data_format!r} in a model whose other spatial layers are {expected}; "
            f"a model must use one data format throughout"
        )


def check_rank(call: LayerCall, ranks: Sequence[int]) -> None:
    for shape in call.input_shapes:
        if len(shape) not in ranks:
            raise unsupported(
                call, f"an input of shape {shape} (rank {len(shape)}) is not supported; expected rank "
                f"{' or '.join(str(r) for r in ranks)}"
            )


def load_into(module: nn.Module, record: KerasRecord, permutation: Optional[np.ndarray] = None) -> nn.Module:
    """Stage and apply one converted layer's weights, through the same checks (and the same
    Flatten row permutation) as ``load_keras_weights``."""
    staged = Staged()
    stage_pair(staged, record, TorchUnit("", record.kind, module), permutation)
    if staged.problems:
        raise ValueError("from_keras: " + "; ".join(staged.problems))
    staged.apply()
    return module


def config_activation(call: LayerCall, dim: int) -> ActivationArg:
    """The layer's own ``activation`` as a torchblocks layer takes it: None for none/linear, the
    Keras name where torchblocks applies it exactly (a softmax over dim 1), else a module. ``dim``
    is the torch dim that Keras' last axis becomes inside the layer (for softmax, log_softmax, glu)."""
    name = call.config.get("activation")
    if name is None or name == "linear":
        return None
    if not isinstance(name, str):
        raise unsupported(call, f"activation {name!r} is not a built-in Keras activation")
    module = activation_module(name, dim)
    if module is None:
        raise unsupported(
            call, f"activation {name!r} has no exact torch form; supported: {', '.join(ACTIVATION_NAMES)}"
        )
    if name in TORCHBLOCKS_ACTIVATIONS and (name not in ("softmax", "log_softmax") or dim == 1):
        return name
    return module


def freeze_if_untrainable(call: LayerCall, module: nn.Module) -> nn.Module:
    """Keras ``trainable=False``: the torch parameters do not require gradients either."""
    if not getattr(call.layer, "trainable", True):
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return module
