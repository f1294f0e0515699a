"""``interop.keras.sources``: files from strangers. A ``.keras`` file loads with Keras' safe_mode on
(a Lambda's code never runs); malformed ``.weights.h5`` files and truncated or incomplete ``.keras``
archives raise ValueError naming the file and the place inside it, and leave the module unchanged."""
import os
import zipfile

import h5py
import numpy as np
import pytest

import torchblocks as tb
from keras_oracle import assert_unchanged, keras, randomize_all, snapshot

from_keras = tb.interop.keras.from_keras
load_keras_weights = tb.interop.keras.load_keras_weights


def _model():
    L = keras().layers
    inp = keras().Input((5, 4, 3))
    x = L.Flatten()(L.Conv2D(2, 3, name="conv")(inp))
    model = keras().Model(inp, L.Dense(3, name="head")(x))
    randomize_all(model, np.random.default_rng(0))
    return model


def _dataset_for_group(f):
    del f["layers/dense"]
    f["layers/dense"] = np.zeros(3, np.float32)


def _vars_dataset(f):
    del f["layers/dense/vars"]
    f["layers/dense/vars"] = np.zeros(3, np.float32)


def _flat_kernel(f):
    del f["layers/dense/vars/0"]
    f["layers/dense/vars/0"] = np.zeros(12, np.float32)


def _bytes_variable(f):
    del f["layers/dense/vars/1"]
    f["layers/dense/vars/1"] = np.array([b"abc", b"def", b"ghi"])


def _empty_variable(f):
    del f["layers/conv2d/vars/1"]
    f["layers/conv2d/vars/1"] = h5py.Empty("f")


H5_DAMAGE = [
    (_dataset_for_group, r"at layers/dense: expected a layer's group, found a Dataset"),
    (_vars_dataset, r"at layers/dense/vars: expected a group of variables, found a Dataset"),
    (_flat_kernel, r"kernel \(.*model\.weights\.h5:layers/dense/vars/0\) has shape \(12,\), expected a 2-D array"),
    (_bytes_variable, r"bias \(.*model\.weights\.h5:layers/dense/vars/1\) holds \|S3 values, not floating-point"),
    (_empty_variable, r"bias \(.*model\.weights\.h5:layers/conv2d/vars/1\) has shape \(\), expected a 1-D array"),
]


@pytest.mark.parametrize("damage, message", H5_DAMAGE)
def test_malformed_weights_file_names_the_place_and_loads_nothing(tmp_path, damage, message):
    model = _model()
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r+") as f:
        damage(f)
    module = from_keras(model)
    before = snapshot(module)
    with pytest.raises(ValueError, match=message) as info:
        load_keras_weights(module, path)
    assert path in str(info.value)
    assert_unchanged(module, before)


def _truncate(path: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _drop_weights(path: str) -> None:
    with zipfile.ZipFile(path) as src:
        items = [(i, src.read(i)) for i in src.infolist() if i.filename != "model.weights.h5"]
    with zipfile.ZipFile(path, "w") as dst:
        for item, data in items:
            dst.writestr(item, data)


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"not a readable zip archive .*truncated or damaged"),
    (_drop_weights, r"the archive has no model\.weights\.h5"),
])
def test_broken_keras_archive_names_the_file_and_loads_nothing(tmp_path, damage, message):
    model = _model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    damage(path)
    module = from_keras(model)
    before = snapshot(module)
    with pytest.raises(ValueError, match=rf"Could not read the Keras model file '{path}': .*{message}"):
        load_keras_weights(module, path)
    with pytest.raises(ValueError, match=message):
        tb.interop.keras.load_keras_file(path)
    assert_unchanged(module, before)


def test_lambda_in_a_keras_file_is_refused_without_running_its_code(tmp_path):
    marker = str(tmp_path / "lambda_ran")
    L = keras().layers
    inp = keras().Input((4,))
    touch = L.Lambda(lambda t: t if open(marker, "w").write("ran") else t, name="touch")
    model = keras().Model(inp, L.Dense(2)(touch(inp)))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    os.remove(marker)  # building the model ran the Lambda once
    with pytest.raises(ValueError, match=r"Could not read the Keras model file .*lambda\.keras.*safe_mode"):
        load_keras_weights(tb.Dense(4, 2), path)
    with pytest.raises(ValueError, match="safe_mode"):
        tb.interop.keras.load_keras_file(path)
    assert not os.path.exists(marker)


def test_missing_and_unknown_files():
    with pytest.raises(FileNotFoundError, match="No Keras file at 'nowhere.keras'"):
        load_keras_weights(tb.Dense(4, 2), "nowhere.keras")
