"""Interop with other frameworks, proving the ports exact.

``keras``: ``load_keras_weights`` (Keras layers, models, ``.keras`` and ``.weights.h5`` files) and
``from_keras`` (Keras Sequential/Functional model -> torchblocks module); keras itself is imported
only when they run. ``torchvision``: ResNet conversion in both directions (loaded on first use).
"""
import importlib
from typing import Any

__all__ = ["keras", "torchvision"]


def __getattr__(name: str) -> Any:
    # Each interop is loaded on first access: the Keras one reads numpy records, the torchvision one
    # imports torchvision; neither belongs in `import torchblocks`.
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
