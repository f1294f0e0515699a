"""Residual, Projection and the book's residual blocks against the same graphs in Keras' functional API."""
import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    check_scripted,
    copy_batchnorm,
    copy_conv,
    copy_dense,
    keras,
    random_weights,
    run_keras_nchw,
    run_torch,
    to_numpy,
)


def _randomize(k_model, rng) -> list:
    """Random weights for every weighted layer of a Keras model; returns those layers in order."""
    weighted = [layer for layer in k_model.layers if layer.weights]
    for layer in weighted:
        random_weights(layer, rng)
    return weighted


def _input(rng, channels, size):
    return rng.normal(size=(2, channels, *size)).astype(np.float32)


@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_identity_residual_block_matches_keras(size, rng):
    layers, channels = keras().layers, 4
    inputs = keras().Input(shape=(*size, channels))
    y = inputs
    for _ in range(3):
        y = layers.Conv2D(channels, 3, activation="relu", padding="same")(y)
    k_model = keras().Model(inputs, layers.add([y, inputs]))
    k_convs = _randomize(k_model, rng)

    block = tb.IdentityResidualBlock(channels)
    assert block.identity_shortcut and isinstance(block.shortcut, nn.Identity)
    for k_conv, conv in zip(k_convs, (block.body.conv1, block.body.conv2, block.body.conv3)):
        copy_conv(k_conv, conv)
    x = _input(rng, channels, size)
    assert_rel_close(run_torch(block, x), run_keras_nchw(k_model, x))


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_downsampling_residual_block_matches_keras(size, rng):
    layers, c_in, channels = keras().layers, 3, 5
    inputs = keras().Input(shape=(*size, c_in))
    conv1 = layers.Conv2D(channels, 3, activation="relu", padding="same")
    conv2 = layers.Conv2D(channels, 3, activation="relu", padding="same")
    shortcut = layers.Conv2D(channels, 1, strides=2, padding="same")
    y = layers.MaxPooling2D(2, strides=2)(conv2(conv1(inputs)))
    k_model = keras().Model(inputs, layers.add([y, shortcut(inputs)]))
    _randomize(k_model, rng)

    block = tb.DownsamplingResidualBlock(c_in, channels)
    assert not block.identity_shortcut
    copy_conv(conv1, block.body.conv1)
    copy_conv(conv2, block.body.conv2)
    copy_conv(shortcut, block.shortcut.proj)
    x = _input(rng, c_in, size)
    out = run_torch(block, x)
    assert out.shape == (2, channels, size[0] // 2, size[1] // 2)
    assert_rel_close(out, run_keras_nchw(k_model, x))
    assert sum(p.numel() for p in block.parameters()) == k_model.count_params()


def test_book_snippet_projection_on_channel_change_matches_keras(rng):
    """Book: x = Conv2D(64, 3, relu, same)(x); residual = Conv2D(64, 1)(residual); add."""
    layers, c_in, c_out, size = keras().layers, 3, 6, (9, 8)
    inputs = keras().Input(shape=(*size, c_in))
    body = layers.Conv2D(c_out, 3, activation="relu", padding="same")
    shortcut = layers.Conv2D(c_out, 1)
    k_model = keras().Model(inputs, layers.add([body(inputs), shortcut(inputs)]))
    _randomize(k_model, rng)

    module = tb.Residual(tb.Conv2d(c_in, c_out, 3, padding="same", activation="relu"), tb.Projection(c_in, c_out))
    copy_conv(body, module.body)
    copy_conv(shortcut, module.shortcut.proj)
    x = _input(rng, c_in, size)
    assert_rel_close(run_torch(module, x), run_keras_nchw(k_model, x))


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_book_snippet_pooling_block_matches_keras(size, rng):
    """Book: Conv2D(64, 3, relu, same); MaxPooling2D(2, padding='same'); residual Conv2D(64, 1, strides=2)."""
    layers, c_in, c_out = keras().layers, 3, 6
    inputs = keras().Input(shape=(*size, c_in))
    body = layers.Conv2D(c_out, 3, activation="relu", padding="same")
    shortcut = layers.Conv2D(c_out, 1, strides=2)
    y = layers.MaxPooling2D(2, padding="same")(body(inputs))
    k_model = keras().Model(inputs, layers.add([y, shortcut(inputs)]))
    _randomize(k_model, rng)

    module = tb.Residual(
        nn.Sequential(tb.Conv2d(c_in, c_out, 3, padding="same", activation="relu"), tb.MaxPool2d(2, padding="same")),
        tb.Projection(c_in, c_out, stride=2),
    )
    copy_conv(body, module.body[0])
    copy_conv(shortcut, module.shortcut.proj)
    x = _input(rng, c_in, size)
    out = run_torch(module, x)
    assert out.shape == (2, c_out, -(-size[0] // 2), -(-size[1] // 2))
    assert_rel_close(out, run_keras_nchw(k_model, x))


def test_projection_with_norm_matches_keras_conv_bn(rng):
    layers, c_in, c_out, size = keras().layers, 4, 6, (7, 8)
    inputs = keras().Input(shape=(*size, c_in))
    conv = layers.Conv2D(c_out, 1, strides=2, padding="same", use_bias=False)
    bn = layers.BatchNormalization(epsilon=1e-5)
    k_model = keras().Model(inputs, bn(conv(inputs)))
    _randomize(k_model, rng)

    proj = tb.Projection(c_in, c_out, stride=2, norm=True).eval()
    assert proj.proj.bias is None and isinstance(proj.bn, tb.BatchNorm)
    copy_conv(conv, proj.proj)
    copy_batchnorm(bn, proj.bn)
    x = _input(rng, c_in, size)
    assert_rel_close(run_torch(proj, x), run_keras_nchw(k_model, x, training=False))
    assert sum(p.numel() for p in proj.parameters()) + 2 * c_out == k_model.count_params()


def test_vector_projection_equals_keras_dense_shortcut(rng):
    layers = keras().layers
    inputs = keras().Input(shape=(6,))
    body = layers.Dense(8, activation="relu")
    shortcut = layers.Dense(8)
    k_model = keras().Model(inputs, layers.add([body(inputs), shortcut(inputs)]))
    _randomize(k_model, rng)

    module = tb.Residual(tb.Dense(6, 8, activation="relu"), tb.Projection(6, 8, vector=True))
    assert isinstance(module.shortcut.proj, tb.Dense)
    copy_dense(body, module.body)
    copy_dense(shortcut, module.shortcut.proj)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    assert_rel_close(run_torch(module, x), to_numpy(k_model(x)))


def test_identity_and_projection_shortcuts():
    x = torch.randn(2, 4, 6, 6)
    body = tb.Conv2d(4, 4, 3, padding="same")
    identity = tb.Residual(body)
    assert identity.identity_shortcut and isinstance(identity.shortcut, nn.Identity)
    torch.testing.assert_close(identity(x), body(x) + x, rtol=0, atol=0)

    proj = tb.Projection(4, 8, stride=2)
    assert tuple(proj.proj.weight.shape) == (8, 4, 1, 1) and proj.proj.stride == (2, 2)
    projected = tb.Residual(tb.Conv2d(4, 8, 3, 2, "same"), proj)
    assert not projected.identity_shortcut
    assert tuple(projected(x).shape) == (2, 8, 3, 3)


def test_shape_mismatch_names_both_shapes_and_suggests_projection():
    block = tb.Residual(tb.Conv2d(4, 8, 3, padding="same"))
    with pytest.raises(ValueError, match=r"\[2, 8, 6, 6\].*\[2, 4, 6, 6\].*Projection"):
        block(torch.randn(2, 4, 6, 6))


def test_residual_never_broadcasts():
    # (N, C, 1, 1) + (N, C, H, W) would broadcast silently in plain torch.
    with pytest.raises(ValueError, match=r"\[2, 4, 1, 1\].*\[2, 4, 6, 6\]"):
        tb.Residual(nn.AdaptiveAvgPool2d(1))(torch.randn(2, 4, 6, 6))


BAD_RESIDUAL_ARGS = [
    (lambda: tb.Residual(None), TypeError, "body"),
    (lambda: tb.Residual(lambda x: x), TypeError, "body"),
    (lambda: tb.Residual(nn.Identity(), shortcut="proj"), TypeError, "shortcut"),
    (lambda: tb.Projection(0, 4), ValueError, "in_channels"),
    (lambda: tb.Projection(4, 0), ValueError, "out_channels"),
    (lambda: tb.Projection(4, 8, stride=0), ValueError, "stride"),
    (lambda: tb.Projection(4, 8, norm=1), TypeError, "norm"),
    (lambda: tb.Projection(4, 8, stride=2, vector=True), ValueError, "stride"),
    (lambda: tb.IdentityResidualBlock(0), ValueError, "channels"),
    (lambda: tb.DownsamplingResidualBlock(3, channels=-1), ValueError, "channels"),
]


@pytest.mark.parametrize("make, error, name", BAD_RESIDUAL_ARGS)
def test_residual_modules_reject_bad_arguments(make, error, name):
    with pytest.raises(error, match=f"`{name}`.*Received"):
        make()


SCRIPTED_RESIDUALS = [
    ("identity", lambda: tb.Residual(tb.Conv2d(3, 3, 3, padding="same")), (2, 3, 6, 7)),
    ("projection", lambda: tb.Residual(tb.Conv2d(3, 5, 3, 2, "same"), tb.Projection(3, 5, 2, norm=True)), (2, 3, 7, 6)),
    ("vector", lambda: tb.Residual(tb.Dense(3, 4, activation="relu"), tb.Projection(3, 4, vector=True)), (5, 3)),
    ("identity-block", lambda: tb.IdentityResidualBlock(4), (1, 4, 5, 6)),
    ("downsampling-block", lambda: tb.DownsamplingResidualBlock(3, 4), (1, 3, 6, 8)),
]


@pytest.mark.parametrize("make, shape", [c[1:] for c in SCRIPTED_RESIDUALS], ids=[c[0] for c in SCRIPTED_RESIDUALS])
def test_residual_modules_script_and_round_trip(make, shape):
    check_scripted(make(), (torch.randn(shape),))
