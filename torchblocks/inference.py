"""``optimize_for_inference``: the fastest exact CPU inference path for a model.

On an eval-mode copy: BatchNorm folded into the convolutions (``fuse_bn``), the model flattened
into one ``torch.fx.GraphModule`` that frees each intermediate after its last use, 4-D tensors
channels-last, and every conv call pre-packed for oneDNN with the activation and residual sum
after it fused in (``_packing.pack_graph``, ``_onednn.PackedConv2d``). The other paths (frozen
TorchScript, ``torch.compile``) are available by name; BENCHMARKS.md has the measured ratios
between them. Whatever the path, the result is an ``InferenceModule``: no autograd, eager
mode's memory formats, the example's dtypes.
"""
import contextlib
import copy
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.fx
from torch import Tensor, nn

from . import _onednn
from ._checks import ExampleInputs, as_input_tuple, check_module, first_line, verify
from ._fx import LayerTracer, guard_layouts, record_shapes
from ._onednn import PackedConv2d
from ._packing import BlockedSeparable, PackedTracer, pack_graph
from .fusion import fuse_bn

__all__ = ["BlockedSeparable", "InferenceModule", "TOLERANCES", "inference_candidates", "optimize_for_inference"]

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


def flatten(model: nn.Module, name: str) -> torch.fx.GraphModule:
    """``model`` as one ``torch.fx.GraphModule`` (class ``name``) over its layers. The generated
    forward drops each intermediate after its last use, where nested ``nn.Sequential`` calls keep
    every block input alive until the block returns, which raises the peak memory of a call
    (BENCHMARKS.md, "Peak memory")."""
    return torch.fx.GraphModule(model, PackedTracer().trace(model), class_name=name)


# Modules that return their input in eval mode, and functions that do when called with
# training=False (argument index of ``training``): torchvision's stochastic depth among them.
_EVAL_IDENTITY_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_EVAL_IDENTITY_FUNCTIONS = {
    ("torch.nn.functional", "dropout"): 2, ("torch.nn.functional", "dropout1d"): 2,
    ("torch.nn.functional", "dropout2d"): 2, ("torch.nn.functional", "dropout3d"): 2,
    ("torchvision.ops.stochastic_depth", "stochastic_depth"): 3,
}


def _is_eval_identity(node: torch.fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), _EVAL_IDENTITY_MODULES)
    if node.op != "call_function":
        return False
    index = _EVAL_IDENTITY_FUNCTIONS.get((getattr(node.target, "__module__", None), getattr(node.target, "__name__", None)))
    if index is None:
        return False
    training = node.args[index] if len(node.args) > index else node.kwargs.get("training", True)
    return training is False


def _drop_identities(graph_module: torch.fx.GraphModule) -> None:
    """Remove the calls that return their input in an eval-mode model (``nn.Identity``, folded
    BatchNorms among them; dropout; stochastic depth) from the graph."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.args and isinstance(node.args[0], torch.fx.Node) and _is_eval_identity(node, graph_module):
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

    The shapes of the graph's values are recorded before any layout changes, with eager mode's
    semantics; the rewrites read them instead of running the model again.
    """
    name = type(model).__name__
    if pack and not _onednn.available():
        raise NotImplementedError(
            f"optimize_for_inference: method {_PACKED!r} needs oneDNN weight packing, which is "
            f"unavailable here: {_onednn.unavailable_reason()}. Use method='auto' or {_FALLBACK!r}."
        )
    if LayerTracer().is_leaf_module(model, ""):
        model = nn.Sequential(OrderedDict(layer=model))  # a root is traced through, a child is a node
    graph_module = flatten(model, name)
    _drop_identities(graph_module)
    record_shapes(graph_module, inputs)
    if pack:
        pack_graph(graph_module)
    _weights_to_channels_last(graph_module)
    guard_layouts(graph_module.graph, _takes_any_layout(graph_module))
    graph_module.recompile()
    return graph_module


def _frozen(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.14's FutureWarning for torch.jit repeats once per submodule; the caller asked
        # for this method by name, so the deprecation is known and not repeated here.
        warnings.simplefilter("ignore", FutureWarning)
        # torch.fx.GraphModule's own __init__ annotates an empty dict, which the script checker
        # reports about every flattened model; nothing in the model is at fault.
        warnings.filterwarnings("ignore", "The TorchScript type system doesn't support instance-level", UserWarning)
        scripted = torch.jit.script(model)
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))


def _compiled(model: nn.Module) -> nn.Module:
    # Inductor's freezing constant-folds the weights and prepacks them for oneDNN on CPU.
    return torch.compile(model, fullgraph=True, dynamic=False, options={"freezing": True})


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule of ``model`` in eval mode for the block, then each one's own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def inference_candidates(model: nn.Module, inputs: Tuple[Tensor, ...]) -> Dict[str, Callable[[], nn.Module]]:
    """Builders of the inference paths ``optimize_for_inference`` chooses from, by name.

    Each builder works on an eval-mode copy of ``model`` (left untouched); ``inputs`` are the
    example inputs (the channels-last paths record the shapes the model's values have on them).
    """
    return {
        "eager": lambda: copy.deepcopy(model).eval(),
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
    torch build; else ``"fuse_bn+channels_last"``, with a ``RuntimeWarning``), in eager mode:
    BatchNorm folded into the convs (``fuse_bn``), the model flattened into one
    ``torch.fx.GraphModule`` that frees each intermediate after its last use, 4-D tensors
    channels-last, and every float32 ``Conv2d`` call a ``PackedConv2d`` (weight pre-packed for
    oneDNN for the example input's size) into which the activation that only reads its output
    (ReLU, ReLU6, SiLU, sigmoid, Hardswish, GELU, ...) and a residual sum after it are fused as
    oneDNN post-ops; a sum whose other operand is dead afterwards is written into that operand.
    The other sole-reader ReLUs, sums and products run in place; 1×1 convs on one pixel
    (squeeze-excitation) run as matrix products; a depthwise conv read only by a 1×1 conv runs a
    cache-sized block of samples at a time (``BlockedSeparable``) where the batch is large.
    Inputs of any rank work (vectors, ``Conv1d``/``Conv3d`` models, images with vectors:
    channels-last applies to the 4-D ones); code that depends on the layout
    (``x.view(x.size(0), -1)``) and the outputs see eager mode's contiguous tensors. Inputs of
    any batch and size work with every method but ``"compile"`` (recompiles per shape); the
    packed layout is chosen for the example's size. No rewrite changes what another caller
    shares: a weight tied to another module is folded into a private copy (``fuse_bn``), and
    fusions apply per call site, leaving a module called several times (torchvision's one ReLU
    per ResNet block) as it is. BENCHMARKS.md compares the methods, and this path with
    ``torch.compile``, by measurement. The result is for serving in this process: export the
    model itself (``tb.export``), not the optimised copy.

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
    candidates = inference_candidates(model, inputs)
    choice = _default_method() if method == "auto" else method
    if choice not in candidates:
        raise ValueError(
            f"Invalid value for argument `method`. Expected 'auto' or one of {tuple(candidates)}. "
            f"Received method={method!r}."
        )
    with torch.no_grad(), _eval_mode(model):
        try:
            expected = model(*inputs)
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
