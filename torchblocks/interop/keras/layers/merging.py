"""Element-wise and joining layers on lists of tensors (Keras merging layers and operations)."""
from typing import List

import torch
from torch import Tensor, nn
from torch.jit import Final


class Add(nn.Module):
    """The inputs summed in order, broadcasting as Keras does. Keras: ``Add``, ``ops.add``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-rank tensors -> their sum."""
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Subtract(nn.Module):
    """``xs[0] - xs[1]``. Keras: ``Subtract``, ``ops.subtract``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """Two same-rank tensors -> their difference."""
        return xs[0] - xs[1]


class Divide(nn.Module):
    """``xs[0] / xs[1]``. Keras: ``ops.divide``, ``x / y`` in a functional model."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """Two same-rank tensors -> their quotient."""
        return xs[0] / xs[1]


class Multiply(nn.Module):
    """The inputs multiplied in order. Keras: ``Multiply``, ``ops.multiply``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-rank tensors -> their product."""
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class Average(nn.Module):
    """The inputs summed in order, then divided by their count. Keras: ``Average``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-rank tensors -> their mean."""
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out / len(xs)


class Maximum(nn.Module):
    """Element-wise maximum of the inputs. Keras: ``Maximum``, ``ops.maximum``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-rank tensors -> their element-wise maximum."""
        out = xs[0]
        for x in xs[1:]:
            out = torch.maximum(out, x)
        return out


class Minimum(nn.Module):
    """Element-wise minimum of the inputs. Keras: ``Minimum``, ``ops.minimum``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-rank tensors -> their element-wise minimum."""
        out = xs[0]
        for x in xs[1:]:
            out = torch.minimum(out, x)
        return out


class Concatenate(nn.Module):
    """The inputs joined along ``dim`` (dim 1 is C for a Keras ``axis=-1`` on images).
    Keras: ``Concatenate``, ``ops.concatenate``."""

    dim: Final[int]

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-rank tensors -> one tensor."""
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ScaleAdd(nn.Module):
    """``xs[0] + xs[1] * scale``: the residual scaling of Keras' InceptionResNetV2
    (``CustomScaleLayer``)."""

    scale: Final[float]

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, xs: List[Tensor]) -> Tensor:
        """Two same-shape tensors -> one."""
        return xs[0] + xs[1] * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"


class Arithmetic(nn.Module):
    """``x op constant`` (or ``constant op x`` with ``reverse``) for op in add, subtract,
    multiply, divide. Keras: ``ops.add(x, 3.0)`` and the like, e.g. ``x + 3.0`` in a functional model."""

    op: Final[str]
    constant: Final[float]
    reverse: Final[bool]

    def __init__(self, op: str, constant: float, reverse: bool = False) -> None:
        super().__init__()
        if op not in ("add", "subtract", "multiply", "divide"):
            raise ValueError(
                f"Invalid value for argument `op`. Expected one of 'add', 'subtract', 'multiply', "
                f"'divide'. Received op={op!r}."
            )
        self.op, self.constant, self.reverse = op, float(constant), bool(reverse)

    def forward(self, x: Tensor) -> Tensor:
        """Element-wise; the shape of ``x``."""
        c = torch.tensor(self.constant, dtype=x.dtype, device=x.device)
        a, b = (c, x) if self.reverse else (x, c)
        if self.op == "add":
            return a + b
        if self.op == "subtract":
            return a - b
        if self.op == "multiply":
            return a * b
        return a / b

    def extra_repr(self) -> str:
        return f"op={self.op!r}, constant={self.constant!r}, reverse={self.reverse}"
