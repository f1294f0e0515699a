"""``from_keras``: Keras Sequential and Functional models converted to torch modules.

Keras 3 on the torch backend is the oracle, at 1e-5 relative, after checking that the comparison
could fail.
"""
import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    book_separable_model,
    calibrate_bn,
    check_scripted,
    images,
    keras,
    keras_nchw,
    nchw_to_nhwc,
    randomize,
    rel_error,
    run_keras_nchw,
    run_torch,
    to_numpy,
)

# The README's path: `import torchblocks as tb`, then `tb.interop.keras`.
from_keras = tb.interop.keras.from_keras
load_keras_weights = tb.interop.keras.load_keras_weights

RTOL = 1e-5


def _check_conversion(model, x: np.ndarray, rtol: float = RTOL, training: bool = False) -> nn.Module:
    """from_keras(model) reproduces model on x (NCHW); returns the converted module."""
    module = from_keras(model)
    module.train(training)
    expected = keras_nchw(model, x, training=training)
    assert_rel_close(run_torch(module, x), expected, rtol)
    return module


def _identity_block():
    L = keras().layers
    x = keras().Input((9, 7, 128))
    y = L.Conv2D(128, 3, activation="relu", padding="same")(x)
    y = L.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = L.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = L.add([y, x])
    return keras().Model(x, y)


def _downsampling_block():
    L = keras().layers
    x = keras().Input((10, 8, 64))
    y = L.Conv2D(128, 3, activation="relu", padding="same")(x)
    y = L.Conv2D(128, 3, activation="relu", padding="same")(y)
    y = L.MaxPooling2D(2, strides=2)(y)
    residual = L.Conv2D(128, 1, strides=2, padding="same")(x)
    y = L.add([y, residual])
    return keras().Model(x, y)


def _conv_bn():
    L = keras().layers
    model = keras().Sequential([keras().Input((9, 8, 3))])
    model.add(L.Conv2D(32, 3, activation="relu"))
    model.add(L.BatchNormalization())
    return model


def _dense_bn():
    L = keras().layers
    model = keras().Sequential([keras().Input((20,))])
    model.add(L.Dense(32, activation="relu"))
    model.add(L.BatchNormalization())
    return model


# The book's snippets: (Keras model factory, NCHW/(N, F) input shape, torchblocks block factory).
BOOK_SNIPPETS = [
    (_identity_block, (2, 128, 9, 7), lambda: tb.IdentityResidualBlock(128)),
    (_downsampling_block, (2, 64, 10, 8), lambda: tb.DownsamplingResidualBlock(64, 128)),
    (_conv_bn, (4, 3, 9, 8), lambda: tb.ConvBN(3, 32, 3)),
    (_dense_bn, (6, 20), lambda: tb.DenseBN(20, 32)),
]


@pytest.mark.parametrize("make_model, shape, make_block", BOOK_SNIPPETS)
def test_book_snippets(rng, make_model, shape, make_block):
    """from_keras reproduces the snippet, and so does the ready-made torchblocks block after
    load_keras_weights; BN statistics come from a real batch."""
    model = make_model()
    randomize(model, rng)
    x = images(rng, *shape)
    calibrate_bn(model, x if x.ndim == 2 else nchw_to_nhwc(x))
    x = images(rng, *shape)
    _check_conversion(model, x)
    block = make_block().eval()
    load_keras_weights(block, model)
    assert_rel_close(run_torch(block, x), keras_nchw(model, x, training=False), RTOL)


@pytest.mark.parametrize("make_model, shape", [(_conv_bn, (4, 3, 9, 8)), (_dense_bn, (6, 20))])
def test_batchnorm_training_mode(rng, make_model, shape):
    model = make_model()
    randomize(model, rng)
    _check_conversion(model, images(rng, *shape), training=True)


def _random_separable_convnet(rng: np.random.Generator):
    model = book_separable_model()  # verbatim, softmax included
    randomize(model, rng)
    # Small logits keep the softmax out of saturation, where every input gives the same one-hot.
    last = model.layers[-1]
    last.kernel.assign(last.kernel * 0.05)
    return model


# torch.fx.GraphModule's own __init__ triggers this TorchScript warning when scripted.
@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_book_separable_model(rng):
    model = _random_separable_convnet(rng)
    x = images(rng, 2, 3, 64, 64)
    module = _check_conversion(model, x)
    probabilities = run_torch(module, x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)  # the softmax is kept
    assert rel_error(probabilities[0], probabilities[1]) > 100 * RTOL  # the oracle is sensitive
    check_scripted(module, (torch.from_numpy(x),))


def test_book_separable_model_into_separable_convnet(rng):
    """tb.models.SeparableConvNet returns logits: softmax(logits) is the Keras model's output."""
    models = pytest.importorskip("torchblocks.models")
    model = _random_separable_convnet(rng)
    x = images(rng, 2, 3, 64, 64)
    net = models.SeparableConvNet(3, 10).eval()
    load_keras_weights(net, model)
    probabilities = torch.softmax(torch.from_numpy(run_torch(net, x)), dim=1).numpy()
    assert_rel_close(probabilities, keras_nchw(model, x), RTOL)


def _flatten_model(tail: str):
    L = keras().layers
    inp = keras().Input((5, 6, 4))
    x = L.Conv2D(3, 3, padding="same", activation="relu")(inp)
    x = L.Flatten()(x)
    if tail == "flatten":
        return keras().Model(inp, x)
    if tail == "dropout_bn_dense":
        x = L.BatchNormalization()(L.Dropout(0.5)(x))
    return keras().Model(inp, L.Dense(7)(x))


@pytest.mark.parametrize("tail", ["dense", "dropout_bn_dense", "flatten"])
@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_flatten_dense_feature_order(rng, tail):
    """Keras flattens (h, w, c): the converted Dense rows are permuted (or, where the flattened
    features are an output, they are flattened in Keras order)."""
    model = _flatten_model(tail)
    randomize(model, rng)
    x = images(rng, 2, 4, 5, 6)
    module = _check_conversion(model, x)
    if tail == "dense":
        # The naive port (torch's (c, h, w) flatten, unpermuted kernel) is wrong: the check can fail.
        conv_out = torch.from_numpy(run_keras_nchw(model.layers[1], x))
        kernel, bias = (torch.from_numpy(to_numpy(w)) for w in model.layers[3].weights)
        naive = (conv_out.flatten(1) @ kernel + bias).numpy()
        assert rel_error(naive, run_torch(module, x)) > 1e-2
    check_scripted(module, (torch.from_numpy(x),))


def _kitchen_sink():
    """The remaining supported layers, and a nested Sequential."""
    L = keras().layers
    inp = keras().Input((11, 10, 3), name="image")
    x = L.ZeroPadding2D(((1, 0), (2, 1)))(inp)
    x = L.Conv2D(6, 4, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization(center=False)(x)
    x = L.ReLU(max_value=6.0)(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6")(x)
    x = L.Dense(5, activation="relu", name="pixelwise")(x)  # on a feature map: on its channels
    x = L.AveragePooling2D(2, padding="valid")(x)
    x = L.Activation("tanh")(L.ReLU(negative_slope=0.1)(x))
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    x = keras().Sequential([L.Conv2D(4, 1, name="nested_conv"), L.Dropout(0.1)])(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    return keras().Model(inp, L.Dense(3)(x))


@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_other_supported_layers(rng):
    model = _kitchen_sink()
    randomize(model, rng)
    x = images(rng, 2, 3, 11, 10)
    module = _check_conversion(model, x)
    check_scripted(module, (torch.from_numpy(x),))
    assert isinstance(module.pixelwise, tb.interop.keras.layers.PointwiseDense)


def test_unsupported_layer_raises():
    L = keras().layers
    inp = keras().Input((8, 8, 3))
    x = L.Conv2D(4, 3)(inp)
    model = keras().Model(inp, L.Lambda(lambda t: t * 2.0, name="double")(x))
    with pytest.raises(ValueError, match=r"layer 'double' of class Lambda: a Lambda layer runs arbitrary Python code"):
        from_keras(model)


def test_unbuilt_sequential_raises():
    with pytest.raises(ValueError, match="has no input shape"):
        from_keras(keras().Sequential([keras().layers.Dense(2)]))


def test_converted_module_registers_layers_in_keras_order():
    model = _downsampling_block()
    module = from_keras(model)
    names = [name for name, _ in module.named_children()]
    assert names == [l.name for l in model.layers if not isinstance(l, keras().layers.InputLayer)]
