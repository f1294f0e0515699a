"""``optimize_for_inference``: the fastest exact CPU inference path for a model.

On an eval-mode copy: BatchNorm folded into the convolutions (``fuse_bn``), channels-last memory,
every conv pre-packed for oneDNN with a ReLU that only reads its output fused in
(``_onednn.PackedConv2d``; ``relu_plan`` decides which), the other sole-reader ReLUs in place, a
``SeparableConv2d`` whose example batch spans several cache-sized blocks run a block at a time
(``BlockedSeparable``), and the whole flattened into one ``torch.fx.GraphModule`` that frees each
intermediate after its last use. The other paths (frozen TorchScript, ``torch.compile``) are
available by name; BENCHMARKS.md has the measured ratios between them. Whatever the path, the
result is an ``InferenceModule``: no autograd, eager mode's memory formats, the example's dtypes.
"""
import copy
import operator
import warnings
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import Tensor, nn
from torch.jit import Final
from torch.nn.modules.batchnorm import _BatchNorm

from . import _onednn
from ._checks import ExampleInputs, as_input_tuple, check_module, first_line, verify
from ._fx import LayerTracer, guard_layouts, real_users, record_shapes, set_submodule, trace_layers
from ._onednn import PackedConv2d
from .conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from .fusion import fuse_bn
from .linear import Dense
from .norm import BatchNorm
from .pooling import AvgPool2d, MaxPool2d

__all__ = [
    "BlockedSeparable", "InferenceModule", "TOLERANCES", "inference_candidates", "optimize_for_inference",
    "relu_plan",
]

# Largest input block BlockedSeparable runs its depthwise and pointwise convs on at once.
_BLOCK_BYTES = 4 << 20

# Tolerance of the build-time check against eager mode, by the output's dtype: an optimised path
# may differ by atol + rtol * max|output| with rtol = atol = this value. Folding BN rounds the
# weights once more in the model's dtype; measured on Xception, ResNet-18 and ResNet-50 (BN
# statistics from a real batch), eager and folded differ by 2e-6 (float32), 4e-3 (float16) and
# 2.5e-2 (bfloat16) of the largest output, while another input moves the output by 24-51% of it.
TOLERANCES: Dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}


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
        self.act = getattr(layer, "act", nn.Identity())
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
    elsewhere, like a Keras block input that feeds the shortcut too, is left alone, and so is a
    ReLU module called more than once (one module instance serves every call).
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


def _input_sizes(model: nn.Module, inputs: Tuple[Tensor, ...]) -> Dict[str, List[int]]:
    """The input shape each packable conv and each ``SeparableConv2d`` of ``model`` sees on
    ``inputs`` (the last, if called several times)."""
    sizes: Dict[str, List[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if _packable(module) or isinstance(module, SeparableConv2d):
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


def _block_separables(model: nn.Module, sizes: Dict[str, List[int]]) -> None:
    """Every ``SeparableConv2d`` of ``model`` whose example batch spans several blocks becomes a
    ``BlockedSeparable`` (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, SeparableConv2d) and _spans_blocks(sizes.get(name)):
            set_submodule(model, name, BlockedSeparable(module))


def pack_convs(
    graph_module: torch.fx.GraphModule, sizes: Dict[str, List[int]], plan: Tuple[Dict[str, str], List[str]]
) -> None:
    """Pre-pack the convs of ``graph_module`` (changed in place) for oneDNN.

    Every packable conv in ``sizes`` (qualified name -> the input size it sees) becomes a
    ``PackedConv2d``, with the ReLU of ``plan`` (``relu_plan``) fused (that ReLU becomes
    ``nn.Identity``); the other ReLUs of the plan run in place. Needs ``_onednn.available()``.
    """
    fused, inplace = plan
    for name, size in sizes.items():
        if not _packable(graph_module.get_submodule(name)):
            continue  # a SeparableConv2d: its convs are packed by their own names
        relu = fused.get(name)
        set_submodule(graph_module, name, PackedConv2d(graph_module.get_submodule(name), size, relu=relu is not None))
        if relu is not None:
            set_submodule(graph_module, relu, nn.Identity())
    for name in inplace:
        graph_module.get_submodule(name).inplace = True


def flatten(model: nn.Module, name: str) -> torch.fx.GraphModule:
    """``model`` as one ``torch.fx.GraphModule`` (class ``name``) over its layers. The generated
    forward drops each intermediate after its last use, where nested ``nn.Sequential`` calls keep
    every block input alive until the block returns, which raises the peak memory of a call
    (BENCHMARKS.md, "Peak memory")."""
    return torch.fx.GraphModule(model, _PackedTracer().trace(model), class_name=name)


def _drop_identities(graph_module: torch.fx.GraphModule) -> None:
    """Remove the calls of ``nn.Identity`` (folded BatchNorms, fused ReLUs) from the graph."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph_module.delete_all_unused_submodules()


def _weights_to_channels_last(model: nn.Module) -> None:
    """Every 4-D parameter and buffer of ``model`` in channels-last memory (in place, ties kept);
    ``Module.to(memory_format=...)`` would refuse the 5-D weights of a ``Conv3d``."""
    for module in model.modules():
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if tensor.dim() == 4 and not tensor.is_mkldnn:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def _takes_any_layout(model: nn.Module) -> Callable[[torch.fx.Node], bool]:
    # A packed conv reads any layout and writes channels-last: a channels-last copy of the input
    # made for it would stay alive for the whole call, and in front of a BlockedSeparable would
    # bring back the large buffer it avoids.
    def check(node: torch.fx.Node) -> bool:
        return node.op == "call_module" and isinstance(model.get_submodule(node.target), (PackedConv2d, BlockedSeparable))

    return check


def _channels_last(model: nn.Module, inputs: Tuple[Tensor, ...], pack: bool) -> torch.fx.GraphModule:
    """The flat channels-last graph of ``model`` (an eval-mode copy, changed), convs packed with
    ``pack``; 4-D inputs are converted where a layer reads them, and code that may depend on the
    layout, and the outputs, see eager mode's contiguous tensors (``_fx.guard_layouts``).

    Everything that runs the model (the conv input sizes, the shapes of the graph's values) runs
    before any layout changes, with eager mode's semantics.
    """
    name = type(model).__name__
    if pack and not _onednn.available():
        raise NotImplementedError(
            f"optimize_for_inference: method {_PACKED!r} needs oneDNN weight packing, which is "
            f"unavailable here: {_onednn.unavailable_reason()}. Use method='auto' or {_FALLBACK!r}."
        )
    if LayerTracer().is_leaf_module(model, "") or isinstance(model, SeparableConv2d):
        model = nn.Sequential(OrderedDict(layer=model))  # a root is traced through, a child is a node
    plan = relu_plan(model) if pack else ({}, [])
    sizes = _input_sizes(model, inputs) if pack else {}
    _block_separables(model, sizes)
    graph_module = flatten(model, name)
    record_shapes(graph_module, inputs)
    if pack:
        pack_convs(graph_module, sizes, plan)
    _drop_identities(graph_module)
    _weights_to_channels_last(graph_module)
    guard_layouts(graph_module.graph, _takes_any_layout(graph_module))
    graph_module.recompile()
    return graph_module


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


def inference_candidates(model: nn.Module, inputs: Tuple[Tensor, ...]) -> Dict[str, Callable[[], nn.Module]]:
    """Builders of the inference paths ``optimize_for_inference`` chooses from, by name.

    ``model`` must already be an eval-mode copy (the builders fold and convert copies of it);
    ``inputs`` are the example inputs (the packed path records the size each conv sees).
    """
    return {
        "eager": lambda: model,
        "fuse_bn": lambda: fuse_bn(model),
        "fuse_bn+channels_last": lambda: _channels_last(fuse_bn(model), inputs, pack=False),
        "fuse_bn+channels_last+packed": lambda: _channels_last(fuse_bn(model), inputs, pack=True),
        "frozen_torchscript": lambda: _frozen(fuse_bn(model)),
        "channels_last+frozen_torchscript": lambda: _frozen(_channels_last(fuse_bn(model), inputs, pack=False)),
        "compile": lambda: _compiled(fuse_bn(model)),
        "channels_last+compile": lambda: _compiled(_channels_last(fuse_bn(model), inputs, pack=False)),
    }


class InferenceModule(nn.Module):
    """What ``optimize_for_inference`` returns: an optimised module, run without autograd.

    Calls take the example inputs' number of tensors, dtypes and ranks (any batch, and any
    spatial size but with ``"compile"``); outputs are plain tensors with ``requires_grad=False``,
    contiguous as eager mode returns them for contiguous inputs. It computes no gradients: an
    input that requires grad, with grad mode on, is refused rather than silently cut off from
    the graph. It cannot train (``train()`` raises) or be exported: export the model itself.

    Attributes:
        module: the optimised module (a ``torch.fx.GraphModule`` for the channels-last paths).
        method: the name of the path (a key of ``inference_candidates``).
        model_name: the class name of the model it was built from.
        tolerance: the (rtol, atol) of the build-time check against eager mode.
        max_error: the largest absolute difference that check measured.
    """

    def __init__(
        self, module: nn.Module, method: str, inputs: Sequence[Tensor], model_name: str,
        tolerance: Tuple[float, float], max_error: float,
    ) -> None:
        super().__init__()
        self.module = module
        self.method = method
        self.model_name = model_name
        self.tolerance = tolerance
        self.max_error = max_error
        self.input_specs: List[Tuple[torch.dtype, int]] = [(t.dtype, t.dim()) for t in inputs]
        nn.Module.train(self, False)

    def _check(self, inputs: Tuple[Tensor, ...]) -> None:
        if len(inputs) != len(self.input_specs):
            raise TypeError(
                f"{self.model_name} (optimize_for_inference) takes {len(self.input_specs)} input "
                f"tensor(s), as the example inputs did; received {len(inputs)}."
            )
        grad = torch.is_grad_enabled()
        for i, (x, (dtype, dim)) in enumerate(zip(inputs, self.input_specs)):
            if not isinstance(x, Tensor) or x.dtype != dtype:
                got = x.dtype if isinstance(x, Tensor) else type(x).__name__
                raise TypeError(
                    f"{self.model_name} (optimize_for_inference) was built and checked for {dtype} "
                    f"input {i}; received {got}. Optimise the model again with example inputs of "
                    f"that dtype (and the model converted to it)."
                )
            if x.dim() != dim:
                raise ValueError(
                    f"{self.model_name} (optimize_for_inference) expects a {dim}-D input {i}, as "
                    f"the example input was; received shape {tuple(x.shape)}."
                )
            if grad and x.requires_grad:
                raise ValueError(
                    f"{self.model_name} (optimize_for_inference) computes no gradients (folded "
                    f"BatchNorm, packed weights): input {i} requires grad while grad mode is on. "
                    f"Differentiate through the model itself, or pass x.detach() or call it under "
                    f"torch.no_grad()."
                )

    def forward(self, *inputs: Tensor) -> object:
        self._check(inputs)
        with torch.no_grad():
            return self.module(*inputs)

    def train(self, mode: bool = True) -> "InferenceModule":
        if mode:
            raise NotImplementedError(
                f"{self.model_name} (optimize_for_inference) is inference-only: its BatchNorms "
                f"are folded and its weights packed. Train the model itself."
            )
        return super().train(False)

    def extra_repr(self) -> str:
        rtol, atol = self.tolerance
        return f"method={self.method!r}, model={self.model_name}, rtol={rtol:g}, atol={atol:g}"


def _floating_dtype(output: object) -> torch.dtype:
    """The least precise floating dtype among ``output``'s tensors (float32 where none is)."""
    tensors = [output] if isinstance(output, Tensor) else []
    if isinstance(output, (tuple, list)):
        tensors = [t for t in output if isinstance(t, Tensor)]
    elif isinstance(output, dict):
        tensors = [t for t in output.values() if isinstance(t, Tensor)]
    dtypes = [t.dtype for t in tensors if t.is_floating_point() and t.dtype in TOLERANCES]
    return max(dtypes, key=lambda d: TOLERANCES[d]) if dtypes else torch.float32


def optimize_for_inference(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    method: str = "auto",
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
) -> InferenceModule:
    """The fastest exact CPU inference path for ``model``, checked against eager mode.

    ``"auto"`` is ``"fuse_bn+channels_last+packed"`` (where oneDNN weight packing works in this
    torch build; else ``"fuse_bn+channels_last"``, with a ``RuntimeWarning``), in eager mode: BatchNorm folded into the
    convs (``fuse_bn``), 4-D tensors channels-last, every float32 ``Conv2d`` a ``PackedConv2d``
    (weight pre-packed for oneDNN for the example input's size, a ReLU that only reads its output
    fused in), the other sole-reader ReLUs in place, a ``SeparableConv2d`` whose example batch
    spans several cache-sized blocks a ``BlockedSeparable``, and the whole flattened into one
    ``torch.fx.GraphModule`` that frees each intermediate after its last use. Inputs of any rank
    work (vectors, ``Conv1d``/``Conv3d`` models, images with vectors: channels-last applies to
    the 4-D ones); code that depends on the layout (``x.view(x.size(0), -1)``) and the outputs
    see eager mode's contiguous tensors. BENCHMARKS.md compares the methods by measurement.
    Inputs of any batch and size work with every method but ``"compile"`` (recompiles per shape);
    the packed layout is chosen for the example's size. No rewrite changes what another caller
    shares: a weight tied to another module is folded into a private copy (``fuse_bn``), and a
    conv or ReLU module called more than once gets no fused or in-place ReLU. The result is for
    serving in this process: export the model itself (``tb.export``), not the optimised copy.

    Args:
        model: the module (left untouched; an eval-mode copy is optimised); ``torch.fx``-traceable
            at the layer level for every method but ``"eager"``.
        example_inputs: a tensor or tuple of tensors at the size to serve, e.g. (1, 3, 299, 299),
            in the dtype to serve (the model's).
        method: ``"auto"`` or a name of ``inference_candidates``.
        rtol, atol: tolerance of the check against the eval-mode model; by default
            ``TOLERANCES`` of the output's dtype (1e-4 for float32, 5e-2 for bfloat16).

    Returns:
        An ``InferenceModule``; its outputs match ``model.eval()`` to the tolerance.
    """
    check_module(model)
    inputs = as_input_tuple(example_inputs, "example_inputs")
    name = type(model).__name__
    eager = copy.deepcopy(model).eval()
    candidates = inference_candidates(eager, inputs)
    choice = _default_method() if method == "auto" else method
    if choice not in candidates:
        raise ValueError(
            f"Invalid value for argument `method`. Expected 'auto' or one of {tuple(candidates)}. "
            f"Received method={method!r}."
        )
    with torch.no_grad():
        try:
            expected = eager(*inputs)
        except Exception as exc:
            raise ValueError(
                f"optimize_for_inference: {name} fails on the example inputs in eager mode: {first_line(exc)}"
            ) from exc
    dtype = _floating_dtype(expected)
    source = f"tolerance for {dtype}" if rtol is None and atol is None else "tolerance given"
    rtol = TOLERANCES[dtype] if rtol is None else rtol
    atol = TOLERANCES[dtype] if atol is None else atol
    optimized = candidates[choice]()
    with torch.no_grad():
        err = verify(expected, optimized(*inputs), name, f"optimize_for_inference ({choice}, {source})", rtol, atol)
    return InferenceModule(optimized, choice, inputs, name, (rtol, atol), err)


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
