"""Argument and input checks shared by every layer and transform, and the check of a transformed
model's outputs against eager mode."""
import os
from typing import Any, List, Optional, Tuple, Union

from torch import Tensor, nn

ExampleInputs = Union[Tensor, Tuple[Tensor, ...]]
PathArg = Union[str, "os.PathLike[str]"]


def check_module(model: object, name: str = "model") -> nn.Module:
    """Return ``model`` if it is an ``nn.Module``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected an nn.Module. "
            f"Received {name} of type {type(model).__name__}."
        )
    return model


def as_input_tuple(inputs: object, name: str = "inputs") -> Tuple[Tensor, ...]:
    """A tuple of tensors from a tensor or a non-empty tuple/list of tensors, else ``TypeError``."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return tuple(inputs)
    raise TypeError(
        f"Invalid type for argument `{name}`. Expected a Tensor or a non-empty tuple of Tensors. "
        f"Received {name} of type {type(inputs).__name__}."
    )


def check_nchw(x: Tensor, channels: int, layer: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, ``channels``, H, W), hinting at channels-last input."""
    if x.dim() != 4:
        raise ValueError(
            f"{layer} expects a 4-D (N, C, H, W) input with C={channels}; received a {x.dim()}-D "
            f"tensor of shape {x.shape}."
        )
    if x.shape[1] != channels:
        hint = ""
        if x.shape[3] == channels:
            hint = (
                " It looks channels-last (N, H, W, C), as Keras uses; torchblocks layers are "
                "channels-first: pass x.permute(0, 3, 1, 2)."
            )
        raise ValueError(
            f"{layer} expects (N, {channels}, H, W) input; received shape {x.shape}.{hint}"
        )


def check_window_fits(x: Tensor, min_height: int, min_width: int, window: str, layer: str) -> None:
    """Raise ``ValueError`` unless the (H, W) of ``x`` is at least (``min_height``, ``min_width``).

    ``window`` describes the kernel and padding for the message. Without this check torch fails deep
    inside the kernel ("Kernel size can't be greater than actual input size").
    """
    height, width = x.shape[-2], x.shape[-1]
    if height < min_height or width < min_width:
        raise ValueError(
            f"{layer} with {window} expects inputs of at least (H, W)=({min_height}, {min_width}); "
            f"received (H, W)=({height}, {width}) in shape {x.shape}."
        )


def _flatten_outputs(output: Any) -> List[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _flatten_outputs(item)]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flatten_outputs(output[key])]
    raise TypeError(f"Cannot compare an output of type {type(output).__name__}; expected tensors.")


def max_error(expected: Any, actual: Any) -> float:
    """Largest absolute difference over all output tensors (inf when shapes differ)."""
    exp, act = _flatten_outputs(expected), _flatten_outputs(actual)
    if len(exp) != len(act) or any(e.shape != a.shape for e, a in zip(exp, act)):
        return float("inf")
    return max((float((e.detach().float() - a.detach().float()).abs().max()) if e.numel() else 0.0)
               for e, a in zip(exp, act))


def verify(
    expected: Any, actual: Any, module_name: str, what: str, rtol: float, atol: float
) -> float:
    """Raise ``RuntimeError`` naming ``module_name`` unless ``actual`` matches ``expected``.

    Tolerance: max |expected - actual| <= atol + rtol * max |expected|. Returns the max error.
    """
    err = max_error(expected, actual)
    scale = max(float(t.detach().abs().max()) if t.numel() else 0.0 for t in _flatten_outputs(expected))
    if not err <= atol + rtol * scale:
        raise RuntimeError(
            f"{what} of {module_name} does not match eager mode: max abs error {err:.3g} "
            f"(allowed {atol + rtol * scale:.3g} = {atol:g} + {rtol:g} * max|output| {scale:.3g})."
        )
    return err


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def writable_path(path: PathArg) -> str:
    """``path`` as a str if it names a file in an existing, writable folder, else ``ValueError``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(
            f"Invalid value for argument `path`. Expected a file, not a directory. Received path={path!r}."
        )
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(
            f"Invalid value for argument `path`. Expected a file in an existing, writable folder. "
            f"Received path={path!r}."
        )
    return path


def dtype_error(
    layer: str, x: Tensor, error: RuntimeError, weight: Optional[Tensor] = None
) -> Optional[TypeError]:
    """A ``TypeError`` naming ``layer`` and the dtypes, for an op's ``RuntimeError`` that a dtype
    explains: an input whose dtype differs from the layer's ``weight``, or a dtype torch has no
    kernel for. None when the dtypes do not explain ``error`` (the caller re-raises it).

    Layers call the op first and explain only a failure, so a working call (torch.autocast casts
    inside the op; CPU BatchNorm takes half inputs with float parameters) costs nothing.
    """
    torch_says = first_line(error)
    floating = x.is_floating_point() or x.is_complex()
    if weight is not None and x.dtype != weight.dtype:
        fix = f"the input with x.to({weight.dtype})"
        if floating:
            fix += f" or the layer with layer.to({x.dtype}), or run the model under torch.autocast"
        return TypeError(
            f"{layer} received a {x.dtype} input but its parameters are {weight.dtype} (torch: "
            f"{torch_says}). Cast {fix}."
        )
    if "not implemented for" in torch_says or not floating:
        return TypeError(
            f"{layer} does not support {x.dtype} inputs: torch has no kernel for that dtype "
            f"(torch: {torch_says}). Cast the input, e.g. x.float()."
        )
    return None
