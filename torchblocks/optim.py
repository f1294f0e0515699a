"""Optimizers whose update rule is Keras 3's, where ``torch.optim``'s differs.

``torch.optim.RMSprop`` adds epsilon outside the square root (``g / (sqrt(v) + eps)``); Keras adds
it inside (``g / sqrt(v + eps)``), and with Keras' default ``epsilon=1e-7`` the two differ by far
more than rounding once gradients are small (|g| below about 1e-3). ``torch.optim.Adam`` divides
by ``sqrt(v_hat) + eps`` with a bias-corrected ``v_hat``; Keras folds both bias corrections into the
step size and adds epsilon to the uncorrected ``sqrt(v)`` (Kingma & Ba's "epsilon hat" form).
These classes apply Keras' arithmetic, operation for operation, so a model trained with
``model.compile(optimizer="rmsprop")`` in Keras follows the same trajectory here.

Keras counts steps once per optimizer (``optimizer.iterations``), not per variable: the count is
kept in every parameter group (``group["iterations"]``), advanced together on each ``step()``, so
Adam's bias correction for a parameter that skipped a step (no gradient) is Keras' too.
"""
import math
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["Adam", "RMSprop"]


def _check_real(value: object, name: str, low: float, high: float, expected: str, *, low_open: bool,
                high_open: bool) -> float:
    """``value`` if it is a real number in the interval, else a Keras-style error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a float. Received {name}={value!r} of type "
            f"{type(value).__name__}."
        )
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    # The chained comparisons also refuse NaN.
    if not (above and below):
        raise ValueError(f"Invalid value for argument `{name}`. Expected {expected}. Received {name}={value!r}.")
    return float(value)


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"Invalid type for argument `{name}`. Expected a bool. Received {name}={value!r} of type "
            f"{type(value).__name__}."
        )
    return value


class _KerasOptimizer(Optimizer):
    """Shared step bookkeeping: one Keras ``iterations`` count, sparse gradients refused."""

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        # A group added later joins the optimizer's running count, as a Keras variable would.
        param_group.setdefault("iterations", max((g["iterations"] for g in self.param_groups), default=0))
        super().add_param_group(param_group)

    def _params_with_grad(self, group: Dict[str, Any]):
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise NotImplementedError(
                    f"{type(self).__name__} does not support sparse gradients; received one for a "
                    f"parameter of shape {tuple(p.shape)}."
                )
            yield p

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in self._params_with_grad(group):
                self._update(p, p.grad, self.state[p], group)
            group["iterations"] += 1
        return loss

    def _update(self, p: Tensor, grad: Tensor, state: Dict[str, Any], group: Dict[str, Any]) -> None:
        raise NotImplementedError


class RMSprop(_KerasOptimizer):
    """RMSprop with Keras 3's update rule and defaults. Keras: ``keras.optimizers.RMSprop``.

    Per parameter, with ``g`` its gradient::

        v = rho * v + (1 - rho) * g**2
        mg = rho * mg + (1 - rho) * g                      # centered only
        denominator = v - mg**2 + epsilon  (centered)  |  v + epsilon
        increment = lr * g / sqrt(denominator)
        m = momentum * m + increment; p -= m     (momentum > 0)  |  p -= increment

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        lr: learning rate (Keras ``learning_rate``).
        rho: discount of the squared-gradient average.
        momentum: heavy-ball momentum applied to the increment (0 disables it).
        epsilon: added to the (centered) second moment inside the square root.
        centered: normalise by the gradient's estimated variance rather than its second moment.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
    ) -> None:
        defaults = dict(
            lr=_check_real(lr, "lr", 0.0, math.inf, "a non-negative finite float", low_open=False, high_open=True),
            rho=_check_real(rho, "rho", 0.0, 1.0, "a float in [0, 1)", low_open=False, high_open=True),
            momentum=_check_real(momentum, "momentum", 0.0, 1.0, "a float in [0, 1)", low_open=False,
                                 high_open=True),
            epsilon=_check_real(epsilon, "epsilon", 0.0, math.inf, "a strictly positive finite float",
                                low_open=True, high_open=True),
            centered=_check_bool(centered, "centered"),
            iterations=0,
        )
        super().__init__(params, defaults)

    def _update(self, p: Tensor, grad: Tensor, state: Dict[str, Any], group: Dict[str, Any]) -> None:
        rho, momentum = group["rho"], group["momentum"]
        if not state:
            state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grad = grad.to(p.dtype)
        velocity = state["velocity"]
        velocity.mul_(rho).add_(grad * grad, alpha=1 - rho)
        denominator = velocity + group["epsilon"]
        if group["centered"]:
            average = state.setdefault("average_gradient", torch.zeros_like(p, memory_format=torch.preserve_format))
            average.mul_(rho).add_(grad, alpha=1 - rho)
            denominator.sub_(average * average)
        increment = (grad * group["lr"]).div_(denominator.sqrt_())
        if momentum > 0:
            buffer = state.setdefault("momentum", torch.zeros_like(p, memory_format=torch.preserve_format))
            buffer.mul_(momentum).add_(increment)
            p.sub_(buffer)
        else:
            p.sub_(increment)


class Adam(_KerasOptimizer):
    """Adam with Keras 3's update rule and defaults. Keras: ``keras.optimizers.Adam``.

    Per parameter at Keras step ``t`` (1 on the first update), with ``g`` its gradient::

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m = beta_1 * m + (1 - beta_1) * g;  v = beta_2 * v + (1 - beta_2) * g**2
        v_hat = max(v_hat, v)                                # amsgrad only; then used as v
        p -= m * alpha / (sqrt(v) + epsilon)

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        lr: learning rate (Keras ``learning_rate``).
        beta_1: decay of the first-moment average.
        beta_2: decay of the second-moment average.
        epsilon: added to ``sqrt(v)``, the uncorrected second moment's root.
        amsgrad: use the running maximum of ``v`` (Reddi et al.).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
    ) -> None:
        defaults = dict(
            lr=_check_real(lr, "lr", 0.0, math.inf, "a non-negative finite float", low_open=False, high_open=True),
            beta_1=_check_real(beta_1, "beta_1", 0.0, 1.0, "a float in [0, 1)", low_open=False, high_open=True),
            beta_2=_check_real(beta_2, "beta_2", 0.0, 1.0, "a float in [0, 1)", low_open=False, high_open=True),
            epsilon=_check_real(epsilon, "epsilon", 0.0, math.inf, "a strictly positive finite float",
                                low_open=True, high_open=True),
            amsgrad=_check_bool(amsgrad, "amsgrad"),
            iterations=0,
        )
        super().__init__(params, defaults)

    def _update(self, p: Tensor, grad: Tensor, state: Dict[str, Any], group: Dict[str, Any]) -> None:
        beta_1, beta_2 = group["beta_1"], group["beta_2"]
        if not state:
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grad = grad.to(p.dtype)
        # Keras computes the step size in the variable's dtype from tensors, not Python floats.
        step = torch.tensor(group["iterations"] + 1, dtype=p.dtype, device=p.device)
        beta_1_power = torch.pow(torch.tensor(beta_1, dtype=p.dtype, device=p.device), step)
        beta_2_power = torch.pow(torch.tensor(beta_2, dtype=p.dtype, device=p.device), step)
        alpha = group["lr"] * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m, v = state["momentum"], state["velocity"]
        m.mul_(beta_1).add_(grad, alpha=1 - beta_1)
        v.mul_(beta_2).add_(grad * grad, alpha=1 - beta_2)
        if group["amsgrad"]:
            v_hat = state.setdefault("velocity_hat", torch.zeros_like(p, memory_format=torch.preserve_format))
            torch.maximum(v_hat, v, out=v_hat)
            v = v_hat
        p.sub_((m * alpha).div_(v.sqrt().add_(group["epsilon"])))
