"""Counting on the meta device: ``count()``'s numbers from shapes alone, without arithmetic or memory.

The model is copied onto the meta device (its parameters and buffers become tensors that have a
shape and no data; the caller's model is untouched) and run once under a
``torch.overrides.TorchFunctionMode`` that prices each torch call from the shapes of its
arguments and result: fvcore's own formulas for convolutions, matrix products and normalization,
the costs of :mod:`torchblocks.analysis.handlers` for the rest, and 0 for the calls fvcore skips
(views, copies, comparisons). Each cost goes to the module running the call and to every module
owning it, as fvcore attributes ops, so a report equals fvcore's on a real run: same ``macs``,
``by_module`` and ``by_operator``.

Nothing is approximated: a torch call the table does not price, or a model that cannot run on the
meta device (it reads tensor values, or holds tensors outside its parameters and buffers),
raises ``MetaCountError``; count it with a real run then. One difference remains by design:
fvcore's trace drops ops whose results reach no output, while this count prices every call made,
so a model computing values it never uses counts them here; no torchblocks model does.
"""
import contextlib
import copy
import functools
import inspect
import itertools
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._checks import ExampleInputs as Inputs
from .._checks import as_input_tuple, check_module, first_line
from .handlers import fvcore_ignored_ops, op_rules
from .report import CountReport, parameter_counts, temporary_mode
from .shapes import meta_result


class MetaCountError(NotImplementedError):
    """The model cannot be counted on the meta device: count it with a real run."""


# Python spellings of ops -> the aten op that torch.jit records for them (fvcore's names).
_ALIASES = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add_", "__sub__": "sub", "__rsub__": "rsub",
    "__isub__": "sub_", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul_",
    "__truediv__": "div", "__itruediv__": "div_", "__neg__": "neg", "__matmul__": "matmul",
    "__getitem__": "select", "__eq__": "eq", "__ge__": "ge", "__gt__": "gt",
}
# Reads of a tensor's metadata, and torch._assert on them: no op in fvcore's trace, or only the
# ``aten::size`` it skips.
_METADATA = frozenset({
    "shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "is_meta", "layout", "grad_fn",
    "is_leaf", "size", "dim", "__len__", "__format__", "__repr__", "_assert",
})
_CONVS = {
    F.conv1d: False, F.conv2d: False, F.conv3d: False,
    F.conv_transpose1d: True, F.conv_transpose2d: True, F.conv_transpose3d: True,
}
_AFFINE_NORMS = {F.layer_norm: "layer_norm", F.group_norm: "group_norm", F.instance_norm: "instance_norm"}


def _numel(value: Any) -> int:
    """Elements of a tensor; 0 for a 0-d tensor or a non-tensor, as ``handlers`` counts them."""
    if not isinstance(value, Tensor) or value.dim() == 0:
        return 0
    return value.numel()


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _bind(func: Callable, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Arguments by parameter name, defaults filled in (Python functions of torch.nn.functional)."""
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _name(func: Callable) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property read, e.g. Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", "")
    return name


def _qualified(func: Callable) -> str:
    owner = getattr(func, "__module__", None) or getattr(getattr(func, "__objclass__", None), "__name__", "")
    return f"{owner}.{_name(func)}" if owner else _name(func)


@functools.lru_cache(maxsize=None)
def _takes_inplace(func: Callable) -> bool:
    if getattr(func, "__module__", None) != "torch.nn.functional":
        return False
    try:
        return "inplace" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _op_name(func: Callable, args: Sequence[Any], kwargs: Dict[str, Any]) -> str:
    """The name torch.jit gives the op ``func(*args, **kwargs)`` runs, e.g. ``"relu_"`` for
    ``F.relu(x, inplace=True)`` and ``"add_"`` for ``x += y``."""
    name = _name(func)
    if name in _METADATA:
        return name
    name = _ALIASES.get(name, name)
    if _takes_inplace(func) and _bind(func, args, kwargs)["inplace"]:
        name += "_"
    return name


def _fvcore_formula(func: Callable, name: str, args: Sequence[Any], kwargs: Dict[str, Any],
                    result: Any) -> Optional[Tuple[str, int]]:
    """(by_operator name, MACs) by fvcore's own handlers, or None when fvcore has none."""
    if func in _CONVS:
        x, weight = args[0], (args[1] if len(args) > 1 else kwargs["weight"])
        spatial = (x if _CONVS[func] else _first(result)).shape[2:]
        return "conv", x.shape[0] * math.prod(weight.shape) * math.prod(spatial)
    if func is F.linear:
        x, weight = args[0], (args[1] if len(args) > 1 else kwargs["weight"])
        return "linear", math.prod(x.shape) * weight.shape[0]
    if name in ("mm", "matmul", "bmm", "addmm"):
        a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
        dims = {"mm": (2,), "addmm": (2,), "bmm": (3,)}.get(name, range(1, 6))
        if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() in dims
                and b.dim() >= 2 and a.shape[-1] == b.shape[-2]):
            return None
        return name, math.prod(a.shape) * b.shape[-1]
    if func is F.batch_norm:
        bound = _bind(func, args, kwargs)
        affine = bound["weight"] is not None
        per_element = (5 if affine else 4) if bound["training"] else (2 if affine else 1)
        return "batch_norm", bound["input"].numel() * per_element
    if func in _AFFINE_NORMS:
        bound = _bind(func, args, kwargs)
        return _AFFINE_NORMS[func], bound["input"].numel() * (5 if bound["weight"] is not None else 4)
    if func is F.adaptive_avg_pool2d:
        return "adaptive_avg_pool2d", args[0].numel()
    return None


class _MetaCounter(TorchFunctionMode):
    """Prices each torch call made while active and charges it to the innermost running module."""

    def __init__(self, include_bn: bool) -> None:
        super().__init__()
        self.rules = op_rules(include_bn)
        self.ignored = fvcore_ignored_ops()
        self.scopes: List[str] = []
        self.charges: List[Tuple[str, str, int]] = []  # (module name, op name, MACs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func, args, kwargs)
        result = None
        if all(a.is_meta for a in args if isinstance(a, Tensor)):
            result = meta_result(func, name, name.endswith("_"), args, kwargs)
        if result is None:
            result = func(*args, **kwargs)
        op, macs = self._price(func, name, args, kwargs, result)
        if macs:
            self.charges.append((self.scopes[-1] if self.scopes else "", op, macs))
        return result

    def _price(self, func: Callable, name: str, args: Sequence[Any], kwargs: Dict[str, Any],
               result: Any) -> Tuple[str, int]:
        if name in _METADATA:
            return name, 0
        rule = self.rules.get(name)
        if rule == "free":
            return name, 0
        if rule == "output":
            return name, _numel(_first(result))
        if rule == "input":
            return name, _numel(args[0])
        if rule == "window":
            kernel = args[1] if len(args) > 1 else kwargs["kernel_size"]
            kernel = [kernel, kernel] if isinstance(kernel, int) else list(kernel)
            return name, kernel[0] * kernel[-1] * _numel(_first(result))
        priced = _fvcore_formula(func, name, args, kwargs, result)
        if priced is not None:
            return priced
        if name in self.ignored:
            return name, 0
        raise MetaCountError(
            f"counting on the meta device has no cost for the torch call {_qualified(func)}: count "
            "with a real run (meta=False)"
        )


# In-place fills and random draws that initialisers run: nothing to do on a meta tensor.
_INIT_OPS = frozenset({
    "normal_", "uniform_", "zero_", "fill_", "erfinv_", "clamp_", "mul_", "add_", "sub_", "div_",
    "copy_", "exponential_", "bernoulli_", "random_",
})


class _SkipInit(TorchFunctionMode):
    """Returns a meta tensor from its in-place initialisation unchanged: it holds no data, and
    torch would route the call through its Python references (which load ``torch.compile``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _name(func) in _INIT_OPS and args and isinstance(args[0], Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build modules on the meta device (shapes only), skipping their weight initialisation."""
    with torch.device("meta"), _SkipInit():
        yield


def on_meta(model: nn.Module, inputs: Inputs) -> bool:
    """Whether ``model`` or ``inputs`` hold meta tensors (then only meta counting can count them)."""
    tensors = itertools.chain(model.parameters(), model.buffers(), as_input_tuple(inputs))
    return any(t.is_meta for t in tensors)


def to_meta(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors of the same shapes, dtypes
    and sharing (no data is copied)."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        raise MetaCountError(f"{type(model).__name__} holds a ScriptModule, which cannot be copied to meta")
    memo: Dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    try:
        return copy.deepcopy(model, memo)
    except Exception as error:  # deepcopy raises whatever the model's state raises
        raise MetaCountError(f"{type(model).__name__} cannot be copied: {first_line(error)}") from error


def count_meta(model: nn.Module, inputs: Inputs, *, training: bool = False, include_bn: bool = True) -> CountReport:
    """``count(model, inputs)`` on the meta device: see the module docstring.

    Raises:
        TypeError: ``model`` is not a module or ``inputs`` not tensors.
        ValueError: the model rejected the inputs (its own check, as in a real run).
        MetaCountError: a torch call without a known cost, or a model that cannot run on meta.
    """
    check_module(model)
    args = as_input_tuple(inputs)
    meta_args = tuple(torch.empty(t.shape, dtype=t.dtype, device="meta") for t in args)
    tensors = itertools.chain(model.parameters(), model.buffers())
    if training or not all(t.is_meta for t in tensors):
        # A copy on meta: the caller's model keeps its data, modes and running statistics.
        meta_model = to_meta(model)
        modes: Any = contextlib.nullcontext()
        for module in meta_model.modules():
            module.training = training
    else:
        meta_model, modes = model, temporary_mode(model, training)
    names: Dict[nn.Module, str] = {}
    for name, module in meta_model.named_modules(remove_duplicate=False):
        names.setdefault(module, name)
    counter = _MetaCounter(include_bn)
    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            counter.scopes.append(name)
        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        counter.scopes.pop()

    handles = []
    for module, name in names.items():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), modes, counter:
            meta_model(*meta_args)
    except (ValueError, TypeError, MetaCountError):
        raise
    except Exception as error:  # a meta kernel's NotImplementedError, .item() on meta, devices mixed
        raise MetaCountError(
            f"{type(model).__name__} cannot run on the meta device: {first_line(error)}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    by_module = {name: 0 for name in names.values()}
    by_operator: Dict[str, int] = {}
    for scope, op, macs in counter.charges:
        parts = scope.split(".") if scope else []
        for k in range(len(parts) + 1):
            by_module[".".join(parts[:k])] += macs
        by_operator[op] = by_operator.get(op, 0) + macs
    trainable, frozen, buffers = parameter_counts(model)
    return CountReport(
        trainable, frozen, buffers, by_module[""], by_module, by_operator,
        input_shapes=tuple(tuple(t.shape) for t in args),
    )
