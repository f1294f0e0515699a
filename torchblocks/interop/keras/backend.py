"""Lazy imports of Keras 3 and h5py, and the choice of Keras' backend.

The converted modules are checked against Keras running on its torch backend, and Keras picks its
backend once, when it is first imported. So importing ``torchblocks.interop.keras`` before Keras
selects the torch backend (``KERAS_BACKEND=torch``) when none is chosen, neither by the
``KERAS_BACKEND`` variable nor in ``keras.json`` (the ``"tensorflow"`` entry Keras writes there
itself on first use counts as no choice); importing it after Keras was loaded on another backend
raises an ``ImportError`` saying what to set. Keras itself is imported only inside the functions
that need it (``pip install "torchblocks[keras]"``); a ``.weights.h5`` file is read with h5py alone.
"""
import importlib
import json
import os
import sys
from typing import Any, Optional

EXTRA_HINT = 'Install it with: pip install "torchblocks[keras]"'
BACKEND = "torch"


def _backend_hint(found: str) -> str:
    return (
        f"torchblocks.interop.keras needs Keras' {BACKEND!r} backend, but Keras runs on {found!r}. "
        f"Set the environment variable KERAS_BACKEND={BACKEND} before Keras is first imported "
        f"(or import torchblocks.interop.keras first, which chooses it when none is set)."
    )


def _configured_backend() -> Optional[str]:
    """The backend named in ``keras.json``, unless it is Keras' own default entry."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            backend = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) and backend != "tensorflow" else None


def _loaded_backend() -> Optional[str]:
    """The backend of an already imported Keras, None when Keras is not imported yet."""
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is None or not hasattr(config, "backend"):
        return None
    return str(config.backend())


def select_backend() -> None:
    """Choose the torch backend for a Keras not yet imported; refuse a Keras on another one.

    Raises:
        ImportError: Keras was already imported on a backend other than torch.
    """
    loaded = _loaded_backend()
    if loaded is not None:
        if loaded != BACKEND:
            raise ImportError(_backend_hint(loaded))
        return
    if "KERAS_BACKEND" not in os.environ and _configured_backend() is None:
        os.environ["KERAS_BACKEND"] = BACKEND


def import_keras() -> Any:
    """Import keras 3 on its torch backend, or raise an ``ImportError`` saying what to install or set."""
    select_backend()
    try:
        keras = importlib.import_module("keras")
    except ImportError as exc:
        raise ImportError(
            f"The Keras interop needs keras>=3 on its torch backend ({exc}). {EXTRA_HINT}, and set "
            f"KERAS_BACKEND={BACKEND}."
        ) from exc
    if not hasattr(keras, "ops"):
        raise ImportError(f"The Keras interop needs keras>=3; found {keras.__version__}. {EXTRA_HINT}")
    backend = str(keras.config.backend())
    if backend != BACKEND:
        raise ImportError(_backend_hint(backend))
    return keras


def import_h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as exc:
        raise ImportError(f"Reading .weights.h5 files needs h5py ({exc}). {EXTRA_HINT}") from exc
