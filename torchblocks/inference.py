"""``optimize_for_inference``: the fastest exact CPU inference path for a model.

On an eval-mode copy: BatchNorm folded into the convolutions (``fuse_bn``), channels-last memory,
every conv pre-packed for oneDNN with a ReLU that only reads its output fused in
(``_onednn.PackedConv2d``; ``relu_plan`` decides which), the other sole-reader ReLUs in place, a
``SeparableConv2d`` whose example batch spans several cache-sized blocks run a block at a time
(``BlockedSeparable``), and the whole flattened into one ``torch.fx.GraphModule`` that frees each
intermediate after its last use. The other paths (frozen TorchScript, ``torch.compile``) are
available by name; BENCHMARKS.md has the measured ratios between them.
"""
import copy
import operator
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.fx
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from . import _onednn
from ._checks import ExampleInputs, as_input_tuple, check_module, verify
from ._fx import LayerTracer, real_users, set_submodule, trace_layers
from ._onednn import PackedConv2d
from .conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from .fusion import fuse_bn
from .linear import Dense
from .norm import BatchNorm
from .pooling import AvgPool2d, MaxPool2d

__all__ = ["BlockedSeparable", "inference_candidates", "optimize_for_inference", "relu_plan"]

# Largest input block BlockedSeparable runs its depthwise and pointwise convs on at once.
_BLOCK_BYTES = 4 << 20


def _samples_per_block(sample_bytes: int, block_bytes: int) -> int:
    """How many samples of ``sample_bytes`` each a block of ``block_bytes`` holds (at least one)."""
    return max(1, block_bytes // max(1, sample_bytes))


class BlockedSeparable(nn.Module):
    """Inference form of a ``SeparableConv2d``: its two convs run a few samples at a time.

    (N, C_in, H, W) -> (N, C_out, H', W'). Run whole at a large batch, the depthwise output is one
    buffer of tens of MiB that glibc returns to the kernel after each call and page-faults in again
    on the next (BENCHMARKS.md has the measured cost). Here both convs run on blocks of samples whose
    input is at most ``_BLOCK_BYTES``, so the depthwise
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


class _PackedTracer(LayerTracer):
    """A ``LayerTracer`` that also stops at the inference forms of the layers."""

    leaf_types = LayerTracer.leaf_types + (PackedConv2d, BlockedSeparable)


# Nodes whose output is a tensor of their own (not a view or the input itself), so that a ReLU that
# is their only reader may overwrite it.
_FRESH_OUTPUT_MODULES = (nn.Conv2d, nn.Linear, _BatchNorm, BatchNorm, MaxPool2d, AvgPool2d, Dense)
_FRESH_OUTPUT_CALLS = (operator.add, torch.add)


def _relu_source(node: torch.fx.Node, model: nn.Module) -> Optional[torch.fx.Node]:
    """The node whose output ``node`` (a ReLU) would overwrite if made in-place, looking through
    folded-BN ``nn.Identity`` nodes, or None where another node reads that output too."""
    source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    while isinstance(source, torch.fx.Node) and len(real_users(source)) == 1:
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
    traced = trace_layers(model)
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
    ``BlockedSeparable``. Needs ``_onednn.available()``.
    """
    if _packable(model):
        return PackedConv2d(model, _conv_input_sizes(model, inputs)[""])
    fused, inplace = relu_plan(model)
    sizes = _conv_input_sizes(model, inputs)
    separables = [
        name for name, m in model.named_modules()
        if isinstance(m, SeparableConv2d) and _spans_blocks(sizes.get(f"{name}.depthwise" if name else "depthwise"))
    ]
    for name, size in sizes.items():
        relu = fused.get(name)
        set_submodule(model, name, PackedConv2d(model.get_submodule(name), size, relu=relu is not None))
        if relu is not None:
            set_submodule(model, relu, nn.Identity())
    for name in inplace:
        model.get_submodule(name).inplace = True
    if isinstance(model, SeparableConv2d):
        return BlockedSeparable(model)
    for name in separables:
        set_submodule(model, name, BlockedSeparable(model.get_submodule(name)))
    return model


def flatten(model: nn.Module) -> nn.Module:
    """``model`` as one ``torch.fx.GraphModule`` over its layers, without the folded-away
    ``nn.Identity`` nodes. The generated forward drops each intermediate after its last use, where
    nested ``nn.Sequential`` calls keep every block input alive until the block returns, which
    raises the peak memory of a call (BENCHMARKS.md, "Peak memory")."""
    graph = _PackedTracer().trace(model)
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
    traced = trace_layers(model)
    if traced is None:
        return _packable(model) or isinstance(model, SeparableConv2d)
    graph, _ = traced
    readers = [user for node in graph.nodes if node.op == "placeholder" for user in real_users(node)]
    return all(r.op == "call_module" and _packable(model.get_submodule(r.target)) for r in readers)


def _packed(model: nn.Module, inputs: Tuple[Tensor, ...]) -> nn.Module:
    if not _onednn.available():
        raise NotImplementedError(
            f"optimize_for_inference: method {_PACKED!r} needs oneDNN weight packing, which is "
            f"unavailable here: {_onednn.unavailable_reason()}. Use method='auto' or "
            f"'fuse_bn+channels_last'."
        )
    model = model.to(memory_format=torch.channels_last)
    convert_inputs = not _inputs_read_only_by_convs(model)
    packed = pack_convs(model, tuple(x.contiguous(memory_format=torch.channels_last) for x in inputs))
    if not _PackedTracer().is_leaf_module(packed, ""):
        packed = flatten(packed)
    # A packed conv reads any layout and writes channels-last; a channels-last copy of the input
    # made first would stay alive for the whole call, and in front of
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

    ``"auto"`` is ``"fuse_bn+channels_last+packed"`` (where oneDNN weight packing works in this
    torch build; else ``"fuse_bn+channels_last"``, with a ``RuntimeWarning``), in eager mode: BatchNorm folded into the
    convs (``fuse_bn``), channels-last memory, every conv a ``PackedConv2d`` (weight pre-packed
    for oneDNN for the example input's size, a ReLU that only reads its output fused in), the other
    sole-reader ReLUs in place, a ``SeparableConv2d`` whose example batch spans several cache-sized
    blocks a ``BlockedSeparable``, and the whole flattened into one ``torch.fx.GraphModule`` that
    frees each intermediate after its last use. BENCHMARKS.md compares the methods by measurement.
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
    choice = _default_method() if method == "auto" else method
    if choice not in candidates:
        raise ValueError(
            f"Invalid value for argument `method`. Expected 'auto' or one of {tuple(candidates)}. "
            f"Received method={method!r}."
        )
    optimized = candidates[choice]()
    with torch.no_grad():
        verify(eager(*inputs), optimized(*inputs), type(model).__name__, f"optimize_for_inference ({choice})", rtol, atol)
    return optimized


_PACKED = "fuse_bn+channels_last+packed"
_FALLBACK = "fuse_bn+channels_last"


def _default_method() -> str:
    """The packed path where oneDNN packing works; else, with a warning, the unpacked one."""
    if _onednn.available():
        return _PACKED
    warnings.warn(
        f"optimize_for_inference: oneDNN weight packing is unavailable ({_onednn.unavailable_reason()}); "
        f"using method {_FALLBACK!r}.",
        RuntimeWarning,
        stacklevel=3,
    )
    return _FALLBACK
