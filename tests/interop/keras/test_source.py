"""``to_source``: a Keras model written as a readable PyTorch module plus its state dict.

Each written module is imported from its file, built with its ``build()`` and checked against
Keras with ``verify``; the writer registry is checked class by class, and against every class
the converter table produces.
"""
import ast
import importlib.util
import os
import re

import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import book_separable_model, calibrate_bn, check_scripted, images, keras, nchw_to_nhwc
from keras_oracle import randomize
from torchblocks.activations import ACTIVATION_NAMES
from torchblocks.interop.keras import convert, layers, writers

kinterop = tb.interop.keras
ALLOWED_IMPORTS = {"os", "typing", "torch", "torchblocks"}


def _residual_model():
    """Two residual blocks with BatchNorm: identity shortcut, then a strided 1×1 projection."""
    L = keras().layers
    inp = keras().Input((16, 16, 3))
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(inp)))
    y = L.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = L.ReLU()(L.add([L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(y)), x]))
    y = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    y = L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(y))
    x = L.ReLU()(L.add([y, L.Conv2D(16, 1, strides=2, name="projection")(x)]))
    return keras().Model(inp, L.Dense(5)(L.GlobalAveragePooling2D()(x)), name="residual_net")


def _every_layer_model():
    """Every layer class the converter table knows, a nested model, a shared layer, two inputs
    and two outputs, and names of Python builtins ('input', 'max')."""
    L = keras().layers
    image, vector = keras().Input((12, 11, 3), name="input"), keras().Input((4,), name="vector")
    x = L.ZeroPadding2D(((1, 0), (2, 1)))(image)
    x = L.Conv2D(6, 4, strides=2, padding="same", use_bias=False)(x)
    x = L.ReLU(max_value=6.0)(L.BatchNormalization(center=False)(x))
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu6")(x)
    x = L.add([x, L.SeparableConv2D(12, 3, padding="same", activation="relu")(x)])
    x = L.Dense(5, activation="relu", name="max")(x)  # on a feature map: a 1×1 convolution
    x = L.Activation("tanh")(L.ReLU(negative_slope=0.1)(L.AveragePooling2D(2)(x)))
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = keras().Sequential([L.Conv2D(4, 1, name="nested_conv"), L.Dropout(0.1)], name="nested")(x)
    shared = L.Conv2D(4, 1, name="shared")
    x = shared(shared(x))
    features = L.GlobalAveragePooling2D()(x)
    x = L.BatchNormalization()(L.Dense(8, activation="elu")(L.Flatten()(x)))
    logits = L.add([L.Dense(3)(x), L.Dense(3)(vector)])
    return keras().Model([image, vector], [logits, features], name="every_layer")


def _inputs(rng, model, batch: int = 2):
    """Inputs in the torch layout (NCHW images, (N, F) vectors) for every model input."""
    shapes = [(batch,) + ((s[3], s[1], s[2]) if len(s) == 4 else tuple(s[1:])) for s in (t.shape for t in model.inputs)]
    return tuple(torch.from_numpy(images(rng, *shape)) for shape in shapes)


def _keras_inputs(xs):
    arrays = [nchw_to_nhwc(x.numpy()) if x.dim() == 4 else x.numpy() for x in xs]
    return arrays if len(arrays) > 1 else arrays[0]


# (model factory, expected class name pattern)
MODELS = [
    (lambda: book_separable_model(32, 32), r"Sequential\d*"),
    (_residual_model, "ResidualNet"),
    (_every_layer_model, "EveryLayer"),
]


def _import(path: str):
    spec = importlib.util.spec_from_file_location("ported_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keras_layers(model) -> list:
    return [l for l in model.layers if not isinstance(l, keras().layers.InputLayer)]


def _check_text(path: str, model, class_name: str) -> None:
    """The written file: lines of at most 100 columns, imports of torch and torchblocks only (and
    os/typing), one commented submodule per Keras layer, one forward line per layer call."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert max(len(line) for line in text.splitlines()) <= 100
    tree = ast.parse(text)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= ALLOWED_IMPORTS
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes[-1].name == class_name  # nested models' classes come first
    comments = re.findall(r"# Keras layer '([^']+)' \((\w+)\)", text.split(f"class {class_name}(")[1])
    assert comments == [(l.name, type(l).__name__) for l in _keras_layers(model)]
    forward = next(n for n in classes[-1].body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    calls = kinterop.from_keras(model).graph.find_nodes(op="call_module")
    assert len(forward.body) == len(calls) + 1  # one line per layer call, then return
    assert "build" in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("make_model, class_name", MODELS)
def test_round_trip(tmp_path, rng, make_model, class_name):
    model = make_model()
    randomize(model, rng)
    calibrate_bn(model, _keras_inputs(_inputs(rng, model, 4)))
    files = kinterop.to_source(model, str(tmp_path / "ported.py"))
    assert sorted(os.listdir(tmp_path)) == ["ported.pt", "ported.py"]
    assert re.fullmatch(class_name, files.class_name)
    _check_text(files.module_path, model, files.class_name)
    ported = _import(files.module_path).build()
    assert type(ported).__name__ == files.class_name and not ported.training
    state = torch.load(files.weights_path, weights_only=True)
    assert list(state) == list(ported.state_dict())
    report = kinterop.verify(model, ported, _inputs(rng, model))
    assert report.exact, str(report)
    assert len(report) == len(kinterop.from_keras(model).graph.find_nodes(op="call_module"))
    trainable = [p.requires_grad for p in ported.parameters()]
    assert trainable == [p.requires_grad for p in kinterop.from_keras(model).parameters()]


@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_written_module_scripts(tmp_path, rng):
    model = _residual_model()
    randomize(model, rng)
    files = kinterop.to_source(model, str(tmp_path / "residual.py"))
    check_scripted(_import(files.module_path).build(), _inputs(rng, model))


def test_build_takes_a_weights_path(tmp_path, rng):
    model = book_separable_model(32, 32)
    randomize(model, rng)
    files = kinterop.to_source(model, str(tmp_path / "book.py"))
    moved = str(tmp_path / "elsewhere.pt")
    os.replace(files.weights_path, moved)
    ported = _import(files.module_path).build(moved)
    assert kinterop.verify(model, ported, _inputs(rng, model)).exact
    with pytest.raises(FileNotFoundError):
        _import(files.module_path).build()


def _all_layers(model) -> set:
    found = set()
    for layer in model.layers:
        found.add(type(layer).__name__)
        if isinstance(layer, keras().Model):
            found |= _all_layers(layer)
    return found


def test_every_converter_class_is_written():
    """The round trip of _every_layer_model covers every class in the converter table: a new
    converter needs a layer there and a writer for its module class (``writers.writes``)."""
    missing = set(convert.CONVERTERS) - _all_layers(_every_layer_model())
    assert not missing, f"add {sorted(missing)} to _every_layer_model and writers for their modules"


# One instance per registered module class, with non-default arguments where there are any.
WRITER_CASES = [
    tb.Conv2d(4, 6, (3, 5), stride=2, padding="same", dilation=(1, 2), groups=2, bias=False, activation="gelu"),
    tb.Conv2d(3, 3, 1, padding=(1, 2), activation=nn.LeakyReLU(0.3)),
    tb.DepthwiseConv2d(4, 3, stride=(1, 2), padding="same", depth_multiplier=2, activation="relu6"),
    tb.SeparableConv2d(4, 8, (3, 1), dilation=2, depth_multiplier=3, bias=False, activation=nn.Hardtanh(0.0, 2.5)),
    tb.BatchNorm(6, axis=-1, eps=1e-3, momentum=1 - 0.99),
    tb.BatchNorm(6, momentum=None, affine=False, track_running_stats=False),
    tb.Dense(5, 3, bias=False, activation="softmax"),
    tb.MaxPool2d(3, 2, "same"),
    tb.AvgPool2d((2, 3), padding=(1, 1)),
    tb.GlobalAvgPool2d(keepdims=True),
    tb.GlobalMaxPool2d(),
    layers.Add(),
    layers.Flatten(True),
    nn.Dropout(0.25),
    nn.ZeroPad2d((1, 2, 3, 4)),
    nn.ReLU(inplace=True),
    nn.Hardtanh(-1.0, 3.0),
    nn.ELU(alpha=0.5),
    nn.GELU("tanh"),
    nn.Softplus(beta=2.0),
    nn.Softmax(dim=-1),
] + [tb.get_activation(name) for name in ACTIVATION_NAMES]


def test_every_writer_has_a_case():
    assert {type(m) for m in WRITER_CASES} == set(writers.WRITERS)


@pytest.mark.parametrize("module", WRITER_CASES, ids=lambda m: type(m).__name__)
def test_writer_rebuilds_the_module(module):
    """The written constructor call, run with its imports, builds the same module."""
    written = writers.WRITERS[type(module)](module)
    namespace: dict = {}
    exec("\n".join(sorted(written.imports | {"from torch import nn"})), namespace)
    rebuilt = eval(written.text, namespace)
    assert type(rebuilt) is type(module) and repr(rebuilt) == repr(module)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}
    for attribute in ("eps", "momentum", "p", "negative_slope", "alpha", "beta", "min_val", "max_val"):
        for ours, theirs in zip(rebuilt.modules(), module.modules()):
            assert getattr(ours, attribute, None) == getattr(theirs, attribute, None)


def test_module_class_without_writer_refused(tmp_path, monkeypatch):
    monkeypatch.delitem(writers.WRITERS, tb.MaxPool2d)
    pattern = r"Keras layer 'max_pooling2d\w*' \(MaxPooling2D\): no source writer for module class torchblocks"
    with pytest.raises(NotImplementedError, match=pattern + r"\.pooling\.MaxPool2d; writers exist for"):
        kinterop.to_source(book_separable_model(32, 32), str(tmp_path / "book.py"))
    assert os.listdir(tmp_path) == []


def test_bad_arguments_leave_no_files(tmp_path):
    model = book_separable_model(32, 32)
    with pytest.raises(ValueError, match=r"Expected a \.py file\. Received path='.*book\.txt'"):
        kinterop.to_source(model, str(tmp_path / "book.txt"))
    with pytest.raises(ValueError, match="Expected a file in an existing, writable folder"):
        kinterop.to_source(model, str(tmp_path / "missing" / "book.py"))
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        kinterop.to_source(tb.Conv2d(1, 1, 1), str(tmp_path / "book.py"))
    L = keras().layers
    inp = keras().Input((4,))
    unsupported = keras().Model(inp, L.UnitNormalization(name="unit")(inp))
    with pytest.raises(ValueError, match="layer 'unit' of class UnitNormalization: not supported"):
        kinterop.to_source(unsupported, str(tmp_path / "unit.py"))
    assert os.listdir(tmp_path) == []
