"""``load_keras_weights``: layers, models, ``.keras`` and ``.weights.h5`` files, all-or-nothing.

Keras 3 on the torch backend is the oracle: each test runs the Keras layer or model itself and
compares with the torch module at 1e-5 relative (1e-4 for Xception), after checking that the
comparison could fail (the torch module disagrees before loading, or inputs move the output).
"""
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    assert_unchanged,
    images,
    keras,
    keras_nchw,
    nchw_to_nhwc,
    random_weights,
    randomize,
    randomize_all,
    rel_error,
    run_keras_nchw,
    run_torch,
    snapshot,
    to_numpy,
)

# The README's path: `import torchblocks as tb`, then `tb.interop.keras`.
KerasLoadResult = tb.interop.keras.KerasLoadResult
from_keras = tb.interop.keras.from_keras
load_keras_weights = tb.interop.keras.load_keras_weights

RTOL = 1e-5
XCEPTION_RTOL = 1e-4


# --------------------------------------------------------------------------- single layers

# (kernel, strides, dilation, padding, use_bias, activation, groups, (H, W))
CONV_CASES = [
    (3, 1, 1, "same", True, None, 1, (9, 9)),
    (4, 2, 1, "same", False, "relu", 1, (10, 7)),
    (3, 3, 1, "valid", True, None, 1, (11, 12)),
    (3, 1, 2, "same", True, "relu", 1, (8, 9)),
    ((1, 5), (2, 1), 1, "same", True, None, 2, (7, 10)),
]


@pytest.mark.parametrize("kernel, strides, dilation, padding, use_bias, activation, groups, size", CONV_CASES)
def test_conv2d_round_trip(rng, kernel, strides, dilation, padding, use_bias, activation, groups, size):
    layer = keras().layers.Conv2D(
        6, kernel, strides=strides, padding=padding, dilation_rate=dilation, use_bias=use_bias,
        activation=activation, groups=groups,
    )
    x = images(rng, 2, 4, *size)
    layer(nchw_to_nhwc(x))
    random_weights(layer, rng)
    conv = tb.Conv2d(4, 6, kernel, strides, padding, dilation, groups, use_bias, activation=activation)
    expected = run_keras_nchw(layer, x)
    assert rel_error(run_torch(conv, x), expected) > 1e-2  # the check can fail
    result = load_keras_weights(conv, layer)
    assert result == KerasLoadResult([(layer.name, "")], [], [])
    assert_rel_close(run_torch(conv, x), expected, RTOL)


def test_conv2d_into_plain_torch_conv(rng):
    """Keras 'same' at stride 1 with an odd kernel is nn.Conv2d(padding=k // 2)."""
    layer = keras().layers.Conv2D(5, 3, padding="same")
    x = images(rng, 2, 3, 8, 7)
    layer(nchw_to_nhwc(x))
    random_weights(layer, rng)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    load_keras_weights(conv, layer)
    assert_rel_close(run_torch(conv, x), run_keras_nchw(layer, x), RTOL)


# (kernel, strides, dilation, padding, depth_multiplier, (H, W))
DEPTHWISE_CASES = [
    (3, 1, 1, "same", 1, (9, 8)),
    (3, 2, 1, "same", 2, (10, 11)),
    (2, 1, 2, "valid", 3, (9, 9)),
]


@pytest.mark.parametrize("kernel, strides, dilation, padding, multiplier, size", DEPTHWISE_CASES)
def test_depthwise_round_trip(rng, kernel, strides, dilation, padding, multiplier, size):
    layer = keras().layers.DepthwiseConv2D(
        kernel, strides=strides, padding=padding, dilation_rate=dilation, depth_multiplier=multiplier
    )
    x = images(rng, 2, 4, *size)
    layer(nchw_to_nhwc(x))
    random_weights(layer, rng)
    conv = tb.DepthwiseConv2d(4, kernel, strides, padding, dilation, multiplier)
    expected = run_keras_nchw(layer, x)
    assert rel_error(run_torch(conv, x), expected) > 1e-2
    load_keras_weights(conv, layer)
    assert_rel_close(run_torch(conv, x), expected, RTOL)


@pytest.mark.parametrize("kernel, strides, dilation, padding, multiplier, size", DEPTHWISE_CASES)
def test_separable_round_trip(rng, kernel, strides, dilation, padding, multiplier, size):
    layer = keras().layers.SeparableConv2D(
        7, kernel, strides=strides, padding=padding, dilation_rate=dilation,
        depth_multiplier=multiplier, activation="relu",
    )
    x = images(rng, 2, 4, *size)
    layer(nchw_to_nhwc(x))
    random_weights(layer, rng)
    sep = tb.SeparableConv2d(4, 7, kernel, strides, padding, dilation, multiplier, activation="relu")
    expected = run_keras_nchw(layer, x)
    assert rel_error(run_torch(sep, x), expected) > 1e-2
    load_keras_weights(sep, layer)
    assert_rel_close(run_torch(sep, x), expected, RTOL)


# (torch module factory, input shape, center, scale)
BN_CASES = [
    (lambda: tb.BatchNorm(6), (3, 6, 5, 4), True, True),
    (lambda: nn.BatchNorm2d(6), (3, 6, 5, 4), False, True),
    (lambda: nn.BatchNorm1d(6), (5, 6), True, False),
    (lambda: tb.BatchNorm(6, axis=-1), (3, 5, 4, 6), True, True),
]


@pytest.mark.parametrize("make, shape, center, scale", BN_CASES)
def test_batchnorm_round_trip(rng, make, shape, center, scale):
    """Inference output, epsilon and momentum (Keras m -> torch 1 - m); center/scale False."""
    layer = keras().layers.BatchNormalization(epsilon=0.01, momentum=0.8, center=center, scale=scale)
    x = images(rng, *shape)
    channels_last = isinstance(make(), tb.BatchNorm) and make().axis == -1
    x_keras = x if channels_last or x.ndim == 2 else nchw_to_nhwc(x)
    layer(x_keras)
    random_weights(layer, rng)
    bn = make().eval()
    load_keras_weights(bn, layer)
    torch_bn = bn.bn if isinstance(bn, tb.BatchNorm) else bn
    assert torch_bn.eps == pytest.approx(0.01)
    assert torch_bn.momentum == pytest.approx(0.2)  # Keras 0.8; torch's default is 0.1
    if not scale:
        assert torch.equal(torch_bn.weight, torch.ones(6))
    if not center:
        assert torch.equal(torch_bn.bias, torch.zeros(6))
    expected = to_numpy(layer(x_keras, training=False))
    if not channels_last and x.ndim == 4:
        expected = expected.transpose(0, 3, 1, 2)
    assert_rel_close(run_torch(bn, x), expected, RTOL)


@pytest.mark.parametrize("make", [lambda: tb.Dense(6, 4, activation="tanh"), lambda: nn.Linear(6, 4, bias=False)])
def test_dense_round_trip(rng, make):
    target = make()
    layer = keras().layers.Dense(
        4, use_bias=target.bias is not None, activation="tanh" if isinstance(target, tb.Dense) else None
    )
    x = images(rng, 3, 6)
    layer(x)
    random_weights(layer, rng)
    load_keras_weights(target, layer)
    assert_rel_close(run_torch(target, x), to_numpy(layer(x)), RTOL)


def _built(layer, shape):
    layer(np.zeros(shape, np.float32))
    return layer


def _conv(**kwargs):
    return _built(keras().layers.Conv2D(4, 3, **kwargs), (1, 8, 8, 2))


# (Keras layer factory, torch module factory, message)
MISMATCH_CASES = [
    (lambda: _conv(name="k3"), lambda: tb.Conv2d(2, 4, 5), r"'k3'.*\(4, 2, 3, 3\).*\(4, 2, 5, 5\)"),
    (lambda: _conv(strides=2), lambda: tb.Conv2d(2, 4, 3), r"strides=\(2, 2\), torch has \(1, 1\)"),
    (lambda: _conv(dilation_rate=2), lambda: tb.Conv2d(2, 4, 3), r"dilation_rate=\(2, 2\)"),
    (lambda: _conv(padding="same"), lambda: tb.Conv2d(2, 4, 3), r"padding='same', torch has padding='valid'"),
    (lambda: _conv(use_bias=False), lambda: tb.Conv2d(2, 4, 3), r"use_bias=False"),
    (lambda: _conv(), lambda: tb.Conv2d(2, 4, 3, bias=False), r"bias of shape \(4,\).*has none"),
    (
        lambda: _conv(),
        lambda: tb.Conv2d(2, 4, 3, activation="relu"),
        r"activation=.linear., torch has activation ReLU",
    ),
    (
        lambda: _built(keras().layers.DepthwiseConv2D(3, depth_multiplier=2), (1, 8, 8, 4)),
        lambda: tb.DepthwiseConv2d(8, 3),
        r"\(3, 3, 4, 2\) \(kh, kw, C, depth_multiplier\) does not fit .*in_channels=8, depth_multiplier=1",
    ),
    (
        lambda: _built(keras().layers.Dense(3, name="fc"), (1, 5)),
        lambda: tb.Conv2d(5, 3, 1),
        r"(?s)(?=.*Keras 'fc' \(Dense\): no torch Linear)(?=.*torch '<root>' \(Conv2d\): no Keras layer)",
    ),
]


@pytest.mark.parametrize("make_layer, make_module, message", MISMATCH_CASES)
def test_layer_mismatch_raises_and_leaves_module_unchanged(make_layer, make_module, message):
    layer, module = make_layer(), make_module()
    before = snapshot(module)
    with pytest.raises(ValueError, match=message):
        load_keras_weights(module, layer)
    assert_unchanged(module, before)


def test_bad_arguments():
    with pytest.raises(TypeError, match="argument `module`"):
        load_keras_weights("conv", keras().layers.Dense(2))
    with pytest.raises(TypeError, match="keras_layer_or_model_or_path"):
        load_keras_weights(tb.Dense(2, 2), 42)
    with pytest.raises(ValueError, match="has no weights; build it"):
        load_keras_weights(tb.Dense(2, 2), keras().layers.Dense(2))
    with pytest.raises(ValueError, match=r"Expected a \.keras or \.weights\.h5 file"):
        load_keras_weights(tb.Dense(2, 2), __file__)
    with pytest.raises(FileNotFoundError, match="No Keras file"):
        load_keras_weights(tb.Dense(2, 2), "/nonexistent/model.keras")
    with pytest.raises(TypeError, match="argument `keras_model`"):
        from_keras(tb.Dense(2, 2))


# --------------------------------------------------------------------------- whole models


def _mixed_model(seed: int):
    """A Functional model of every weighted kind (and a residual Add), random weights and stats."""
    L = keras().layers
    inp = keras().Input((10, 9, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.BatchNormalization()(x)
    y = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    y = L.SeparableConv2D(8, 3, padding="same")(y)
    x = L.add([x, y])
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(5)(x)
    model = keras().Model(inp, x)
    randomize(model, np.random.default_rng(seed))
    return model


@pytest.fixture(scope="module")
def mixed_models():
    """Two models of the same architecture with different weights: the oracle and a donor."""
    return _mixed_model(1), _mixed_model(2)


def _save(model, tmp_path, kind: str) -> str:
    if kind == "object":
        return model
    if kind == "keras":
        path = str(tmp_path / "model.keras")
        model.save(path)
    else:
        path = str(tmp_path / "model.weights.h5")
        model.save_weights(path)
    return path


@pytest.mark.parametrize("kind", ["object", "keras", "h5"])
def test_whole_model_loading(rng, tmp_path, mixed_models, kind):
    oracle, donor = mixed_models
    module = from_keras(donor).eval()  # same architecture, other weights
    x = images(rng, 2, 3, 10, 9)
    expected = keras_nchw(oracle, x, training=False)
    assert rel_error(run_torch(module, x), expected) > 1e-2
    result = load_keras_weights(module, _save(oracle, tmp_path, kind))
    keras_order = [l.name for l in oracle.layers if l.weights]
    # from_keras names the donor's modules after its layers; a .weights.h5 file does not record
    # the order across layer kinds, so compare the pairs.
    pairs = list(zip(keras_order, [l.name for l in donor.layers if l.weights]))
    if kind == "h5":
        assert sorted(result.loaded) == sorted(pairs)
    else:
        assert result.loaded == pairs
    assert result.missing == result.unexpected == []
    assert_rel_close(run_torch(module, x), expected, RTOL)


def _other_model():
    """Same kinds, but one conv and the BN are wider, and an extra Dense."""
    L = keras().layers
    inp = keras().Input((10, 9, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.BatchNormalization()(x)
    y = L.DepthwiseConv2D(3, depth_multiplier=1, padding="same")(x)
    y = L.SeparableConv2D(16, 3, padding="same")(y)
    x = L.add([x, y])
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(5)(L.Dense(16)(x))
    return keras().Model(inp, x)


@pytest.mark.parametrize("kind", ["object", "keras", "h5"])
def test_other_models_weights_list_every_problem_and_load_nothing(tmp_path, mixed_models, kind):
    module = from_keras(mixed_models[1])
    before = snapshot(module)
    with pytest.raises(ValueError) as info:
        load_keras_weights(module, _save(_other_model(), tmp_path, kind))
    message = str(info.value)
    assert "nothing was loaded, the module is unchanged" in message
    # Every mis-shaped layer is listed, with both names (conv, BN x4 stats, depthwise, separable,
    # dense), and the extra Dense.
    for torch_name in ("'conv2d", "'batch_normalization", "'depthwise_conv2d", "'separable_conv2d", "'dense"):
        assert f"torch {torch_name}" in message
    assert "no torch Linear left to receive it" in message
    assert_unchanged(module, before)


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_truncated_file_raises_and_leaves_module_unchanged(tmp_path, mixed_models, kind):
    path = _save(mixed_models[0], tmp_path, kind)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    module = from_keras(mixed_models[1])
    before = snapshot(module)
    with pytest.raises(ValueError, match="Could not read the Keras"):
        load_keras_weights(module, path)
    assert_unchanged(module, before)


def test_corrupt_keras_archive(tmp_path, mixed_models):
    """A .keras zip whose weights entry is garbage."""
    path = str(tmp_path / "bad.keras")
    with zipfile.ZipFile(_save(mixed_models[0], tmp_path, "keras")) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"\x89HDF garbage" if item.filename.endswith(".h5") else data)
    module = from_keras(mixed_models[1])
    before = snapshot(module)
    with pytest.raises(ValueError, match="Could not read the Keras model file"):
        load_keras_weights(module, path)
    assert_unchanged(module, before)


def test_non_strict_reports_leftovers(mixed_models):
    oracle = mixed_models[0]
    module = nn.Sequential(from_keras(mixed_models[1]), nn.Linear(5, 2))
    before = snapshot(module)
    with pytest.raises(ValueError, match=r"torch '1' \(Linear\): no Keras layer of its kind"):
        load_keras_weights(module, oracle)
    assert_unchanged(module, before)  # every other layer fitted, and none was loaded
    result = load_keras_weights(module, oracle, strict=False)
    assert result.missing == ["1"]
    assert result.unexpected == []
    assert len(result.loaded) == len([l for l in oracle.layers if l.weights])


def test_batchnorm_without_scale_in_h5_needs_the_model(tmp_path, rng):
    L = keras().layers
    model = keras().Sequential([keras().Input((4,)), L.Dense(3), L.BatchNormalization(scale=False)])
    randomize(model, rng)
    path = _save(model, tmp_path, "h5")
    module = from_keras(model)
    with pytest.raises(ValueError, match="cannot tell whether gamma"):
        load_keras_weights(module, path)
    load_keras_weights(module, model)  # the model object knows its config


def test_unsupported_weighted_keras_layer_is_listed(rng):
    L = keras().layers
    model = keras().Sequential([keras().Input((4,)), L.Dense(3), L.PReLU(name="ln")])
    with pytest.raises(ValueError, match=r"Keras 'ln' \(PReLU\): layer kind not supported"):
        load_keras_weights(tb.Dense(4, 3), model)


# ------------------------------------------------- a converted module reloads from every source


def _flatten_dense():
    L = keras().layers
    inp = keras().Input((3, 4, 5))
    return keras().Model(inp, L.Dense(4, name="head")(L.Flatten()(L.Conv2D(3, 1)(inp))))


def _flatten_bn_dense():
    L = keras().layers
    inp = keras().Input((3, 4, 5))
    x = L.BatchNormalization()(L.Flatten()(L.Conv2D(3, 1)(inp)))
    return keras().Model(inp, L.Dense(4, name="head")(L.Dropout(0.2)(x)))


def _pointwise_dense_and_grouped_conv():
    L = keras().layers
    inp = keras().Input((5, 6, 4))
    x = L.Conv2D(8, 3, groups=4, padding="same", name="grouped")(inp)  # groups == C_in
    return keras().Model(inp, L.Dense(3, name="pointwise")(x))  # Dense on a feature map


def _nested():
    L = keras().layers
    stem = keras().Sequential([keras().Input((6, 6, 3)), L.Conv2D(4, 2, 2), L.LayerNormalization()], name="stem")
    inp = keras().Input((6, 6, 3))
    x = L.BatchNormalization()(stem(inp))
    return keras().Model(inp, L.Dense(2)(L.GlobalAveragePooling2D()(L.Conv2D(4, 1)(x))))


@pytest.mark.parametrize("make", [_flatten_dense, _flatten_bn_dense, _pointwise_dense_and_grouped_conv, _nested])
@pytest.mark.parametrize("kind", ["object", "keras", "h5"])
def test_converted_module_reloads_from_every_source(tmp_path, make, kind):
    """load_keras_weights(from_keras(km), km) restores every weight, with from_keras' Flatten row
    permutation, for a model object, a .keras file and a .weights.h5 file (nested models too)."""
    model = make()
    randomize_all(model, np.random.default_rng(1))
    module = from_keras(model)
    expected = snapshot(module)
    x = images(np.random.default_rng(2), 2, *module_input_shape(model))
    reference = run_torch(module, x)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    assert rel_error(run_torch(module, x), reference) > 1e-2  # the load has something to restore
    load_keras_weights(module, _save(model, tmp_path, kind))
    after = snapshot(module)
    assert all(torch.equal(after[k], v) if isinstance(v, torch.Tensor) else after[k] == v for k, v in expected.items())
    assert_rel_close(run_torch(module, x), keras_nchw(model, x), RTOL)


def module_input_shape(model):
    h, w, c = model.inputs[0].shape[1:]
    return c, h, w


class _Rewritten(nn.Module):
    """A converted model rewritten by hand (as readable source would be): the same submodules,
    called from a plain forward."""

    def __init__(self, converted: nn.Module) -> None:
        super().__init__()
        for name, child in converted.named_children():
            setattr(self, name, child)
        self.order = [str(n.target) for n in converted.graph.nodes if n.op == "call_module"]

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return x


def test_a_rewritten_converted_module_keeps_the_flatten_permutation(tmp_path):
    model = _flatten_bn_dense()
    randomize_all(model, np.random.default_rng(1))
    rewritten = _Rewritten(from_keras(_flatten_bn_dense()))  # another model's weights
    rewritten.eval()
    load_keras_weights(rewritten, _save(model, tmp_path, "h5"))
    x = images(np.random.default_rng(2), 2, *module_input_shape(model))
    assert_rel_close(run_torch(rewritten, x), keras_nchw(model, x), RTOL)
