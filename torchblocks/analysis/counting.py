"""Parameter and MAC counts with fvcore, and measured latency.

fvcore counts one fused multiply-add as one "flop"; here that figure is ``macs`` and
``flops = 2 * macs``. The costs given to the ops fvcore leaves unsupported are listed in
:mod:`torchblocks.analysis.handlers`.
"""
import statistics
import time
import warnings
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

from .._checks import ExampleInputs as Inputs
from .._checks import as_input_tuple, check_module, first_line
from .handlers import FlopCountAnalysis, op_handles
from .meta import count_meta
from .report import CountReport, parameter_counts, temporary_mode

__all__ = ["CountReport", "Inputs", "count", "measure_latency", "parameter_counts", "temporary_mode"]


DEFAULT_WARMUP = 2

FLOP_COUNTER_NOTE = (
    "fvcore cannot trace a ScriptModule (nor a model holding one): counted with "
    "torch.utils.flop_counter.FlopCounterMode instead, which counts only convolutions and matrix "
    "products (no BatchNorm, activation, pooling or add costs), gives no per-module breakdown and "
    "misses convolutions that torch.jit.freeze fused into prepacked kernels: count the eager "
    "module where you have it"
)


def _count_fvcore(
    model: nn.Module, inputs: Tuple[Tensor, ...], include_bn: bool
) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
    """(MACs by module, MACs by operator, unsupported op counts) from fvcore's trace."""
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**op_handles(include_bn))
    # Warnings are switched off on this private instance only: unsupported ops are returned in
    # the report (and warned about once, below); the "never called" list only ever names
    # modules that a forward skips on purpose, such as Residual's identity shortcut.
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    try:
        with torch.no_grad():
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
    except (ValueError, TypeError):
        raise  # the model rejected the inputs: the caller's error, with its own message
    except Exception as error:
        raise RuntimeError(
            f"fvcore could not trace {type(model).__name__}: {first_line(error)}"
        ) from error
    by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
    unsupported = {k: int(v) for k, v in analysis.unsupported_ops().items()}
    return by_module, by_operator, unsupported


def _count_flop_counter(
    model: nn.Module, inputs: Tuple[Tensor, ...]
) -> Tuple[Dict[str, int], Dict[str, int]]:
    """(MACs by module, MACs by operator) from FlopCounterMode: the whole model only."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    flops = counter.get_total_flops()
    by_operator: Dict[str, int] = {}
    for op, value in counter.get_flop_counts().get("Global", {}).items():
        name = "conv" if "convolution" in str(op) else str(op).rsplit(".", 1)[-1]
        by_operator[name] = by_operator.get(name, 0) + int(value) // 2
    # FlopCounterMode counts 2 per multiply-accumulate, so the total is even.
    return {"": flops // 2}, by_operator


def count(
    model: nn.Module, inputs: Inputs, *, training: bool = False, include_bn: bool = True,
    meta: bool = False,
) -> CountReport:
    """Parameters and MACs of ``model`` on ``inputs``, with fvcore.

    The model is counted in eval mode by default (fvcore's BatchNorm cost differs between
    modes); every submodule's mode is restored afterwards. A ``torch.jit.ScriptModule`` (or a
    model holding one, such as ``optimize_for_inference``'s result), which fvcore cannot trace,
    is counted with ``torch.utils.flop_counter.FlopCounterMode`` instead (``report.note`` says
    so).

    Args:
        model: any module taking ``inputs``; e.g. (N, C, H, W) images.
        inputs: a tensor or a tuple of tensors; MACs scale with their batch size.
        training: count in training mode (BN: 5 per element instead of 2).
        include_bn: False leaves BatchNorm out, the cost after folding it into the convolutions.
        meta: count on the meta device: the same report from shapes alone, without running the
            arithmetic or allocating activations (seconds and gigabytes saved on large inputs);
            refused (``MetaCountError``, a ``NotImplementedError``) for a model that reads tensor
            values or makes a torch call without a known cost. See ``analysis.meta``.

    Returns:
        A ``CountReport``: ``.params``, ``.macs``, ``.flops`` (= 2 × macs), ``.by_module``.

    Raises:
        TypeError: ``model`` is not a module or ``inputs`` not tensors.
        RuntimeError: fvcore cannot trace the model (one-line message).
        MetaCountError: with ``meta=True``, a model that cannot be counted on the meta device.
    """
    if meta:
        return count_meta(model, inputs, training=training, include_bn=include_bn)
    model = check_module(model)
    args = as_input_tuple(inputs)
    trainable, frozen, buffers = parameter_counts(model)
    shapes = tuple(tuple(t.shape) for t in args)
    with temporary_mode(model, training):
        if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
            by_module, by_operator = _count_flop_counter(model, args)
            return CountReport(
                trainable, frozen, buffers, by_module[""], by_module, by_operator,
                method="FlopCounterMode", note=FLOP_COUNTER_NOTE, input_shapes=shapes,
            )
        by_module, by_operator, unsupported = _count_fvcore(model, args, include_bn)
    if unsupported:
        warnings.warn(
            f"{type(model).__name__}: no cost is known for {sorted(unsupported)}; counted as 0.",
            RuntimeWarning,
            stacklevel=2,
        )
    return CountReport(
        trainable, frozen, buffers, by_module[""], by_module, by_operator,
        unsupported_ops=unsupported, input_shapes=shapes,
    )


def measure_latency(
    model: nn.Module,
    inputs: Inputs,
    *,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = 10,
    max_seconds: float = 2.0,
) -> float:
    """Median wall time of ``model(*inputs)`` in milliseconds, in eval mode, without autograd.

    Runs ``warmup`` untimed calls, then up to ``repeats`` timed ones, stopping early once
    ``max_seconds`` have been spent and at least 3 calls are timed. The model's modes are
    restored. Times whatever device the model and inputs are on (synchronising CUDA).
    """
    model = check_module(model)
    args = as_input_tuple(inputs)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"Invalid value for argument `warmup`. Expected an int >= 0. Received warmup={warmup!r}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"Invalid value for argument `repeats`. Expected an int >= 1. Received repeats={repeats!r}.")
    cuda = any(t.is_cuda for t in args)
    times = []
    with temporary_mode(model, False), torch.inference_mode():
        for _ in range(warmup):
            model(*args)
        budget_end = time.perf_counter() + max_seconds
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(*args)
            if cuda:
                torch.cuda.synchronize()
            end = time.perf_counter()
            times.append(end - start)
            if end > budget_end and len(times) >= 3:
                break
    return 1000.0 * statistics.median(times)
