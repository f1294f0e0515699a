"""fvcore op handlers: the cost given to each op that fvcore leaves unsupported or ignores.

Unit: fvcore's, one fused multiply-add counts 1 (called MACs here; FLOPs = 2 × MACs). fvcore's
own handlers are kept for convolutions (``N·C_out·(C_in/groups)·kh·kw·H'·W'``, bias not
counted), ``linear``/``addmm``/``matmul`` and ``batch_norm`` (eval: 2 per element with affine
parameters, 1 without; training: 5 per element, 4 without). This module adds:

========================================  =====================================================
op                                        cost
========================================  =====================================================
add, sub, mul, div, neg, rsub, abs, exp,  1 per output element (in-place variants too)
pow, clamp_min
activations: relu, relu6 (hardtanh),      1 per output element (fvcore ignores relu; counted
elu, selu, gelu, sigmoid, hardsigmoid,    here like every other activation)
tanh, silu, hardswish, mish, softplus,
leaky_relu, softmax, log_softmax
max_pool2d, avg_pool2d                    kh·kw per output element (one compare/add per tap)
adaptive_max_pool2d, mean, sum,           1 per input element (as fvcore's adaptive_avg_pool2d;
linalg_vector_norm                        a norm squares and adds each element once)
_native_multi_head_attention              its matrix products and softmax (below)
pad, movedim, new_ones, ones_like,        0: memory only (copies, views, fills, metadata);
flatten, dropout, dropout_, clone,        dropout is the identity at inference, and in-place
fill_, zero_, expand_as, numel, ne        dropout (torchvision's classifiers) is no different
========================================  =====================================================

``_native_multi_head_attention`` is the fused inference path of ``nn.MultiheadAttention`` (torch
takes it in eval mode without autograd). For a query (N, L, E), keys and values (N, S, E) and h
heads it costs what the unfused path's ops cost: the q/k/v projections ``N·(L + 2S)·E²``, the
scores ``Q·Kᵀ`` and the weighted sum ``A·V`` ``N·L·S·E`` each, the softmax ``N·h·L·S`` and the
output projection ``N·L·E²``.

Arithmetic on 0-d tensors costs 0: under tracing, the size arithmetic of Keras ``'same'`` padding
(``ceil(n / s)``) is recorded as ``aten::sub``/``aten::mul`` on scalars, and it is not model work.
"""
import warnings
from typing import Any, Dict, FrozenSet, List, Optional

with warnings.catch_warnings():
    # Importing fvcore.nn scripts one of its loss functions, and torch warns that
    # torch.jit.script is deprecated: a warning about fvcore's import, not about any model.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import Handle, get_shape

__all__ = ["FlopCountAnalysis", "op_handles"]

ARITHMETIC_OPS = ("add", "sub", "mul", "div", "neg", "rsub", "abs", "exp", "pow", "clamp_min")
ACTIVATION_OPS = (
    "relu", "hardtanh", "elu", "selu", "gelu", "sigmoid", "hardsigmoid", "tanh", "silu",
    "hardswish", "mish", "softplus", "leaky_relu", "softmax", "log_softmax",
)
WINDOW_POOL_OPS = ("max_pool2d", "avg_pool2d")
REDUCTION_OPS = ("adaptive_max_pool2d", "mean", "sum", "linalg_vector_norm")
FREE_OPS = (
    "pad", "movedim", "new_ones", "ones_like", "flatten", "dropout", "dropout_", "clone", "fill_",
    "zero_", "expand_as", "numel", "ne",
)
ATTENTION_OPS = ("_native_multi_head_attention",)
# Ops with an in-place twin that models use (``x += y``, ``nn.ReLU(inplace=True)``).
_INPLACE = ARITHMETIC_OPS[:4] + ("relu", "hardtanh", "elu", "selu", "sigmoid", "tanh", "silu",
                                 "hardswish", "hardsigmoid", "leaky_relu")


def _numel(value: Any) -> int:
    """Elements of a traced tensor value; 0 for 0-d tensors and non-tensors (size arithmetic)."""
    shape = get_shape(value)
    if not shape:
        return 0
    n = 1
    for d in shape:
        n *= d
    return n


def _int_list(value: Any) -> List[int]:
    """A traced ``int[]`` argument: a constant, or a ``prim::ListConstruct`` of constants."""
    constant = value.toIValue()
    if constant is not None:
        return list(constant)
    return [int(v.toIValue()) for v in value.node().inputs()]


def per_output_element(inputs: List[Any], outputs: List[Any]) -> int:
    """1 per element of the op's output."""
    return _numel(outputs[0])


def per_input_element(inputs: List[Any], outputs: List[Any]) -> int:
    """1 per element of the op's first input (reductions, adaptive pooling)."""
    return _numel(inputs[0])


def window_pool(inputs: List[Any], outputs: List[Any]) -> int:
    """kh·kw per output element: each window tap is compared (max) or added (average) once."""
    kernel = _int_list(inputs[1])
    area = kernel[0] * kernel[-1]
    return area * _numel(outputs[0])


def free(inputs: List[Any], outputs: List[Any]) -> int:
    """0: the op only moves or allocates memory."""
    return 0


def attention_macs(query: List[int], key: List[int], heads: int) -> int:
    """MACs of multi-head attention on a query (..., L, E) and keys/values (..., S, E)."""
    length, embed = query[-2], query[-1]
    source = key[-2]
    batch = 1
    for d in query[:-2]:
        batch *= d
    projections = batch * (2 * length + 2 * source) * embed * embed
    return projections + 2 * batch * length * source * embed + batch * heads * length * source


def multi_head_attention(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::_native_multi_head_attention(query, key, value, embed_dim, num_head, ...)``."""
    return attention_macs(get_shape(inputs[0]), get_shape(inputs[1]), int(inputs[4].toIValue()))



# What each rule costs, by name, for the engines that count from concrete shapes (meta.py).
RULES = {
    "output": per_output_element, "input": per_input_element, "window": window_pool, "free": free,
    "attention": multi_head_attention,
}


def op_rules(include_bn: bool = True) -> Dict[str, str]:
    """The rule (``"output"``, ``"input"``, ``"window"``, ``"attention"`` or ``"free"``) of each
    op this module adds, keyed by op name without the ``aten::`` prefix."""
    rules: Dict[str, str] = {}
    for name in ARITHMETIC_OPS + ACTIVATION_OPS:
        rules[name] = "output"
    for name in _INPLACE:
        rules[f"{name}_"] = "output"
    for name in WINDOW_POOL_OPS:
        rules[name] = "window"
    for name in REDUCTION_OPS:
        rules[name] = "input"
    for name in FREE_OPS:
        rules[name] = "free"
    for name in ATTENTION_OPS:
        rules[name] = "attention"
    if not include_bn:
        rules["batch_norm"] = "free"
    return rules


def op_handles(include_bn: bool = True) -> Dict[str, Optional[Handle]]:
    """Handlers to pass to ``FlopCountAnalysis.set_op_handle``, keyed by ``aten::`` op name.

    Args:
        include_bn: count ``batch_norm`` (fvcore's cost); False gives it 0, the cost after
            folding BN into the preceding convolution.
    """
    return {f"aten::{name}": RULES[rule] for name, rule in op_rules(include_bn).items()}


def fvcore_ignored_ops() -> FrozenSet[str]:
    """The ops fvcore skips without a warning (copies, views, comparisons...), without ``aten::``."""
    # fvcore keeps this list in a module-level set of its tracer; the installed version's list is
    # the one its counts follow.
    from fvcore.nn.jit_analysis import _IGNORED_OPS

    return frozenset(name.split("::", 1)[1] for name in _IGNORED_OPS)


DENSE_OPS = ("conv", "linear", "addmm", "mm", "matmul", "bmm", "einsum") + ATTENTION_OPS
NORM_OPS = ("batch_norm", "group_norm", "layer_norm", "instance_norm")


def op_kind(name: str) -> str:
    """The kind of the op a ``CountReport.by_operator`` key names: ``"conv_dense"`` (convolutions
    and matrix products), ``"norm"``, ``"activation"`` or ``"other"`` (adds, pools, reductions)."""
    if name in DENSE_OPS:
        return "conv_dense"
    if name in NORM_OPS:
        return "norm"
    if name in ACTIVATION_OPS or (name.endswith("_") and name[:-1] in ACTIVATION_OPS):
        return "activation"
    return "other"
