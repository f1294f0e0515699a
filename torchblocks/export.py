"""Export to TorchScript, ``torch.export`` (.pt2) and ONNX, each verified against eager mode.

Every exporter works on an eval-mode deep copy of the model: the caller's module is never
changed. A model passed in training mode is exported in eval mode (BatchNorm uses its running
statistics, as inference needs) and a ``UserWarning`` says so. Where ``example_inputs`` are given
the export is run on them, saved, reloaded, and compared with the eager copy; a difference larger
than the tolerance raises ``RuntimeError`` naming the module and the maximum error. Files are
written to a temporary file beside the target, checked from there, and only then renamed onto
the target: a failed export or check leaves no file behind (and an existing target untouched).
The result of ``tb.optimize_for_inference`` is refused: its weights are packed for this process;
export the model it was built from.

``torch.export`` is PyTorch's recommended path; TorchScript (deprecated in torch 2.14, which warns
with a ``FutureWarning`` of its own) remains for C++ ``torch::jit::load`` and existing JIT runtimes.
"""
import contextlib
import copy
import os
import re
import uuid
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from ._checks import ExampleInputs, PathArg, as_input_tuple, check_module, verify, writable_path
from ._onednn import PackedConv2d
from .inference import InferenceModule

METHODS = ("script", "trace")
FORMATS = ("torchscript", "exported", "onnx")

# Script, trace and torch.export run the same kernels as eager mode: 1e-5 covers float32 round-off.
# Frozen/optimised TorchScript (folded BN, MKLDNN) and ONNX Runtime use other kernels: 1e-4.
_EXACT_TOL = 1e-5
_KERNEL_TOL = 1e-4


def _check_not_optimized(model: nn.Module, exporter: str) -> None:
    """Refuse ``optimize_for_inference``'s result (or a model holding one): its packed oneDNN
    weights have no storage to save and its graph is specialised to this process."""
    for name, module in model.named_modules():
        if isinstance(module, InferenceModule):
            what = f"the optimised inference module of {module.model_name}"
        elif isinstance(module, PackedConv2d):
            what = f"a conv packed for oneDNN ({module.layer_name})"
        else:
            continue
        where = f"{type(model).__name__} is" if name == "" else f"{type(model).__name__}.{name} is"
        raise TypeError(
            f"{exporter}: {where} {what}, made by tb.optimize_for_inference: its weights are packed "
            f"for oneDNN in this process and cannot be exported. Export the model itself, e.g. "
            f"{exporter}(model, ...), and optimise it where it is loaded."
        )


def inference_copy(model: nn.Module, exporter: str = "export") -> nn.Module:
    """An eval-mode deep copy of ``model``; warns when ``model`` itself is in training mode and
    refuses an optimised inference module."""
    check_module(model)
    _check_not_optimized(model, exporter)
    if model.training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; exporting an eval-mode copy (BatchNorm "
            f"uses running statistics). Call model.eval() first to silence this warning.",
            UserWarning,
            stacklevel=3,
        )
    return copy.deepcopy(model).eval()


@contextlib.contextmanager
def _atomic(path: Optional[str]) -> Iterator[Optional[str]]:
    """A temporary file name beside ``path`` to write and check; renamed onto ``path`` when the
    block succeeds, removed when it raises. None stays None (nothing to write)."""
    if path is None:
        yield None
        return
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    # The extension stays last: some writers choose the format by it.
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_torchscript(
    model: nn.Module,
    path: Optional[PathArg] = None,
    example_inputs: Optional[ExampleInputs] = None,
    method: str = "script",
    optimize: bool = False,
    *,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
) -> torch.jit.ScriptModule:
    """Script or trace an eval-mode copy of ``model``, optionally freeze it, save and verify it.

    Args:
        model: any module taking (N, C, H, W) tensors (the caller's module is left untouched).
        path: where to save (``torch.jit.save``); the saved file is reloaded and checked.
        example_inputs: a tensor or tuple of tensors; needed for ``method="trace"``. With inputs,
            the result (and the reloaded file) is compared with eager mode.
        method: ``"script"`` (keeps shape-dependent logic: Keras 'same' padding follows every input
            size) or ``"trace"`` (records one run: shapes fixed to ``example_inputs``' H, W).
        optimize: ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` (weights become
            constants, Conv+BN folded; the result can no longer be trained). The file holds the
            frozen module: the MKLDNN rewrite is not serialisable, so after ``torch.jit.load``
            apply ``torch.jit.optimize_for_inference`` again (the returned module has it).
        rtol, atol: verification tolerance (default 1e-5 each, 1e-4 with ``optimize``).

    Returns:
        The (loaded, when ``path`` is given) ``ScriptModule``.
    """
    if method not in METHODS:
        raise ValueError(f"Invalid value for argument `method`. Expected one of {METHODS}. Received method={method!r}.")
    inputs = None if example_inputs is None else as_input_tuple(example_inputs, "example_inputs")
    if method == "trace" and inputs is None:
        raise ValueError("Invalid value for argument `example_inputs`. method='trace' needs example inputs. Received example_inputs=None.")
    path = None if path is None else writable_path(path)
    eager = inference_copy(model, "to_torchscript")
    name = type(model).__name__
    tol = _KERNEL_TOL if optimize else _EXACT_TOL
    rtol, atol = (tol if rtol is None else rtol), (tol if atol is None else atol)
    # torch 2.14 already emits a FutureWarning for torch.jit.*; adding our own would duplicate it.
    if method == "script":
        scripted = torch.jit.script(eager)
    else:
        with torch.no_grad():
            scripted = torch.jit.trace(eager, inputs, check_trace=False)
    if optimize:
        # freeze inlines the weights and folds Conv+BN; it is what gets saved, because the MKLDNN
        # constants that optimize_for_inference adds afterwards cannot be serialised.
        scripted = torch.jit.freeze(scripted)
    with _atomic(path) as tmp:
        if tmp is not None:
            torch.jit.save(scripted, tmp)
            scripted = torch.jit.load(tmp)
        if optimize:
            scripted = torch.jit.optimize_for_inference(scripted)
        if inputs is not None:
            with torch.no_grad():
                verify(eager(*inputs), scripted(*inputs), name, f"TorchScript ({method})", rtol, atol)
    return scripted


def _batch_of_two(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """torch.export specialises a dimension of size 1; repeat a batch of 1 to export it dynamic."""
    return tuple(torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t for t in inputs)


def _dynamic_batch(inputs: Tuple[Tensor, ...]) -> Tuple[Dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} if t.dim() else {} for t in inputs)


def _other_batch(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """The inputs with one more sample: checks that the batch dimension really is dynamic."""
    return tuple(torch.cat([t, t[:1]]) if t.dim() else t for t in inputs)


def to_exported(
    model: nn.Module,
    path: Optional[PathArg] = None,
    example_inputs: Optional[ExampleInputs] = None,
    *,
    rtol: float = _EXACT_TOL,
    atol: float = _EXACT_TOL,
) -> "torch.export.ExportedProgram":
    """``torch.export.export`` an eval-mode copy of ``model`` with a dynamic batch dimension.

    Dim 0 of every input is dynamic (export from a batch of >= 2; a batch of 1 is repeated to 2
    first, since torch.export specialises size-1 dimensions); H and W are fixed to the example's.
    The program is checked against eager mode at the example batch and at one more sample, and,
    with ``path``, saved as ``.pt2`` (``torch.export.save``), reloaded and checked again.

    Args:
        model: the module; its forward must be free of graph breaks (data-dependent control flow).
        path: ``.pt2`` file to write.
        example_inputs: a tensor or a tuple of tensors, e.g. (N, C, H, W) images.

    Returns:
        The (reloaded, when ``path`` is given) ``torch.export.ExportedProgram``; call
        ``.module()`` for a runnable module.
    """
    if example_inputs is None:
        raise ValueError("Invalid value for argument `example_inputs`. torch.export needs example inputs. Received example_inputs=None.")
    inputs = _batch_of_two(as_input_tuple(example_inputs, "example_inputs"))
    path = None if path is None else writable_path(path)
    eager = inference_copy(model, "to_exported")
    name = type(model).__name__
    with torch.no_grad():
        program = torch.export.export(eager, inputs, dynamic_shapes=_dynamic_batch(inputs))
    with _atomic(path) as tmp:
        if tmp is not None:
            torch.export.save(program, tmp)
            program = torch.export.load(tmp)
        runnable = program.module()
        with torch.no_grad():
            for args in (inputs, _other_batch(inputs)):
                verify(eager(*args), runnable(*args), name, "torch.export program", rtol, atol)
    return program


def _onnx_modules() -> Tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({exc}): "
            f'pip install "torchblocks[onnx]"'
        ) from exc
    return onnx, onnxruntime


def to_onnx(
    model: nn.Module,
    path: PathArg,
    example_inputs: ExampleInputs,
    *,
    opset_version: Optional[int] = None,
    rtol: float = _KERNEL_TOL,
    atol: float = _KERNEL_TOL,
) -> Any:
    """Export an eval-mode copy of ``model`` to ONNX (dynamic batch), verified with onnxruntime.

    Uses torch's ``torch.export``-based exporter (``dynamo=True``); Keras' asymmetric 'same'
    padding becomes an explicit ``Pad`` node. The file is checked with ``onnx.checker`` and run
    in onnxruntime (CPU) at the example batch and at one more sample against eager mode.
    Needs the ``[onnx]`` extra (onnx, onnxscript, onnxruntime).

    Returns:
        The saved ``onnx.ModelProto``.
    """
    onnx, onnxruntime = _onnx_modules()
    inputs = _batch_of_two(as_input_tuple(example_inputs, "example_inputs"))
    path = writable_path(path)
    eager = inference_copy(model, "to_onnx")
    name = type(model).__name__
    names = [f"input_{i}" for i in range(len(inputs))]
    with _atomic(path) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            # The exporter reports progress through `print`-like warnings; failures still raise.
            warnings.simplefilter("ignore", UserWarning)
            try:
                torch.onnx.export(
                    eager, inputs, tmp, input_names=names, dynamo=True, opset_version=opset_version,
                    dynamic_shapes=_dynamic_batch(inputs), external_data=False, verbose=False,
                )
            except Exception as exc:  # torch.onnx raises its own classes from each of its steps
                raise NotImplementedError(f"to_onnx: {name} cannot be exported to ONNX: {_onnx_summary(exc)}") from exc
        proto = onnx.load(tmp)
        onnx.checker.check_model(proto)
        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            for args in (inputs, _other_batch(inputs)):
                feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, args)}
                outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
                verify(eager(*args), outputs, name, "ONNX model (onnxruntime)", rtol, atol)
    return proto


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _onnx_summary(error: BaseException) -> str:
    """torch.onnx's failure message, without its terminal colour codes: its first line and the
    first line of its "Exception summary"."""
    text = _ANSI.sub("", str(error)).strip()
    lines = [line.strip() for line in text.splitlines()]
    first = lines[0].split(" Next steps:")[0] if lines else type(error).__name__
    if "## Exception summary" in lines:
        rest = [line for line in lines[lines.index("## Exception summary") + 1:] if line]
        if rest:
            return f"{first} {rest[0]}"
    return first


def export_model(
    model: nn.Module, path: PathArg, example_inputs: ExampleInputs, fmt: str = "torchscript"
) -> Any:
    """Dispatch to ``to_torchscript`` / ``to_exported`` / ``to_onnx`` by ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"Invalid value for argument `format`. Expected one of {FORMATS}. Received format={fmt!r}.")
    if fmt == "torchscript":
        return to_torchscript(model, path, example_inputs)
    if fmt == "exported":
        return to_exported(model, path, example_inputs)
    return to_onnx(model, path, example_inputs)


__all__ = [
    "FORMATS",
    "METHODS",
    "export_model",
    "to_exported",
    "to_onnx",
    "to_torchscript",
]
