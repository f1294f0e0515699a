"""``torchblocks port``: a .keras file to OUT.py + OUT.pt, verified in a fresh process.

The command runs in-process through ``main([...])``; its check of the written module runs in a
child process (with one intra-op thread, as everything here on 2 shared cores). Every failure
must leave the output folder empty.
"""
import importlib.util
import os
import re
import zipfile

import pytest
import torch

from keras_oracle import assert_rel_close, book_separable_model, calibrate_bn, images, keras, keras_nchw
from keras_oracle import nchw_to_nhwc, randomize
from torchblocks.cli import main
from torchblocks.cli import port as port_command
from torchblocks.interop.keras import source


@pytest.fixture(autouse=True)
def _one_thread_child(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _residual_model():
    L = keras().layers
    inp = keras().Input((12, 12, 3))
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    y = L.BatchNormalization()(L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x))
    x = L.ReLU()(L.add([y, L.Conv2D(16, 1, strides=2)(x)]))
    return keras().Model(inp, L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(x)))


def _saved(tmp_path, model, name: str = "model.keras") -> str:
    path = str(tmp_path / name)
    model.save(path)
    return path


def _port(capsys, *argv):
    """(exit status, stdout, stderr) of ``torchblocks port ARGV``."""
    status = main(["port", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_round_trip(tmp_path, out_dir, rng, capsys, monkeypatch):
    """The residual model with BatchNorm (the book's model makes the same trip in-process, in
    tests/interop/keras/test_source.py: the fresh process alone costs ~10 CPU-seconds)."""
    model = _residual_model()
    randomize(model, rng)
    calibrate_bn(model, nchw_to_nhwc(images(rng, 4, 3, 12, 12)))
    monkeypatch.setattr(port_command, "LARGE_MODEL_LAYERS", 1)  # show the progress bar here too
    status, out, err = _port(capsys, _saved(tmp_path, model), "--out", out_dir / "ported.py")
    assert status == 0, err
    assert re.search(r"verify '\w+': \d+ layer calls, exact: max relative error", out)
    assert "port:" in err  # the progress bar, on stderr
    assert sorted(os.listdir(out_dir)) == ["ported.pt", "ported.py"]
    spec = importlib.util.spec_from_file_location("ported_by_cli", out_dir / "ported.py")
    ported = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ported)
    x = images(rng, 2, 3, 12, 12)
    with torch.no_grad():
        actual = ported.build()(torch.from_numpy(x)).numpy()
    assert_rel_close(actual, keras_nchw(model, x, training=False), 1e-5)


@pytest.mark.slow
def test_not_exact_leaves_no_file(tmp_path, out_dir, rng, capsys, monkeypatch):
    """A wrong weight in the written state dict: the fresh process's check names the layer and
    nothing is written."""
    model = book_separable_model(32, 32)
    randomize(model, rng)
    dense = next(l.name for l in model.layers if type(l).__name__ == "Dense")
    state_dict = source._state_dict

    def corrupted(*args):
        state = state_dict(*args)
        state[f"{dense}.weight"].mul_(1.1)
        return state

    monkeypatch.setattr(source, "_state_dict", corrupted)
    status, out, err = _port(capsys, _saved(tmp_path, model), "--out", out_dir / "ported.py")
    assert status == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"torchblocks port: error: verify '\w+': 11 layer calls, NOT exact: first divergent layer "
        rf"'{dense}' \(Dense\): relative error .* > tolerance 1e-05 \(float32\); nothing written", last
    )
    assert "DIVERGES" in err  # the table goes to stderr before the error line
    assert os.listdir(out_dir) == []


def _not_keras(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("not a model")
    return path


def _not_zip(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("not a zip archive")
    return path


def _bad_archive(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{ broken")
    return path


BAD_SOURCES = [
    (_not_keras, 1, r"SRC must be a Keras 3 \.keras file; received '.*model\.txt'"),
    (lambda tmp_path: tmp_path / "missing.keras", 1, r"no file at SRC '.*missing\.keras'"),
    (_not_zip, 1, r"SRC '.*model\.keras' is not a \.keras archive \(a zip file\)"),
    (_bad_archive, 1, r"could not load '.*model\.keras': "),
]


@pytest.mark.parametrize("make_source, status, message", BAD_SOURCES)
def test_bad_source_is_one_line_and_writes_nothing(tmp_path, out_dir, capsys, make_source, status, message):
    code, out, err = _port(capsys, make_source(tmp_path), "--out", out_dir / "ported.py")
    assert code == status and out == ""
    assert len(err.strip().splitlines()) == 1 and re.match("torchblocks port: error: " + message, err)
    assert os.listdir(out_dir) == []


def test_lambda_file_is_refused_and_its_code_never_runs(tmp_path, out_dir, capsys):
    """safe_mode: the Lambda's bytecode in the file never runs (it would leave a marker file)."""
    marker = tmp_path / "marker"
    inp = keras().Input((4,))
    # The path is a constant of the lambda's code (Keras cannot restore defaults or closures).
    touch = eval(f"lambda t: (open({str(marker)!r}, 'w').close(), t)[1]")
    src = _saved(tmp_path, keras().Model(inp, keras().layers.Lambda(touch)(inp)))
    marker.unlink()  # building the model ran the lambda once
    status, _, err = _port(capsys, src, "--out", out_dir / "ported.py")
    assert status == 1 and "deserialization of a `Lambda` layer" in err
    assert not marker.exists() and os.listdir(out_dir) == []
    keras().saving.load_model(src, safe_mode=False)  # the marker test can fail: unsafe loading runs it
    assert marker.exists()


def _unsupported():
    inp = keras().Input((4,))
    return keras().Model(inp, keras().layers.UnitNormalization(name="unit")(inp))


def _sequence():
    inp = keras().Input((5, 4))
    return keras().Model(inp, keras().layers.Dense(2)(inp))


def _unknown_size():
    inp = keras().Input((None, None, 3))
    return keras().Model(inp, keras().layers.GlobalAveragePooling2D()(keras().layers.Conv2D(2, 3)(inp)))


BAD_MODELS = [
    (_unsupported, 1, r"from_keras: layer 'unit' of class UnitNormalization: not supported"),
    (_sequence, 1, r"input '\w+' of shape \(None, 5, 4\) is neither an image \(N, H, W, C\) nor a vector"),
    (_unknown_size, 2, r"input '\w+' has shape \(None, None, None, 3\): pass --input-size H W"),
]


@pytest.mark.parametrize("make_model, status, message", BAD_MODELS)
def test_bad_model_is_one_line_and_writes_nothing(tmp_path, out_dir, capsys, make_model, status, message):
    code, out, err = _port(capsys, _saved(tmp_path, make_model()), "--out", out_dir / "ported.py")
    assert code == status and out == ""
    assert len(err.strip().splitlines()) == 1 and re.match("torchblocks port: error: " + message, err)
    assert os.listdir(out_dir) == []


def test_out_must_be_a_python_file(tmp_path, out_dir, capsys):
    src = _saved(tmp_path, _unsupported())
    status, _, err = _port(capsys, src, "--out", out_dir / "ported.txt")
    assert status == 2 and "--out must name a .py file" in err
    status, _, err = _port(capsys, src, "--out", tmp_path / "missing" / "ported.py")
    assert status == 1 and "is not a file in an existing, writable folder" in err
    assert os.listdir(out_dir) == []
