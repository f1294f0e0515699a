"""Lazy imports of Keras 3 and h5py, and the choice of Keras' backend.

Keras is imported only inside the functions that need it (``pip install "torchblocks[keras]"``);
where ``KERAS_BACKEND`` is unset and TensorFlow is not installed, the torch backend is selected.
"""
import importlib
import importlib.util
import os
import sys
from typing import Any

EXTRA_HINT = 'Install it with: pip install "torchblocks[keras]"'


def import_keras() -> Any:
    """Import keras 3, choosing the torch backend when no backend is configured and TF is absent."""
    if (
        "keras" not in sys.modules
        and "KERAS_BACKEND" not in os.environ
        and importlib.util.find_spec("tensorflow") is None
    ):
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        keras = importlib.import_module("keras")
    except ImportError as exc:
        raise ImportError(
            f"The Keras interop needs keras>=3 ({exc}). {EXTRA_HINT}, and set KERAS_BACKEND=torch "
            f"if TensorFlow is not installed."
        ) from exc
    if not hasattr(keras, "ops"):
        raise ImportError(f"The Keras interop needs keras>=3; found {keras.__version__}. {EXTRA_HINT}")
    return keras


def import_h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as exc:
        raise ImportError(f"Reading .weights.h5 files needs h5py ({exc}). {EXTRA_HINT}") from exc

