"""The model to train: a ``torchblocks.models`` name or a user's ``module:attribute`` factory."""
import importlib
import inspect
from typing import Callable, Tuple

import torch
from torch import nn

from .. import models
from .._checks import first_line
from ..models import MODEL_NAMES, default_input_shape

# The book's input size, used for a user's factory unless --input-size says otherwise.
FACTORY_INPUT = (3, 64, 64)


def resolve(spec: str) -> Tuple[str, Callable[..., nn.Module]]:
    """(canonical name, factory) for ``spec``: a model name (case-insensitive) or ``module:attribute``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"Invalid value for argument `model`. Expected a model name or module:attribute. Received model={spec!r}."
        )
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"model {spec!r} is not of the form module:attribute")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"cannot import {module_name!r} for model {spec!r}: {first_line(error)}") from None
        factory = module
        for part in attribute.split("."):
            if not hasattr(factory, part):
                raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (model {spec!r})")
            factory = getattr(factory, part)
        if not callable(factory):
            raise ValueError(f"model {spec!r} is a {type(factory).__name__}, not a callable that builds an nn.Module")
        return spec, factory
    for name in MODEL_NAMES:
        if name.lower() == spec.lower():
            return name, getattr(models, name)
    raise ValueError(f"unknown model {spec!r}; choose one of {', '.join(MODEL_NAMES)} or give module:attribute")


def default_input(name: str) -> Tuple[int, int, int]:
    """(C, H, W) a model trains at unless told: its analysis default, the book's 3x64x64 for factories."""
    return FACTORY_INPUT if ":" in name else default_input_shape(name)


def build(name: str, factory: Callable[..., nn.Module], num_classes: int, channels: int) -> nn.Module:
    """``factory(num_classes=..., [in_channels=...])``; errors name the model and what it lacks."""
    try:
        parameters = inspect.signature(factory).parameters
        known = True
    except (TypeError, ValueError):  # some builtins and C extensions have no signature
        parameters, known = {}, False
    takes_any = not known or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {"num_classes": num_classes}
    if "num_classes" not in parameters and not takes_any:
        raise ValueError(f"model {name!r} takes no num_classes argument; its factory must accept num_classes=")
    if "in_channels" in parameters or (takes_any and channels != 3):
        kwargs["in_channels"] = channels
    elif channels != 3:
        raise ValueError(f"model {name!r} takes 3 input channels (no in_channels argument); received {channels}")
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot build model {name!r} with {kwargs}: {first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} built a {type(model).__name__}, not an nn.Module")
    return model


def check_input(model: nn.Module, name: str, input_size: Tuple[int, int, int], num_classes: int,
                device: torch.device) -> None:
    """Run two blank images through ``model`` in eval mode: (2, num_classes) logits, or ``ValueError``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_size), device=device))
    except Exception as error:  # any failure here means this input size does not suit the model
        raise ValueError(
            f"model {name!r} cannot take input of size {'x'.join(map(str, input_size))}: {first_line(error)}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model {name!r} returned {shape} for a batch of 2 at {'x'.join(map(str, input_size))}; "
            f"expected (2, {num_classes}) logits"
        )


INITS = ("model", "he", "keras")


def _keras_fans(weight: torch.Tensor, groups: int) -> Tuple[int, int]:
    """Keras' (fan_in, fan_out) for the kernel this torch weight holds.

    Dense (in, out) and Conv2D (kh, kw, in, out) agree with torch's reading of the transposed
    weight; a depthwise kernel (kh, kw, C, m) does not: Keras counts fan_in = kh·kw·C and
    fan_out = kh·kw·m, where torch's (C·m, 1, kh, kw) weight would give kh·kw and kh·kw·C·m.
    """
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    if weight.dim() > 2 and groups > 1 and weight.shape[1] == 1:
        channels = groups
        return receptive * channels, receptive * (weight.shape[0] // channels)
    return receptive * weight.shape[1], receptive * weight.shape[0]


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every conv and linear layer of ``model`` in place; returns it.

    ``"model"`` keeps the model's own initialisation (torch's default for torchblocks layers);
    ``"he"``: He-normal weights for ReLU (fan_in), zero biases; ``"keras"``: Keras' default,
    Glorot-uniform weights with Keras' fans and zero biases. BatchNorm is reset to weight 1, bias 0.
    """
    if scheme not in INITS:
        raise ValueError(f"Invalid value for argument `init`. Expected one of {INITS}. Received init={scheme!r}.")
    if scheme == "model":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "he":
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            else:
                fan_in, fan_out = _keras_fans(module.weight, getattr(module, "groups", 1))
                limit = (6.0 / (fan_in + fan_out)) ** 0.5
                nn.init.uniform_(module.weight, -limit, limit)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
