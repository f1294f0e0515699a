"""Layers that move elements without computing (Keras reshaping layers)."""
from typing import List, Sequence

from torch import Tensor, nn
from torch.jit import Final


class Flatten(nn.Module):
    """(N, ...) -> (N, F). Keras: ``Flatten``.

    ``channels_last``: the features come in Keras' order, channels last ((h, w, c) for an
    (N, C, H, W) map). Otherwise in torch's order ((c, h, w)): a converted model flattens so where
    the Dense/BatchNormalization layers reading the features had their rows permuted instead;
    ``permuted_for`` is then the (C, H, W) shape they were permuted for, checked on every call.
    """

    channels_last: Final[bool]
    permuted_for: Final[List[int]]

    def __init__(self, channels_last: bool, permuted_for: Sequence[int] = ()) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        self.permuted_for = [int(d) for d in permuted_for]

    def forward(self, x: Tensor) -> Tensor:
        """(N, d1, ..., dk) -> (N, d1·...·dk)."""
        if len(self.permuted_for) > 0 and list(x.shape[1:]) != self.permuted_for:
            raise ValueError(
                f"Flatten: the next layers' rows were permuted for inputs of shape [N] + "
                f"{self.permuted_for}; received {list(x.shape)}."
            )
        if self.channels_last and x.dim() > 2:
            x = x.movedim(1, -1)
        return x.flatten(1)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}, permuted_for={tuple(self.permuted_for)}"


class Reshape(nn.Module):
    """Keras ``Reshape`` on a converted model's tensors: (N, ...) -> (N, *shape).

    Keras reshapes in its own layout: ``channels_last_in`` moves dim 1 of the input last first (an
    (N, C, H, W) map is an (N, H, W, C) Keras tensor), ``channels_last_out`` moves the last dim of
    the result to dim 1 (a 4-D Keras result becomes (N, C, H, W)). ``shape`` may hold one -1.
    """

    shape: Final[List[int]]
    channels_last_in: Final[bool]
    channels_last_out: Final[bool]

    def __init__(self, shape: Sequence[int], channels_last_in: bool, channels_last_out: bool) -> None:
        super().__init__()
        self.shape = [int(d) for d in shape]
        self.channels_last_in, self.channels_last_out = bool(channels_last_in), bool(channels_last_out)

    def forward(self, x: Tensor) -> Tensor:
        """(N, ...) -> (N, *shape), in the converted model's layout."""
        if self.channels_last_in:
            x = x.movedim(1, -1)
        x = x.reshape([x.shape[0]] + self.shape)
        if self.channels_last_out:
            x = x.movedim(-1, 1)
        return x

    def extra_repr(self) -> str:
        return (
            f"shape={tuple(self.shape)}, channels_last_in={self.channels_last_in}, "
            f"channels_last_out={self.channels_last_out}"
        )


class Permute(nn.Module):
    """``x.permute(0, *dims)``, the batch dim kept first. Keras: ``Permute``."""

    dims: Final[List[int]]

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = [int(d) for d in dims]
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(
                f"Invalid value for argument `dims`. Expected a permutation of 1..{len(self.dims)}. "
                f"Received dims={tuple(dims)}."
            )

    def forward(self, x: Tensor) -> Tensor:
        """(N, d1, ..., dk) -> (N, d_dims[0], ...)."""
        return x.permute([0] + self.dims)

    def extra_repr(self) -> str:
        return f"dims={tuple(self.dims)}"


class Cropping2d(nn.Module):
    """Removes rows and columns at the borders of (N, C, H, W) maps. Keras: ``Cropping2D``."""

    top: Final[int]
    bottom: Final[int]
    left: Final[int]
    right: Final[int]

    def __init__(self, top: int, bottom: int, left: int, right: int) -> None:
        super().__init__()
        self.top, self.bottom, self.left, self.right = int(top), int(bottom), int(left), int(right)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H - top - bottom, W - left - right)."""
        height, width = x.shape[-2], x.shape[-1]
        if height - self.top - self.bottom < 1 or width - self.left - self.right < 1:
            raise ValueError(
                f"Cropping2d: cropping ({self.top}, {self.bottom}) rows and ({self.left}, "
                f"{self.right}) columns leaves nothing of an input of shape {list(x.shape)}."
            )
        return x[:, :, self.top:height - self.bottom, self.left:width - self.right]

    def extra_repr(self) -> str:
        return f"top={self.top}, bottom={self.bottom}, left={self.left}, right={self.right}"
