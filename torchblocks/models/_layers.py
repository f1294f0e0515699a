"""Small pieces shared by the models: global pooling heads and the input-size check."""
import torch.nn.functional as F
from torch import Tensor, nn


def check_input_size(x: Tensor, minimum: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, C, H, W) with H and W at least ``minimum``.

    Callers register it as a ``torch.fx`` leaf (``torch.fx.wrap`` in their own module), so the
    models stay symbolically traceable.
    """
    if x.dim() != 4:
        raise ValueError(
            f"{model} expects a 4-D (N, C, H, W) input; received a {x.dim()}-D tensor of shape "
            f"{x.shape}."
        )
    if x.shape[-2] < minimum or x.shape[-1] < minimum:
        raise ValueError(
            f"{model} expects inputs of at least {minimum}x{minimum} pixels; received "
            f"{x.shape[-2]}x{x.shape[-1]} (input shape {x.shape})."
        )


class GlobalAvgPool2d(nn.Module):
    """Mean over H and W: (N, C, H, W) -> (N, C). Keras: ``GlobalAveragePooling2D``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class GlobalMaxPool2d(nn.Module):
    """Maximum over H and W: (N, C, H, W) -> (N, C). Keras: ``GlobalMaxPooling2D``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_max_pool2d(x, 1).flatten(1)
