"""Helpers shared by the analysis tests: Keras output sizes and FlopCounterMode's count."""
import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def keras_out(n: int, k: int, s: int, padding: str, d: int = 1) -> int:
    """Keras output length: 'same' ceil(n / s), 'valid' floor((n - (k - 1)·d - 1) / s) + 1."""
    return math.ceil(n / s) if padding == "same" else (n - (k - 1) * d - 1) // s + 1


def flop_counter_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()

