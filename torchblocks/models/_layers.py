"""The input-size check shared by the models."""
from torch import Tensor


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
