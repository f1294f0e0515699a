"""Dense against Keras 3 Dense."""
import numpy as np
import pytest
import torch

import torchblocks as tb
from keras_oracle import assert_rel_close, check_scripted, copy_dense, keras, random_weights, run_torch, to_numpy

# (input shape, activation, bias): Keras Dense acts on the last axis of any rank.
DENSE_CASES = [
    ((5, 6), None, True),
    ((5, 6), "relu", True),
    ((5, 6), "sigmoid", False),
    ((2, 7, 6), "gelu", True),
    ((2, 3, 4, 6), "softplus", True),
]


@pytest.mark.parametrize("shape, activation, bias", DENSE_CASES)
def test_dense_matches_keras(shape, activation, bias, rng):
    k_layer = keras().layers.Dense(4, activation=activation, use_bias=bias)
    k_layer.build(shape)
    random_weights(k_layer, rng)
    layer = tb.Dense(6, 4, bias, activation=activation)
    copy_dense(k_layer, layer)
    x = rng.normal(size=shape).astype(np.float32)
    assert_rel_close(run_torch(layer, x), to_numpy(k_layer(x)))


@pytest.mark.parametrize("in_features, out_features, bias", [(6, 4, True), (128, 10, True), (3, 7, False)])
def test_dense_parameter_count_equals_keras(in_features, out_features, bias):
    k_layer = keras().layers.Dense(out_features, use_bias=bias)
    k_layer.build((1, in_features))
    layer = tb.Dense(in_features, out_features, bias)
    expected = in_features * out_features + (out_features if bias else 0)
    assert sum(p.numel() for p in layer.parameters()) == k_layer.count_params() == expected


def test_dense_is_a_drop_in_linear():
    layer = tb.Dense(6, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


BAD_DENSE_ARGS = [
    (dict(in_features=0), ValueError, "in_features"),
    (dict(out_features=-1), ValueError, "out_features"),
    (dict(in_features=6.0), TypeError, "in_features"),
    (dict(out_features=True), TypeError, "out_features"),
    (dict(activation="relu9"), ValueError, "activation"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_DENSE_ARGS)
def test_dense_rejects_bad_arguments(kwargs, error, name):
    args = dict(in_features=6, out_features=4)
    args.update(kwargs)
    with pytest.raises(error, match=f"`{name}`.*Received"):
        tb.Dense(**args)


def test_dense_forward_names_expected_and_actual_shapes():
    with pytest.raises(ValueError, match=r"in_features=6.*\[5, 4\]"):
        tb.Dense(6, 4)(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"in_features=6.*\[\]"):
        tb.Dense(6, 4)(torch.tensor(1.0))


@pytest.mark.parametrize("activation", [None, "relu", "softmax"])
def test_dense_scripts_and_round_trips(activation):
    check_scripted(tb.Dense(6, 4, activation=activation), (torch.randn(5, 6),))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.int64])
def test_dense_dtype_mismatch_names_the_layer_and_both_dtypes(dtype):
    with pytest.raises(TypeError, match=rf"Dense received a {dtype} input but its parameters are torch.float32"):
        tb.Dense(6, 4, activation="relu")(torch.ones(5, 6, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tb.Dense(6, 4)(torch.ones(5, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_dense_is_a_leaf_with_its_activation_in_the_repr():
    dense = tb.Dense(6, 4, activation="softmax")
    assert list(dense.children()) == []
    assert repr(dense) == "Dense(in_features=6, out_features=4, bias=True, activation='softmax')"
