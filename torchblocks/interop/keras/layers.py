"""Modules that reproduce Keras layers with no torchblocks counterpart of their own.

They take channels-first tensors, as every module ``from_keras`` builds.
"""
from typing import List

from torch import Tensor, nn
from torch.jit import Final

__all__ = ["Add", "Flatten"]


class Add(nn.Module):
    """The inputs summed in order, broadcasting as Keras does. Keras: ``Add``."""

    def forward(self, xs: List[Tensor]) -> Tensor:
        """A list of same-shape tensors -> their sum."""
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Flatten(nn.Module):
    """(N, C, H, W) -> (N, C·H·W). Keras: ``Flatten``.

    With ``channels_last`` the features come in Keras' (h, w, c) order; without, in torch's
    (c, h, w) order, for a converted model whose next layers had their rows permuted instead.
    """

    channels_last: Final[bool]

    def __init__(self, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) or (N, F) -> (N, F')."""
        if self.channels_last and x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}"
