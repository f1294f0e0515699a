"""The converter table: every Keras layer and operation ``from_keras`` supports, each in a small
model run by Keras 3 (torch backend) and by the converted module, at 1e-5 relative, after checking
that another input moves Keras' output far more than that (the check can fail).

Rows cover channels_last and channels_first models, every config that changes numerics, and
vector, sequence and image tensors; each converted module is also scripted.
"""
import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import assert_rel_close, check_scripted, images, keras, randomize_all, to_numpy

from_keras = tb.interop.keras.from_keras
ACTIVATION_NAMES = tb.interop.keras.activations.ACTIVATION_NAMES
RTOL = 1e-5


def _model(shape, build, channels_first=False):
    """A Functional model: ``build(layers, ops, x)`` applied to an input of Keras ``shape``."""
    inp = keras().Input(shape)
    return keras().Model(inp, build(keras().layers, keras().ops, inp)), channels_first


def _to_keras(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 and not channels_first else x


def _from_keras_layout(y: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 and not channels_first else y


def check_layer_model(model, channels_first: bool, rng: np.random.Generator, rtol: float = RTOL) -> nn.Module:
    """from_keras(model) matches Keras on a random input (torch layout); returns the module."""
    randomize_all(model, rng)
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) == 3 and not channels_first:
        shape = (shape[2], shape[0], shape[1])
    x, other = images(rng, 3, *shape), images(rng, 3, *shape)
    module = from_keras(model)
    assert not module.training
    expected = _from_keras_layout(to_numpy(model(_to_keras(x, channels_first))), channels_first)
    moved = _from_keras_layout(to_numpy(model(_to_keras(other, channels_first))), channels_first)
    scale = float(np.abs(expected).max())
    assert float(np.abs(moved - expected).max()) > 100 * rtol * scale, "the oracle is insensitive"
    with torch.no_grad():
        actual = module(torch.from_numpy(x)).numpy()
    assert_rel_close(actual, expected, rtol)
    return module


# id -> (Keras input shape (no batch), build(L, ops, x), channels_first)
LAYER_ROWS = {
    "conv2d-groups-eq-channels": ((9, 8, 6), lambda L, o, x: L.Conv2D(12, 3, groups=6, padding="same")(x), False),
    "conv2d-groups2-dilated": ((11, 10, 4), lambda L, o, x: L.Conv2D(6, 3, groups=2, dilation_rate=2)(x), False),
    "conv2d-strided-same-softmax": ((9, 10, 3), lambda L, o, x: L.Conv2D(5, 4, 2, "same", activation="softmax")(x), False),
    "conv2d-channels-first": (
        (3, 9, 8), lambda L, o, x: L.Conv2D(5, 3, 2, "same", data_format="channels_first", activation="softmax")(x), True
    ),
    "depthwise-channels-first": (
        (4, 9, 8), lambda L, o, x: L.DepthwiseConv2D(3, depth_multiplier=2, data_format="channels_first")(x), True
    ),
    "separable-channels-first": (
        (4, 9, 8), lambda L, o, x: L.SeparableConv2D(6, 3, padding="same", data_format="channels_first")(x), True
    ),
    "conv-transpose-valid": ((5, 6, 3), lambda L, o, x: L.Conv2DTranspose(4, 3, strides=2)(x), False),
    "conv-transpose-same-odd-kernel": ((5, 6, 3), lambda L, o, x: L.Conv2DTranspose(4, 3, 2, "same")(x), False),
    "conv-transpose-output-padding": (
        (5, 6, 3), lambda L, o, x: L.Conv2DTranspose(4, 3, 2, "valid", output_padding=1)(x), False
    ),
    "conv-transpose-same-even-kernel": ((5, 6, 3), lambda L, o, x: L.Conv2DTranspose(4, 4, 2, "same")(x), False),
    "conv-transpose-same-stride1": ((5, 6, 3), lambda L, o, x: L.Conv2DTranspose(4, 3, 1, "same", activation="relu")(x), False),
    "conv-transpose-channels-first": (
        (3, 5, 6), lambda L, o, x: L.Conv2DTranspose(4, 3, 2, data_format="channels_first")(x), True
    ),
    "batchnorm-channels-first": (
        (3, 6, 5),
        lambda L, o, x: L.BatchNormalization(axis=1, epsilon=0.01)(L.Conv2D(4, 1, data_format="channels_first")(x)),
        True,
    ),
    "batchnorm-sequence": ((24,), lambda L, o, x: L.BatchNormalization()(L.Reshape((6, 4))(x)), False),
    "batchnorm-sequence-axis1": (
        (24,), lambda L, o, x: L.BatchNormalization(axis=1, scale=False)(L.Reshape((6, 4))(x)), False
    ),
    "layernorm-channels": ((5, 6, 4), lambda L, o, x: L.LayerNormalization(epsilon=1e-6)(x), False),
    "layernorm-channels-no-scale": ((5, 6, 4), lambda L, o, x: L.LayerNormalization(scale=False)(x), False),
    "layernorm-vector": ((7,), lambda L, o, x: L.LayerNormalization(center=False)(x), False),
    "layernorm-sequence-two-axes": ((20,), lambda L, o, x: L.LayerNormalization(axis=[1, 2])(L.Reshape((5, 4))(x)), False),
    "layernorm-channels-first-trailing-axes": (
        (3, 5, 4), lambda L, o, x: L.LayerNormalization(axis=[1, 2, 3])(L.Conv2D(3, 1, data_format="channels_first")(x)),
        True,
    ),
    "normalization-adapted": ((5, 6, 3), lambda L, o, x: L.Normalization()(x), False),
    "normalization-constants-invert": (
        (5, 6, 3), lambda L, o, x: L.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.5, 2.0], invert=True)(x), False
    ),
    "rescaling-per-channel": ((5, 6, 3), lambda L, o, x: L.Rescaling([0.5, 2.0, -1.0], offset=[0.1, 0.2, 0.3])(x), False),
    "rescaling-vector": ((7,), lambda L, o, x: L.Rescaling(1.0 / 255, offset=-0.5)(x), False),
    "dense-sequence": ((24,), lambda L, o, x: L.Dense(3, activation="softmax")(L.Reshape((4, 6))(x)), False),
    "dense-channels-first-map": ((3, 5, 6), lambda L, o, x: L.Dense(4)(L.Conv2D(2, 1, data_format="channels_first")(x)), True),
    "dense-on-map": ((5, 6, 3), lambda L, o, x: L.Dense(4, activation="log_softmax")(x), False),
    "relu-threshold-free": ((7,), lambda L, o, x: L.ReLU(max_value=0.5)(x), False),
    "leaky-relu": ((5, 6, 3), lambda L, o, x: L.LeakyReLU(0.3)(x), False),
    "elu": ((7,), lambda L, o, x: L.ELU(0.7)(x), False),
    "softmax-height-axis": ((5, 6, 3), lambda L, o, x: L.Softmax(axis=1)(x), False),
    "identity": ((7,), lambda L, o, x: L.Identity()(L.Dense(3)(x)), False),
    "merges": (
        (5, 6, 3),
        lambda L, o, x: L.Concatenate()([
            L.Add()([x, x, x]), L.Subtract()([x, L.Conv2D(3, 1)(x)]), L.Multiply()([x, x]),
            L.Average()([x, L.Conv2D(3, 1)(x)]), L.Maximum()([x, L.Conv2D(3, 1)(x)]),
            L.Minimum()([x, L.Conv2D(3, 1)(x)]),
        ]),
        False,
    ),
    "concatenate-height": ((5, 6, 3), lambda L, o, x: L.Concatenate(axis=1)([x, L.Conv2D(3, 1)(x)]), False),
    "concatenate-channels-first": (
        (3, 5, 6), lambda L, o, x: L.Concatenate(axis=1)([x, L.Conv2D(2, 1, data_format="channels_first")(x)]), True
    ),
    "broadcast-multiply": (
        (5, 6, 3), lambda L, o, x: L.Multiply()([x, L.Reshape((1, 1, 3))(L.GlobalAveragePooling2D()(x))]), False
    ),
    "ops-arithmetic": (
        (5, 6, 3),
        lambda L, o, x: o.divide(o.subtract(3.0, x * 0.5 + 1.0), o.add(o.multiply(x, x), 2.0)) - x / 4.0,
        False,
    ),
    "ops-activations": (
        (5, 6, 3),
        lambda L, o, x: L.Concatenate()([
            o.gelu(x, approximate=True), o.gelu(x, approximate=False), o.softmax(x, axis=1), o.relu6(x),
            o.hard_sigmoid(x), o.silu(x), o.leaky_relu(x, 0.1), o.elu(x, 0.5), o.sigmoid(x), o.tanh(x),
        ]),
        False,
    ),
    "ops-maximum": ((7,), lambda L, o, x: o.maximum(x, L.Dense(7)(x)) + o.minimum(x, L.Dense(7)(x)), False),
    "max-pool-same-uneven": ((6, 7, 3), lambda L, o, x: L.MaxPooling2D(3, 2, "same")(x), False),
    "avg-pool-valid-channels-first": (
        (3, 7, 6), lambda L, o, x: L.AveragePooling2D(2, data_format="channels_first")(x), True
    ),
    "avg-pool-same-even": ((5, 7, 3), lambda L, o, x: L.AveragePooling2D(3, 1, "same")(x), False),
    "global-max-keepdims": ((5, 6, 3), lambda L, o, x: L.GlobalMaxPooling2D(keepdims=True)(x), False),
    "global-avg-channels-first": (
        (3, 5, 6), lambda L, o, x: L.GlobalAveragePooling2D(data_format="channels_first")(x), True
    ),
    "flatten-sequence-channels-first": (
        (20,), lambda L, o, x: L.Flatten(data_format="channels_first")(L.Reshape((4, 5))(x)), False
    ),
    "flatten-channels-first-model": (
        (3, 4, 5), lambda L, o, x: L.Dense(3)(L.Flatten()(L.Conv2D(2, 1, data_format="channels_first")(x))), True
    ),
    "reshape-to-sequence": ((4, 5, 3), lambda L, o, x: L.Reshape((20, 3))(x), False),
    "reshape-map-to-map": ((4, 6, 3), lambda L, o, x: L.Reshape((3, 8, 3))(x), False),
    "reshape-vector-to-map": ((12,), lambda L, o, x: L.Conv2D(2, 1)(L.Reshape((2, 2, 3))(x)), False),
    "reshape-unknown-dim": ((4, 6, 3), lambda L, o, x: L.Reshape((-1, 6))(x), False),
    "permute-map": ((4, 5, 3), lambda L, o, x: L.Permute((2, 1, 3))(x), False),
    "permute-channels-to-height": ((4, 5, 3), lambda L, o, x: L.Permute((3, 1, 2))(x), False),
    "permute-sequence": ((20,), lambda L, o, x: L.Permute((2, 1))(L.Reshape((4, 5))(x)), False),
    "zero-padding-channels-first": (
        (3, 4, 5), lambda L, o, x: L.ZeroPadding2D(((1, 2), (0, 3)), data_format="channels_first")(x), True
    ),
    "cropping": ((7, 8, 3), lambda L, o, x: L.Cropping2D(((1, 2), (3, 0)))(x), False),
    "upsampling-nearest": ((4, 5, 3), lambda L, o, x: L.UpSampling2D((2, 3))(x), False),
    "upsampling-bilinear": ((4, 5, 3), lambda L, o, x: L.UpSampling2D((3, 2), interpolation="bilinear")(x), False),
    "dropouts-in-eval": (
        (6, 5, 4), lambda L, o, x: L.SpatialDropout2D(0.3)(L.Dropout(0.5)(L.Dropout(0.2, noise_shape=(None, 1, 1, 1))(x))),
        False,
    ),
}


@pytest.mark.parametrize("row", list(LAYER_ROWS))
@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
def test_layer_matches_keras(rng, row):
    shape, build, channels_first = LAYER_ROWS[row]
    model, _ = _model(shape, build, channels_first)
    module = check_layer_model(model, channels_first, rng)
    x = torch.from_numpy(images(rng, 2, *module_input_shape(model, channels_first)))
    check_scripted(module, (x,))


def module_input_shape(model, channels_first: bool):
    shape = tuple(model.inputs[0].shape[1:])
    return (shape[2], shape[0], shape[1]) if len(shape) == 3 and not channels_first else shape


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_every_activation(rng, name):
    """Each built-in Keras activation with an exact torch form, on the channels of a map (softmax,
    log_softmax and glu act on Keras' last axis: the converted model's dim 1)."""
    model, _ = _model((4, 5, 6), lambda L, o, x: L.Activation(name)(x))
    check_layer_model(model, False, rng)


@pytest.mark.parametrize("name", ["sparse_plus", "sparsemax", "squareplus", "sparse_sigmoid"])
def test_activation_without_exact_torch_form_is_refused(name):
    model, _ = _model((4,), lambda L, o, x: L.Activation(name, name="act")(x))
    with pytest.raises(ValueError, match=rf"layer 'act' of class Activation: activation '{name}' has no exact torch form"):
        from_keras(model)


def test_layer_normalization_of_channels_first_maps_follows_keras_rule(rng):
    """LayerNormalization(axis=1) of a channels_first map normalises the channels, as Keras documents
    and its TensorFlow/JAX backends compute; Keras 3.15's torch backend hands F.layer_norm the wrong
    dims there (it normalises the last axis instead), so NumPy is the oracle."""
    model, _ = _model((4, 5, 4), lambda L, o, x: L.LayerNormalization(axis=1, epsilon=1e-3)(
        L.Conv2D(4, 1, data_format="channels_first")(x)), True)
    randomize_all(model, rng)
    x = images(rng, 2, 4, 5, 4)
    conv = to_numpy(model.layers[1](x))
    gamma, beta = (to_numpy(w) for w in model.layers[2].weights)
    mean, var = conv.mean(axis=1, keepdims=True), conv.var(axis=1, keepdims=True)
    reference = (conv - mean) / np.sqrt(var + 1e-3) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)
    with torch.no_grad():
        actual = from_keras(model)(torch.from_numpy(x)).numpy()
    assert_rel_close(actual, reference, RTOL)
    assert np.abs(to_numpy(model(x)) - reference).max() > 0.1 * np.abs(reference).max()
