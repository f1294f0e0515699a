"""Inference optimisation: BatchNorm folding (``fuse_bn``) and ``optimize_for_inference``.

``fuse_bn`` finds, with a ``torch.fx`` trace whose leaves are the torchblocks layers, every
channels-first BatchNorm whose only input is a convolution whose output feeds nothing else, folds
the BN's affine transform into that convolution's weight and bias, and replaces the BN by
``nn.Identity`` in a deep copy. The copy keeps the original module classes and forward code, so it
still scripts, traces and exports like the original.

``optimize_for_inference`` goes further on the copy it returns: every ``SeparableConv2d`` becomes a
``BlockedSeparable`` (depthwise conv and pointwise GEMM run a cache-sized block at a time, with a
ReLU that only reads the layer's output fused in) and the other ReLUs whose input nothing else
reads run in place.
"""
import copy
import operator
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from .conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from ._checks import ExampleInputs, as_input_tuple, check_module, check_nchw, verify
from .linear import Dense
from .norm import BatchNorm
from .pooling import AvgPool2d, MaxPool2d
from .models._layers import check_input_size
from .residual import _check_same_shape

# Calls that read a tensor's shape only: folding keeps shapes, so they may share a conv's output.
_SHAPE_ONLY_CALLS = (_check_same_shape, check_input_size)


class _LayerTracer(torch.fx.Tracer):
    """Stops at convolutions, BatchNorms, pools and dense layers; traces through everything else,
    including ``SeparableConv2d``, so its pointwise conv is a node of its own."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, SeparableConv2d):
            return False
        if isinstance(m, (nn.Conv2d, BatchNorm, _BatchNorm, MaxPool2d, AvgPool2d, Dense, PackedConv2d, BlockedSeparable)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _bn_stats(module: nn.Module) -> Optional[_BatchNorm]:
    """The torch BatchNorm to fold, or None where it cannot be folded into a preceding conv."""
    if isinstance(module, BatchNorm):
        if module.axis != 1:
            return None
        module = module.bn
    if not isinstance(module, _BatchNorm) or module.running_mean is None or module.running_var is None:
        return None
    return module


def _foldable_conv(module: nn.Module) -> bool:
    # A conv with its own activation (tb.Conv2d(activation=...), as in ConvBN) applies it before
    # the BN: BN(act(conv(x))) is not a conv.
    return isinstance(module, nn.Conv2d) and not getattr(module, "has_activation", False)


def _fold(conv: nn.Conv2d, bn: _BatchNorm) -> None:
    """conv <- bn(conv) in eval numerics: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, module)


def _real_users(node: torch.fx.Node) -> List[torch.fx.Node]:
    return [u for u in node.users if not (u.op == "call_function" and u.target in _SHAPE_ONLY_CALLS)]


def _trace(model: nn.Module) -> Optional[Tuple[torch.fx.Graph, Dict[str, int]]]:
    """The layer-level fx graph of ``model`` and how often each submodule is called in it, or
    None when ``model`` is itself a leaf layer."""
    tracer = _LayerTracer()
    if tracer.is_leaf_module(model, ""):
        return None
    graph = tracer.trace(model)
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return graph, calls


def conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """Qualified names ``(conv, bn)`` of the BatchNorms ``fuse_bn`` folds into a conv.

    A pair qualifies when the BN (channels-first, with running statistics) is called only on the
    output of a conv without activation, that output feeds nothing else, and each module is called
    exactly once in the forward pass.
    """
    traced = _trace(model)
    if traced is None:
        return []  # a single layer: no conv -> BN pair inside
    graph, calls = traced
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or _bn_stats(model.get_submodule(node.target)) is None:
            continue
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if source.op != "call_module" or not _foldable_conv(model.get_submodule(source.target)):
            continue
        if _real_users(source) != [node] or calls[source.target] != 1 or calls[node.target] != 1:
            continue
        pairs.append((source.target, node.target))
    return pairs


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded in.

    Folds BN after ``nn.Conv2d`` / ``tb.Conv2d`` / ``DepthwiseConv2d``, the pointwise conv of a
    ``SeparableConv2d`` and the conv of ``Projection(norm=True)``, for ``tb.BatchNorm(axis=1)``
    and plain ``nn.BatchNorm2d``; the conv gains a bias where it had none and the BN becomes
    ``nn.Identity``. BatchNorm with ``axis=-1``, not fed by a conv, or after a conv with an
    activation (``ConvBN``: ReLU sits between) stays. Outputs equal the eval-mode model's up to
    float32 round-off. The model must be ``torch.fx``-traceable at the layer level; ``model``
    itself is not changed.
    """
    check_module(model)
    fused = copy.deepcopy(model).eval()
    try:
        pairs = conv_bn_pairs(fused)
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        raise TypeError(
            f"fuse_bn needs a torch.fx-traceable forward; {type(model).__name__} failed to trace: {exc}"
        ) from exc
    for conv_name, bn_name in pairs:
        _fold(fused.get_submodule(conv_name), _bn_stats(fused.get_submodule(bn_name)))
        _set_submodule(fused, bn_name, nn.Identity())
    return fused


def _onednn_packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class PackedConv2d(nn.Module):
    """Inference form of an ``nn.Conv2d`` on CPU: the weight pre-packed for oneDNN, a ReLU fused.

    (N, C_in, H, W) -> (N, C_out, H', W'), channels-last from oneDNN. Eager ``nn.Conv2d`` hands
    oneDNN a plain weight, which it reorders into its blocked layout on every call; here the weight
    is reordered once, for the input size seen at construction (other sizes run too, with the same
    values), and only the packed copy is kept. A following ReLU becomes a oneDNN post-op instead of a second pass
    over the output. ``state_dict``, ``deepcopy``, pickling and ``.to()`` see the plain weight
    (unpacked on demand, exactly); on another device or dtype the layer runs ``F.conv2d`` instead.

    Args:
        conv: the convolution (static zero padding; copied, left untouched).
        input_size: the (N, C, H, W) it will see, for oneDNN's choice of layout.
        relu: fuse a ReLU applied to the conv's output.
    """

    relu: Final[bool]
    in_channels: Final[int]
    layer_name: Final[str]

    def __init__(self, conv: nn.Conv2d, input_size: List[int], relu: bool = False) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(
                f"Invalid value for argument `conv`. PackedConv2d needs a static zero padding. "
                f"Received conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        weight = conv.weight.detach()
        bias = weight.new_zeros(weight.shape[0]) if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias)
        self.stride: List[int] = list(conv.stride)
        self.padding: List[int] = list(conv.padding)
        self.dilation: List[int] = list(conv.dilation)
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.layer_name = getattr(conv, "layer_name", type(conv).__name__)
        self.relu = relu
        self.input_size: List[int] = list(input_size)
        self._set_weight(weight)

    def _set_weight(self, weight: Tensor) -> None:
        """Keep ``weight`` packed for oneDNN where it runs there (CPU float32), else as it is."""
        self.onednn = weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_packing_available()
        if self.onednn:
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, self.input_size
            )
        self.packed = weight

    @property
    def weight(self) -> Tensor:
        """The plain (C_out, C_in / groups, kh, kw) weight."""
        return self.packed.to_dense() if self.packed.is_mkldnn else self.packed

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        check_nchw(x, self.in_channels, self.layer_name)
        if self.onednn:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.packed, self.bias, self.padding, self.stride, self.dilation, self.groups,
                "relu" if self.relu else "none", [], "",
            )
        y = F.conv2d(x, self.packed, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu(y) if self.relu else y

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # The opaque oneDNN tensor has no storage to convert: convert the plain weight, repack.
        super()._apply(fn, recurse)
        self._set_weight(fn(self.weight))
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
        elif weight.shape != self.packed.shape:
            error_msgs.append(
                f"size mismatch for {prefix}weight: copying a param with shape {tuple(weight.shape)}, "
                f"the shape in current model is {tuple(self.packed.shape)}."
            )
            return  # nothing of this layer is loaded
        rest = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        errors = len(error_msgs)
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight is not None and len(error_msgs) == errors:
            self._set_weight(weight.detach().to(self.bias.dtype).clone())

    def __getstate__(self) -> Dict[str, object]:
        state = self.__dict__.copy()
        state["packed"] = self.weight
        return state

    def __setstate__(self, state: Dict[str, object]) -> None:
        super().__setstate__(state)
        self._set_weight(self.packed)

    def extra_repr(self) -> str:
        c_out, c_in = self.packed.shape[0], self.packed.shape[1] * self.groups
        return (
            f"{c_in}, {c_out}, kernel_size={tuple(self.packed.shape[2:])}, stride={tuple(self.stride)}, "
            f"padding={tuple(self.padding)}, groups={self.groups}, relu={self.relu}"
        )


# Largest input block BlockedSeparable runs its depthwise and pointwise convs on at once.
_BLOCK_BYTES = 4 << 20


def _samples_per_block(sample_bytes: int, block_bytes: int) -> int:
    """How many samples of ``sample_bytes`` each a block of ``block_bytes`` holds (at least one)."""
    return max(1, block_bytes // max(1, sample_bytes))


class BlockedSeparable(nn.Module):
    """Inference form of a ``SeparableConv2d``: its two convs run a few samples at a time.

    (N, C_in, H, W) -> (N, C_out, H', W'). Run whole at a large batch, the depthwise output is one
    buffer of tens of MiB that glibc returns to the kernel after each call and page-faults in again
    on the next (11,888 minor faults per call at N = 8, C = 256, 56×56: a third of the layer's
    time). Here both convs run on blocks of samples whose input is at most 4 MiB, so the depthwise
    output stays in the last-level cache until the pointwise conv reads it, and is served from the
    heap again on the next call; the block outputs are joined once. A batch that fits in one block
    runs the two convs as they are.

    Args:
        layer: the ``SeparableConv2d``, its convs possibly packed already (used as they are).
    """

    has_activation: Final[bool]
    block_bytes: Final[int]

    def __init__(self, layer: SeparableConv2d) -> None:
        super().__init__()
        self.depthwise = layer.depthwise
        self.pointwise = layer.pointwise
        self.act = layer.act
        self.has_activation = layer.has_activation
        self.block_bytes = _BLOCK_BYTES

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        n = x.shape[0]
        step = _samples_per_block(x.numel() // max(1, n) * x.element_size(), self.block_bytes)
        if n <= step:
            y = self.pointwise(self.depthwise(x))
        else:
            y = torch.cat([self.pointwise(self.depthwise(x[i:i + step])) for i in range(0, n, step)])
        if self.has_activation:
            y = self.act(y)
        return y


# Nodes whose output is a tensor of their own (not a view or the input itself), so that a ReLU that
# is their only reader may overwrite it.
_FRESH_OUTPUT_MODULES = (nn.Conv2d, nn.Linear, _BatchNorm, BatchNorm, MaxPool2d, AvgPool2d, Dense)
_FRESH_OUTPUT_CALLS = (operator.add, torch.add)


def _relu_source(node: torch.fx.Node, model: nn.Module) -> Optional[torch.fx.Node]:
    """The node whose output ``node`` (a ReLU) would overwrite if made in-place, looking through
    folded-BN ``nn.Identity`` nodes, or None where another node reads that output too."""
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    while isinstance(source, torch.fx.Node) and len(_real_users(source)) == 1:
        if source.op == "call_module" and isinstance(model.get_submodule(source.target), nn.Identity):
            source = source.args[0]
            continue
        return source
    return None


def _packable(module: nn.Module) -> bool:
    return (
        type(module) in (nn.Conv2d, Conv2d, DepthwiseConv2d)
        and not getattr(module, "same_is_dynamic", False)
        and not getattr(module, "has_activation", False)
        and isinstance(module.padding, tuple)
        and module.padding_mode == "zeros"
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
    )


def relu_plan(model: nn.Module) -> Tuple[Dict[str, str], List[str]]:
    """Where ``optimize_for_inference`` fuses or runs ReLUs in place, by qualified name.

    Returns ``({conv: relu}, [relu, ...])``. An ``nn.ReLU`` called once, whose input nothing else
    reads (looking through ``nn.Identity``), is fused into the packable conv that produced it
    (called once: a plain or torchblocks conv with static padding and no activation of its own,
    e.g. the pointwise conv of a ``SeparableConv2d``), or else made in-place where that input is
    a tensor of its own (a conv, dense, BN, pool or sum output). A ReLU whose input is also read
    elsewhere, like a Keras block input that feeds the shortcut too, is left alone.
    """
    traced = _trace(model)
    if traced is None:
        return {}, []
    graph, calls = traced
    fused: Dict[str, str] = {}
    inplace: List[str] = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        relu = model.get_submodule(node.target)
        source = _relu_source(node, model) if type(relu) is nn.ReLU else None
        if source is None:
            continue
        if source.op == "call_module" and calls[source.target] == 1:
            producer = model.get_submodule(source.target)
            if _packable(producer):
                fused[source.target] = node.target
            elif isinstance(producer, _FRESH_OUTPUT_MODULES) and not relu.inplace:
                inplace.append(node.target)
        elif source.op == "call_function" and source.target in _FRESH_OUTPUT_CALLS and not relu.inplace:
            inplace.append(node.target)
    return fused, inplace


def _conv_input_sizes(model: nn.Module, inputs: Tuple[Tensor, ...]) -> Dict[str, List[int]]:
    """The input shape each packable conv of ``model`` sees on ``inputs`` (the last, if several)."""
    sizes: Dict[str, List[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if _packable(module):
            def record(module: nn.Module, args: Tuple[Tensor, ...], name: str = name) -> None:
                sizes[name] = list(args[0].shape)

            handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _spans_blocks(input_size: Optional[List[int]]) -> bool:
    """Whether a ``BlockedSeparable`` would run a float32 (N, C, H, W) input of this size in
    several blocks."""
    if input_size is None:
        return False
    sample_bytes = 4
    for d in input_size[1:]:
        sample_bytes *= d
    return input_size[0] > _samples_per_block(sample_bytes, _BLOCK_BYTES)


def pack_convs(model: nn.Module, inputs: Tuple[Tensor, ...]) -> nn.Module:
    """``model`` (an eval-mode copy, changed in place) with its convs pre-packed for oneDNN.

    Every packable conv that ``inputs`` reach becomes a ``PackedConv2d``, with the ReLU of
    ``relu_plan`` fused (that ReLU becomes ``nn.Identity``); the other ReLUs of the plan run in
    place; a ``SeparableConv2d`` whose example batch spans several blocks becomes a
    ``BlockedSeparable``. Without oneDNN (or for non-float32 / non-CPU convs) only the ReLU and
    block changes apply.
    """
    if _packable(model):
        return PackedConv2d(model, _conv_input_sizes(model, inputs)[""]) if _onednn_packing_available() else model
    fused, inplace = relu_plan(model)
    sizes = _conv_input_sizes(model, inputs)
    separables = [
        name for name, m in model.named_modules()
        if isinstance(m, SeparableConv2d) and _spans_blocks(sizes.get(f"{name}.depthwise" if name else "depthwise"))
    ]
    for name, size in (sizes.items() if _onednn_packing_available() else ()):
        relu = fused.get(name)
        _set_submodule(model, name, PackedConv2d(model.get_submodule(name), size, relu=relu is not None))
        if relu is not None:
            _set_submodule(model, relu, nn.Identity())
    for name in inplace:
        model.get_submodule(name).inplace = True
    if isinstance(model, SeparableConv2d):
        return BlockedSeparable(model)
    for name in separables:
        _set_submodule(model, name, BlockedSeparable(model.get_submodule(name)))
    return model


def flatten(model: nn.Module) -> nn.Module:
    """``model`` as one ``torch.fx.GraphModule`` over its layers, without the folded-away
    ``nn.Identity`` nodes. The generated forward drops each intermediate after its last use, where
    nested ``nn.Sequential`` calls keep every block input alive until the block returns (Xception at
    299×299: 36.9 MiB of tensors at the peak, as timm, against 26.4 MiB flattened)."""
    graph = _LayerTracer().trace(model)
    for node in list(graph.nodes):
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return torch.fx.GraphModule(model, graph, class_name=type(model).__name__)


class _ChannelsLast(nn.Module):
    """Runs ``inner`` on a channels-last copy of a 4-D input (the output values are the same)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)


def _frozen(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.14's FutureWarning for torch.jit repeats once per submodule; the caller asked
        # for this method by name, so the deprecation is known and not repeated here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))


def _compiled(model: nn.Module) -> nn.Module:
    # Inductor's freezing constant-folds the weights and prepacks them for oneDNN on CPU.
    return torch.compile(model, fullgraph=True, dynamic=False, options={"freezing": True})


def _inputs_read_only_by_convs(model: nn.Module) -> bool:
    """Whether every reader of ``model``'s inputs is a packable conv (which takes any layout)."""
    traced = _trace(model)
    if traced is None:
        return _packable(model) or isinstance(model, SeparableConv2d)
    graph, _ = traced
    readers = [user for node in graph.nodes if node.op == "placeholder" for user in _real_users(node)]
    return all(r.op == "call_module" and _packable(model.get_submodule(r.target)) for r in readers)


def _packed(model: nn.Module, inputs: Tuple[Tensor, ...]) -> nn.Module:
    model = model.to(memory_format=torch.channels_last)
    convert_inputs = not (_onednn_packing_available() and _inputs_read_only_by_convs(model))
    packed = pack_convs(model, tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs))
    if not _LayerTracer().is_leaf_module(packed, ""):
        packed = flatten(packed)
    # A packed conv reads any layout and writes channels-last; a channels-last copy of the input
    # made first would stay alive for the whole call (+1 MiB at Xception's 299×299), and in front of
    # a BlockedSeparable would bring back the large buffer it avoids.
    layer = isinstance(packed, (PackedConv2d, BlockedSeparable))
    return _ChannelsLast(packed) if convert_inputs and not layer else packed


def inference_candidates(model: nn.Module, inputs: Tuple[Tensor, ...]) -> Dict[str, Callable[[], nn.Module]]:
    """Builders of the inference paths ``optimize_for_inference`` chooses from, by name.

    ``model`` must already be an eval-mode copy (the builders fold and convert it); ``inputs`` are
    the example inputs (the packed path records the size each conv sees).
    """
    return {
        "eager": lambda: model,
        "fuse_bn": lambda: fuse_bn(model),
        "fuse_bn+channels_last": lambda: _ChannelsLast(fuse_bn(model).to(memory_format=torch.channels_last)),
        "fuse_bn+channels_last+packed": lambda: _packed(fuse_bn(model), inputs),
        "frozen_torchscript": lambda: _frozen(fuse_bn(model)),
        "channels_last+frozen_torchscript": lambda: _ChannelsLast(
            _frozen(fuse_bn(model).to(memory_format=torch.channels_last))
        ),
        "compile": lambda: _compiled(fuse_bn(model)),
        "channels_last+compile": lambda: _ChannelsLast(
            _compiled(fuse_bn(model).to(memory_format=torch.channels_last))
        ),
    }


def optimize_for_inference(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    method: str = "auto",
    rtol: float = 1e-4,
    atol: float = 1e-4,
) -> nn.Module:
    """The fastest exact CPU inference path for ``model``, checked against eager mode.

    ``"auto"`` is ``"fuse_bn+channels_last+packed"``, in eager mode: BatchNorm folded into the
    convs (``fuse_bn``), channels-last memory, every conv a ``PackedConv2d`` (weight pre-packed
    for oneDNN for the example input's size, a ReLU that only reads its output fused in), the other
    sole-reader ReLUs in place, a ``SeparableConv2d`` whose example batch spans several 4 MiB
    blocks a ``BlockedSeparable``, and the whole flattened into one ``torch.fx.GraphModule`` that
    frees each intermediate after its last use (Xception's peak tensor memory 0.71 of timm's). Measured on 2 CPU threads (torch 2.14.1,
    calls interleaved, medians), Xception at batch 1, 299×299, relative to "auto": eager 1.51,
    fuse_bn 1.45, fuse_bn+channels_last 1.14, frozen TorchScript 1.36, channels_last + frozen
    TorchScript 1.36, ``torch.compile`` (inductor, freezing) 1.06, channels_last + compile 1.07.
    Inputs of any size work with every method but ``"compile"`` (recompiles per shape); the packed
    layout is chosen for the example's size. The result is for serving in this process: export
    the model itself (``tb.export``), not the optimised copy.

    Args:
        model: the module (left untouched; an eval-mode copy is optimised).
        example_inputs: a tensor or tuple of tensors at the size to serve, e.g. (1, 3, 299, 299).
        method: ``"auto"`` or a name of ``inference_candidates``.
        rtol, atol: tolerance of the check against the eval-mode model (1e-4).

    Returns:
        A callable module; outputs match ``model.eval()`` to the tolerance.
    """
    check_module(model)
    inputs = as_input_tuple(example_inputs, "example_inputs")
    eager = copy.deepcopy(model).eval()
    candidates = inference_candidates(eager, inputs)
    choice = _DEFAULT_METHOD if method == "auto" else method
    if choice not in candidates:
        raise ValueError(
            f"Invalid value for argument `method`. Expected 'auto' or one of {tuple(candidates)}. "
            f"Received method={method!r}."
        )
    optimized = candidates[choice]()
    with torch.no_grad():
        verify(eager(*inputs), optimized(*inputs), type(model).__name__, f"optimize_for_inference ({choice})", rtol, atol)
    return optimized


_DEFAULT_METHOD = "fuse_bn+channels_last+packed"
