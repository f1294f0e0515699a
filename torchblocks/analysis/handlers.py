"""fvcore op handlers: the cost given to each op that fvcore leaves unsupported or ignores.

Unit: fvcore's, one fused multiply-add counts 1 (called MACs here; FLOPs = 2 × MACs). fvcore's
own handlers are kept for convolutions (``N·C_out·(C_in/groups)·kh·kw·H'·W'``, bias not
counted), ``linear``/``addmm``/``matmul`` and ``batch_norm`` (eval: 2 per element with affine
parameters, 1 without; training: 5 per element, 4 without). This module adds:

========================================  =====================================================
op                                        cost
========================================  =====================================================
add, sub, mul, div, neg, rsub, abs, exp   1 per output element (in-place variants too)
activations: relu, relu6 (hardtanh),      1 per output element (fvcore ignores relu; counted
elu, selu, gelu, sigmoid, hardsigmoid,    here like every other activation)
tanh, silu, hardswish, mish, softplus,
leaky_relu, softmax, log_softmax
max_pool2d, avg_pool2d                    kh·kw per output element (one compare/add per tap)
adaptive_max_pool2d, mean, sum            1 per input element (as fvcore's adaptive_avg_pool2d)
pad, movedim, new_ones, ones_like,        0 (memory only)
flatten, dropout
========================================  =====================================================

Arithmetic on 0-d tensors costs 0: under tracing, the size arithmetic of Keras ``'same'`` padding
(``ceil(n / s)``) is recorded as ``aten::sub``/``aten::mul`` on scalars, and it is not model work.
"""
import warnings
from typing import Any, Dict, List, Optional

with warnings.catch_warnings():
    # Importing fvcore.nn scripts one of its loss functions, and torch warns that
    # torch.jit.script is deprecated: a warning about fvcore's import, not about any model.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import Handle, get_shape

__all__ = ["FlopCountAnalysis", "op_handles"]

ARITHMETIC_OPS = ("add", "sub", "mul", "div", "neg", "rsub", "abs", "exp")
ACTIVATION_OPS = (
    "relu", "hardtanh", "elu", "selu", "gelu", "sigmoid", "hardsigmoid", "tanh", "silu",
    "hardswish", "mish", "softplus", "leaky_relu", "softmax", "log_softmax",
)
WINDOW_POOL_OPS = ("max_pool2d", "avg_pool2d")
REDUCTION_OPS = ("adaptive_max_pool2d", "mean", "sum")
FREE_OPS = ("pad", "movedim", "new_ones", "ones_like", "flatten", "dropout")
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


def op_handles(include_bn: bool = True) -> Dict[str, Optional[Handle]]:
    """Handlers to pass to ``FlopCountAnalysis.set_op_handle``, keyed by ``aten::`` op name.

    Args:
        include_bn: count ``batch_norm`` (fvcore's cost); False gives it 0, the cost after
            folding BN into the preceding convolution.
    """
    handles: Dict[str, Optional[Handle]] = {}
    for name in ARITHMETIC_OPS + ACTIVATION_OPS:
        handles[f"aten::{name}"] = per_output_element
    for name in _INPLACE:
        handles[f"aten::{name}_"] = per_output_element
    for name in WINDOW_POOL_OPS:
        handles[f"aten::{name}"] = window_pool
    for name in REDUCTION_OPS:
        handles[f"aten::{name}"] = per_input_element
    for name in FREE_OPS:
        handles[f"aten::{name}"] = free
    if not include_bn:
        handles["aten::batch_norm"] = free
    return handles
