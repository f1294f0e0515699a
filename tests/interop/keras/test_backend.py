"""``interop.keras.backend``: importing torchblocks' Keras interop before Keras selects Keras' torch
backend when none is chosen; after Keras was loaded on another backend it refuses, saying what to set."""
import json
import os
import subprocess
import sys
import types

import pytest

from torchblocks.interop.keras import backend


def _keras_home(tmp_path, choice=None) -> str:
    if choice is not None:
        (tmp_path / "keras.json").write_text(json.dumps({"backend": choice, "floatx": "float32"}))
    return str(tmp_path)


@pytest.mark.parametrize("choice, expected", [(None, "torch"), ("tensorflow", "torch"), ("jax", None)])
def test_torch_is_chosen_where_no_backend_is(monkeypatch, tmp_path, choice, expected):
    """keras.json's "tensorflow" is Keras' own default entry, not a choice; "jax" there is one."""
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", _keras_home(tmp_path, choice))
    backend.select_backend()
    assert os.environ.get("KERAS_BACKEND") == expected


def test_a_chosen_backend_is_kept(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("KERAS_HOME", _keras_home(tmp_path))
    backend.select_backend()
    assert os.environ["KERAS_BACKEND"] == "jax"


def test_keras_already_on_another_backend_is_refused(monkeypatch):
    stub = types.SimpleNamespace(config=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", stub)
    with pytest.raises(ImportError, match=r"needs Keras' 'torch' backend, but Keras runs on 'jax'\. Set the "
                                          r"environment variable KERAS_BACKEND=torch before Keras is first imported"):
        backend.select_backend()


def test_importing_the_interop_first_lets_keras_import_without_tensorflow(tmp_path):
    """As the README does: `import torchblocks as tb` reaches tb.interop without importing Keras,
    and Keras imported afterwards runs on torch (TensorFlow is not installed here)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = _keras_home(tmp_path, "tensorflow")  # as Keras writes it on first use
    code = (
        "import sys, torchblocks as tb; "
        "assert callable(tb.interop.keras.from_keras) and callable(tb.interop.torchvision.from_torchvision); "
        "assert 'keras' not in sys.modules, 'keras imported'; "
        "import keras; assert keras.config.backend() == 'torch', keras.config.backend()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)
