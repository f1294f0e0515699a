"""The rewrites of the packed inference path, on the flat fx graph of a model.

Each call of a conv that is worth it becomes a ``PackedConv2d`` call, into which the rewrites
fold what follows it, one call site at a time (a module called twice, like torchvision's one
``self.relu`` per ResNet block, is never changed itself):

- an activation that only reads the conv's output (ReLU, ReLU6/Hardtanh, SiLU, sigmoid, tanh,
  Hardswish, Hardsigmoid, GELU, LeakyReLU) becomes a oneDNN post-op;
- a residual sum ``conv(x) + other`` (then a ReLU) becomes oneDNN's sum post-op, written into
  ``other``'s memory where this is ``other``'s last use and nothing else aliases it, else into a
  new tensor;
- every other ReLU whose input nothing else reads runs in place, and so does a sum or product
  whose result has the shape of an operand that is dead after it (EfficientNet's ``scale * x``).

A depthwise conv read only by a 1×1 conv becomes a ``BlockedSeparable`` where the example batch
spans several cache-sized blocks. A 1×1 conv on a single pixel (the squeeze-excitation convs of
EfficientNet) is a dense layer: it becomes a ``PixelConv2d``, a matrix product without oneDNN's
fixed cost per call; global average pooling to one pixel becomes a ``mean``. Every rewrite reads
the shapes ``_fx.record_shapes`` recorded and never changes a module another call site uses.
"""
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from . import _onednn
from ._fx import LayerTracer, real_users, set_submodule
from ._onednn import Activation, PackedConv2d
from .activations import HardSigmoid
from .conv import Conv2d, DepthwiseConv2d
from .linear import Dense
from .norm import BatchNorm
from .pooling import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d

__all__ = ["BlockedSeparable", "PixelConv2d", "pack_graph"]

# Largest input block BlockedSeparable runs its depthwise and pointwise convs on at once.
BLOCK_BYTES = 4 << 20

# Pixels (H * W) of the input at or below which a 1x1 conv becomes a ``PixelConv2d``. Measured on
# EfficientNet-B0's squeeze-excitation convs (one pixel, 4 to 1152 channels, batch 1): 10-80 us as
# a matrix product, 150-320 us as a packed oneDNN conv, at 1 and 2 threads (BENCHMARKS.md).
MAX_DENSE_PIXELS = 1


def samples_per_block(sample_bytes: int, block_bytes: int) -> int:
    """How many samples of ``sample_bytes`` each a block of ``block_bytes`` holds (at least one)."""
    return max(1, block_bytes // max(1, sample_bytes))


class BlockedSeparable(nn.Module):
    """Inference form of a depthwise conv whose output only a 1×1 conv reads (a
    ``SeparableConv2d``): the two convs run a few samples at a time.

    (N, C_in, H, W) -> (N, C_out, H', W'). Run whole at a large batch, the depthwise output is one
    buffer of tens of MiB that glibc returns to the kernel after each call and page-faults in again
    on the next (BENCHMARKS.md has the measured cost). Here both convs run on blocks of samples whose
    input is at most ``BLOCK_BYTES``, so the depthwise output stays in the last-level cache until the
    pointwise conv reads it, and is served from the heap again on the next call; the block outputs
    are joined once. A batch that fits in one block runs the two convs as they are.

    Args:
        depthwise: the depthwise conv, packed or not.
        pointwise: the 1×1 conv after it, with any activation fused.
    """

    block_bytes: Final[int]

    def __init__(self, depthwise: nn.Module, pointwise: nn.Module) -> None:
        super().__init__()
        self.depthwise = depthwise
        self.pointwise = pointwise
        self.block_bytes = BLOCK_BYTES

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        n = x.shape[0]
        step = samples_per_block(x.numel() // max(1, n) * x.element_size(), self.block_bytes)
        if n <= step:
            return self.pointwise(self.depthwise(x))
        return torch.cat([self.pointwise(self.depthwise(x[i:i + step])) for i in range(0, n, step)])


def spans_blocks(input_size: Optional[List[int]]) -> bool:
    """Whether a ``BlockedSeparable`` would run a float32 (N, C, H, W) input of this size in
    several blocks."""
    if input_size is None:
        return False
    sample_bytes = 4
    for d in input_size[1:]:
        sample_bytes *= d
    return input_size[0] > samples_per_block(sample_bytes, BLOCK_BYTES)


# Activation modules and functions a packed conv fuses, by the oneDNN post-op they become.
_ACTIVATION_MODULES = {
    nn.ReLU: lambda m: Activation("relu"),
    nn.ReLU6: lambda m: Activation("hardtanh", (0.0, 6.0)),
    nn.Hardtanh: lambda m: Activation("hardtanh", (float(m.min_val), float(m.max_val))),
    nn.SiLU: lambda m: Activation("swish"),
    nn.Sigmoid: lambda m: Activation("sigmoid"),
    nn.Tanh: lambda m: Activation("tanh"),
    nn.Hardswish: lambda m: Activation("hardswish"),
    nn.Hardsigmoid: lambda m: Activation("hardsigmoid"),
    HardSigmoid: lambda m: Activation("hardsigmoid"),  # Keras' "hard_sigmoid"
    nn.GELU: lambda m: Activation("gelu", (), m.approximate),
    nn.LeakyReLU: lambda m: Activation("leaky_relu", (float(m.negative_slope),)),
}
_ACTIVATION_FUNCTIONS = {
    F.relu: Activation("relu"), torch.relu: Activation("relu"), F.relu6: Activation("hardtanh", (0.0, 6.0)),
    F.silu: Activation("swish"), torch.sigmoid: Activation("sigmoid"), F.sigmoid: Activation("sigmoid"),
    torch.tanh: Activation("tanh"), F.hardswish: Activation("hardswish"), F.hardsigmoid: Activation("hardsigmoid"),
}
_ACTIVATION_METHODS = {"relu": Activation("relu"), "sigmoid": Activation("sigmoid"), "tanh": Activation("tanh")}
# Keyword arguments that leave an activation function's value unchanged.
_HARMLESS_KWARGS = {"inplace"}


def _activation_of(node: torch.fx.Node, root: nn.Module) -> Optional[Activation]:
    """The fusable activation ``node`` applies to its one tensor argument, or None."""
    if len(node.args) != 1 or set(node.kwargs) - _HARMLESS_KWARGS:
        return None
    act: Optional[Activation] = None
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        make = _ACTIVATION_MODULES.get(type(module))
        act = None if make is None else make(module)
    elif node.op == "call_function":
        act = _ACTIVATION_FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        act = _ACTIVATION_METHODS.get(node.target)
    return act if act is not None and _onednn.activation_available(act.name) else None


def _own_activation(conv: nn.Module) -> Tuple[bool, Optional[Activation]]:
    """(fusable, activation) for a conv's own ``activation=``: a torchblocks conv with one fuses it
    where oneDNN has it, else the conv is not packed."""
    if not getattr(conv, "has_activation", False):
        return True, None
    make = _ACTIVATION_MODULES.get(type(conv.act))
    act = None if make is None else make(conv.act)
    return act is not None and _onednn.activation_available(act.name), act


def packable(module: nn.Module) -> bool:
    """A CPU float32 ``nn.Conv2d`` / torchblocks conv with a static zero padding and no
    activation oneDNN cannot fuse."""
    return (
        type(module) in (nn.Conv2d, Conv2d, DepthwiseConv2d)
        and not getattr(module, "same_is_dynamic", False)
        and isinstance(module.padding, tuple)
        and module.padding_mode == "zeros"
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
        and _own_activation(module)[0]
    )


def is_pixel_conv(conv: nn.Conv2d, input_shape: Tuple[int, ...]) -> bool:
    """A 1x1 conv (groups 1, no padding, no activation of its own) on at most
    ``MAX_DENSE_PIXELS`` pixels: a dense layer over the channels."""
    return (
        conv.kernel_size == (1, 1) and conv.groups == 1 and tuple(conv.padding) == (0, 0)
        and input_shape[2] * input_shape[3] <= MAX_DENSE_PIXELS and not getattr(conv, "has_activation", False)
    )


class PixelConv2d(nn.Module):
    """Inference form of a 1x1 conv on single pixels: (N, C_in, 1, 1) -> (N, C_out, 1, 1) as one
    matrix product (``F.linear``), which costs a tenth of a oneDNN call at this size. Inputs of
    more pixels run the conv as it is.

    Args:
        conv: the 1x1 conv (copied, left untouched).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("matrix", conv.weight.detach().reshape(conv.out_channels, conv.in_channels).clone())

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        if x.dim() == 4 and x.shape[2] == 1 and x.shape[3] == 1:
            return F.linear(x.reshape(x.shape[0], -1), self.matrix, self.conv.bias).reshape(x.shape[0], -1, 1, 1)
        return self.conv(x)


class PackedTracer(LayerTracer):
    """A ``LayerTracer`` that also stops at the inference forms of the layers."""

    leaf_types = LayerTracer.leaf_types + (PackedConv2d, BlockedSeparable, PixelConv2d)


# Readers that make a tensor of their own from their input (never a view or the input itself):
# once they have run, the input's memory may be overwritten.
_COPYING_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, PackedConv2d, PixelConv2d, BlockedSeparable, nn.Linear, Dense, _BatchNorm, BatchNorm,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, GlobalAvgPool2d, GlobalMaxPool2d,
    MaxPool2d, AvgPool2d,
)
_COPYING_FUNCTIONS = (operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.cat)
_COPYING_METHODS = ("mean", "sum", "add", "mul", "sub")


def _copies(node: torch.fx.Node, root: nn.Module) -> bool:
    """Whether ``node`` makes a tensor of its own (see ``_COPYING_MODULES``)."""
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        if isinstance(module, _COPYING_MODULES):
            return True  # a PackedConv2d summing into its second input returns that, now dead
        return type(module) in _ACTIVATION_MODULES and not getattr(module, "inplace", False)
    if node.op == "call_method":
        return node.target in _COPYING_METHODS
    return node.op == "call_function" and node.target in _COPYING_FUNCTIONS


def _is_add(node: torch.fx.Node) -> bool:
    return (
        (node.op == "call_function" and node.target in (operator.add, torch.add))
        or (node.op == "call_method" and node.target == "add")
    ) and len(node.args) == 2 and not node.kwargs


def _overwritable(other: torch.fx.Node, add: torch.fx.Node, conv: torch.fx.Node, root: nn.Module) -> bool:
    """Whether the sum ``add`` of the call ``conv`` and ``other`` may be written into ``other``'s
    memory: ``other`` is a tensor of its own (not an input, not a view), and every other reader
    of it runs before ``conv`` and keeps no view of it."""
    if other.op == "placeholder" or not _copies(other, root):
        return False
    order = {n: i for i, n in enumerate(conv.graph.nodes)}
    readers = [u for u in other.users if u is not add]
    shape_only = set(readers) - set(real_users(other))
    return all(u in shape_only or (order[u] < order[conv] and _copies(u, root)) for u in readers)


class _Packer:
    """One pass over the flat graph: packs each conv call worth it and folds its followers in."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        self.root = graph_module
        self.graph = graph_module.graph
        self.calls: Dict[str, int] = {}
        for node in self.graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        self.names: Dict[str, int] = {}

    def _install(self, node: torch.fx.Node, module: nn.Module) -> None:
        """Make ``node`` call ``module``: in place of its target where that is called only here."""
        if self.calls[node.target] == 1:
            set_submodule(self.root, node.target, module)
            return
        count = self.names.get(node.target, 0) + 1
        self.names[node.target] = count
        name = f"{node.target}_call{count}"
        set_submodule(self.root, name, module)
        node.target = name

    def _sole_user(self, node: torch.fx.Node) -> Optional[torch.fx.Node]:
        """The one node reading ``node``'s values (calls reading only its shape aside), or None."""
        users = real_users(node)
        return users[0] if len(users) == 1 else None

    def _fold(self, node: torch.fx.Node, follower: torch.fx.Node) -> None:
        """``follower`` is done by ``node`` now: its readers read ``node``."""
        follower.replace_all_uses_with(node)
        self.graph.erase_node(follower)

    def conv(self, node: torch.fx.Node) -> None:
        conv = self.root.get_submodule(node.target)
        shape = node.meta.get("shape")
        size = node.args[0].meta.get("shape") if isinstance(node.args[0], torch.fx.Node) else None
        if shape is None or size is None or len(size) != 4:
            return
        if is_pixel_conv(conv, size):
            self._install(node, PixelConv2d(conv))
            return
        _, act = _own_activation(conv)
        residual = "none"
        user = self._sole_user(node)
        if act is None and user is not None and _activation_of(user, self.root) is not None:
            act = _activation_of(user, self.root)
            self._fold(node, user)
        elif act is None and user is not None and _is_add(user):
            other = user.args[1] if user.args[0] is node else user.args[0]
            if (isinstance(other, torch.fx.Node) and other is not node and other.meta.get("shape") == shape
                    and other.meta.get("dtype") == node.meta.get("dtype")):
                residual, act = self._sum(node, user, other)
        self._install(node, PackedConv2d(conv, list(size), activation=act, residual=residual))

    def _sum(self, node: torch.fx.Node, add: torch.fx.Node, other: torch.fx.Node) -> Tuple[str, Optional[Activation]]:
        """Fold ``add = node + other``, and a ReLU that only reads it, into the conv call ``node``;
        the residual mode and activation of its ``PackedConv2d``."""
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        if order[other] > order[node]:
            add.prepend(node)  # the conv runs once ``other`` exists, just before the sum
            for check in node.users:  # shape checks between its old place and the sum follow it
                if check is not add and order[check] < order[add]:
                    add.prepend(check)
        residual = "add_" if _overwritable(other, add, node, self.root) else "add"
        node.args = (node.args[0], other)
        self._fold(node, add)
        relu = self._sole_user(node)
        if relu is not None and _activation_of(relu, self.root) == Activation("relu"):
            self._fold(node, relu)
            return residual, Activation("relu")
        return residual, None

    def separable(self, node: torch.fx.Node) -> bool:
        """Run a depthwise conv call whose output only a 1×1 conv reads as a ``BlockedSeparable``
        where the example batch spans several blocks; whether it did."""
        depthwise = self.root.get_submodule(node.target)
        user = self._sole_user(node)
        size = node.args[0].meta.get("shape") if isinstance(node.args[0], torch.fx.Node) else None
        if user is None or user.op != "call_module" or len(user.args) != 1 or not spans_blocks(size):
            return False
        pointwise = self.root.get_submodule(user.target)
        if not (isinstance(depthwise, nn.Conv2d) and not getattr(depthwise, "has_activation", False)
                and depthwise.groups == depthwise.in_channels > 1 and packable(pointwise)
                and pointwise.kernel_size == (1, 1) and pointwise.groups == 1):
            return False
        if self.calls[node.target] != 1 or self.calls[user.target] != 1:
            return False
        act = _own_activation(pointwise)[1]
        follower = self._sole_user(user)
        if act is None and follower is not None and _activation_of(follower, self.root) is not None:
            act = _activation_of(follower, self.root)
            self._fold(user, follower)
        # A depthwise conv with Keras' dynamic 'same' pad stays eager; it is blocked all the same.
        if packable(depthwise):
            depthwise = PackedConv2d(depthwise, list(size))
        blocked = BlockedSeparable(depthwise, PackedConv2d(pointwise, list(node.meta["shape"]), activation=act))
        name = f"{node.target}_blocked"
        set_submodule(self.root, name, blocked)
        user.target = name
        user.args = (node.args[0],)
        self.graph.erase_node(node)
        return True

    def elementwise_in_place(self, node: torch.fx.Node) -> None:
        """A sum or product of two tensors whose result has the shape and dtype of an operand
        that is a tensor of its own and dead after it (EfficientNet's ``scale * x``) is computed
        into that operand (``x.mul_(scale)``): no new tensor of the feature map's size."""
        if not (node.op == "call_function" and node.target in _IN_PLACE_METHODS and len(node.args) == 2
                and not node.kwargs):
            return
        for target, other in (node.args, node.args[::-1]):
            if (isinstance(target, torch.fx.Node) and target is not other
                    and target.meta.get("shape") == node.meta.get("shape") is not None
                    and target.meta.get("dtype") == node.meta.get("dtype")
                    and _overwritable(target, node, node, self.root)):
                with self.graph.inserting_before(node):
                    in_place = self.graph.call_method(_IN_PLACE_METHODS[node.target], (target, other))
                in_place.meta = dict(node.meta)
                self._fold(in_place, node)
                return

    def mean_pool(self, node: torch.fx.Node) -> None:
        """Global average pooling to one pixel as ``x.mean((-2, -1), keepdim=True)``: the same
        sums, without the general adaptive pooling's extra passes."""
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return
        module = self.root.get_submodule(node.target)
        shape = node.args[0].meta.get("shape") if isinstance(node.args[0], torch.fx.Node) else None
        if type(module) is not nn.AdaptiveAvgPool2d or module.output_size not in (1, (1, 1)) or len(shape or ()) != 4:
            return
        with self.graph.inserting_before(node):
            mean = self.graph.call_method("mean", (node.args[0], (-2, -1)), {"keepdim": True})
        mean.meta = dict(node.meta)
        self._fold(mean, node)

    def relu_in_place(self, node: torch.fx.Node) -> None:
        """A ReLU call whose input is a tensor of its own that nothing else reads runs in place."""
        if _activation_of(node, self.root) != Activation("relu"):
            return
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or real_users(source) != [node]:
            return
        if not _copies(source, self.root):
            return
        with self.graph.inserting_before(node):
            in_place = self.graph.call_function(torch.relu_, (source,))
        in_place.meta = dict(node.meta)
        self._fold(in_place, node)


_IN_PLACE_METHODS = {operator.add: "add_", torch.add: "add_", operator.mul: "mul_", torch.mul: "mul_"}


def pack_graph(graph_module: torch.fx.GraphModule) -> None:
    """Rewrite the flat ``graph_module`` (``_fx.record_shapes`` has run) for oneDNN, in place.
    Needs ``_onednn.available()``."""
    packer = _Packer(graph_module)
    for node in list(packer.graph.nodes):
        if node.graph is not packer.graph or node.op != "call_module":
            continue  # erased by an earlier rewrite, or not a layer
        module = graph_module.get_submodule(node.target)
        if isinstance(module, nn.Conv2d) and packer.separable(node):
            continue
        if packable(module):
            packer.conv(node)
    for node in list(packer.graph.nodes):
        packer.mean_pool(node)
    for node in list(packer.graph.nodes):
        packer.relu_in_place(node)
    for node in list(packer.graph.nodes):
        packer.elementwise_in_place(node)
    graph_module.delete_all_unused_submodules()
