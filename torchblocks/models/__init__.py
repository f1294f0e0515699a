"""Models built from the torchblocks layers: NCHW input, logits out.

``SeparableConvNet`` (the book's model), ``xception`` (Keras Applications layout) and
``resnet18`` .. ``resnet152`` (torchvision layout and state-dict keys); look any of them up by name
with :func:`get_model`.
"""
from typing import Callable, Dict, Tuple

from torch import nn

from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .separable_convnet import SeparableConvNet
from .xception import Xception, xception

_MODELS: Dict[str, Callable[..., nn.Module]] = {
    "SeparableConvNet": SeparableConvNet,
    "xception": xception,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}

MODEL_NAMES = tuple(_MODELS)

# Input (C, H, W) each model is usually run at: the book's 64×64, Keras Xception's 299×299,
# ImageNet's 224×224 for the rest.
_DEFAULT_INPUTS = {"separableconvnet": (3, 64, 64), "xception": (3, 299, 299)}
IMAGENET_INPUT = (3, 224, 224)


def default_input_shape(name: str) -> Tuple[int, int, int]:
    """(C, H, W) at which the model called ``name`` is analysed and exported unless told otherwise."""
    return _DEFAULT_INPUTS.get(name.lower(), IMAGENET_INPUT)


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the model called ``name`` (case-insensitive, one of ``MODEL_NAMES``) with ``kwargs``."""
    if not isinstance(name, str):
        raise TypeError(
            f"Invalid type for argument `name`. Expected a str. Received name={name!r} of type "
            f"{type(name).__name__}."
        )
    by_lower = {key.lower(): factory for key, factory in _MODELS.items()}
    factory = by_lower.get(name.lower())
    if factory is None:
        raise ValueError(
            f"Invalid value for argument `name`. Expected one of {MODEL_NAMES} (case-insensitive). "
            f"Received name={name!r}."
        )
    return factory(**kwargs)


__all__ = [
    "MODEL_NAMES",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "SeparableConvNet",
    "Xception",
    "default_input_shape",
    "get_model",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "xception",
]
