"""The Keras ``activation=`` look-up against Keras 3's own activation functions, and how layers
hold an activation: by name as a function (a leaf layer), as a module the ``act`` child."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import assert_rel_close, check_scripted, keras, nchw_to_nhwc, nhwc_to_nchw, to_numpy
from torchblocks.activations import ACTIVATION_NAMES, apply_activation, get_activation, is_identity

# One of each layer that takes ``activation=``: (factory(activation), input shape).
ACTIVATED_LAYERS = [
    pytest.param(lambda a: tb.Conv2d(2, 3, 3, activation=a), (2, 2, 5, 5), id="conv"),
    pytest.param(lambda a: tb.DepthwiseConv2d(2, 3, 2, "same", activation=a), (2, 2, 5, 5), id="depthwise"),
    pytest.param(lambda a: tb.Dense(4, 3, activation=a), (2, 4), id="dense"),
    pytest.param(lambda a: tb.SeparableConv2d(2, 3, 3, activation=a), (2, 2, 5, 5), id="separable"),
]


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_matches_keras_on_vectors(name, rng):
    x = (rng.normal(size=(4, 7)) * 3).astype(np.float32)
    expected = to_numpy(keras().activations.get(name)(x))
    actual = get_activation(name)(torch.from_numpy(x)).numpy()
    assert_rel_close(actual, expected)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "relu", "gelu"])
def test_activation_matches_keras_on_feature_maps(name, rng):
    # Keras applies softmax on its channel axis (last, NHWC); torchblocks on dim 1 of NCHW.
    x = (rng.normal(size=(2, 5, 3, 4)) * 3).astype(np.float32)
    expected = nhwc_to_nchw(to_numpy(keras().activations.get(name)(nchw_to_nhwc(x))))
    assert_rel_close(get_activation(name)(torch.from_numpy(x)).numpy(), expected)


def test_names_are_case_insensitive_and_fresh():
    assert isinstance(get_activation("ReLU"), nn.ReLU)
    assert get_activation("relu") is not get_activation("relu")  # no module shared between layers


@pytest.mark.parametrize("activation", [None, "linear", "LINEAR"])
def test_no_activation_is_identity(activation):
    module = get_activation(activation)
    assert isinstance(module, nn.Identity) and is_identity(module)
    assert not tb.Conv2d(1, 1, 1, activation=activation).has_activation


def test_module_is_passed_through():
    module = nn.LeakyReLU(0.3)
    assert get_activation(module) is module
    assert not is_identity(module)
    assert tb.Conv2d(1, 1, 1, activation=module).act is module


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_named_activation_function_is_its_module_bit_for_bit(name):
    x = torch.randn(3, 4, 5, 5) * 4
    assert torch.equal(apply_activation(x, name), get_activation(name)(x))


@pytest.mark.parametrize("make, shape", ACTIVATED_LAYERS)
@pytest.mark.parametrize("activation", [None, "linear", nn.Identity()])
def test_no_activation_leaves_no_child(make, shape, activation):
    layer = make(activation)
    assert not layer.has_activation and "act" not in dict(layer.named_children())
    assert isinstance(layer.act, nn.Identity) and layer.activation_arg() is None


@pytest.mark.parametrize("make, shape", ACTIVATED_LAYERS)
def test_named_activation(make, shape):
    # Conv2d and Dense apply a name as a function and stay leaves; SeparableConv2d, a container
    # anyway, holds it as its ``act`` child like nn.Sequential(depthwise, pointwise, act).
    layer = make("ReLU")
    separable = isinstance(layer, tb.SeparableConv2d)
    assert layer.has_activation and ("act" in dict(layer.named_children())) == separable
    assert isinstance(layer.act, nn.ReLU) and layer.activation == "relu" and layer.activation_arg() == "relu"
    x = torch.randn(shape)
    plain = make(None)
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x), torch.relu(plain(x)))
    assert ("activation='relu'" in repr(layer)) != separable


@pytest.mark.parametrize("make, shape", ACTIVATED_LAYERS)
def test_module_activation_is_the_act_child(make, shape):
    prelu = nn.PReLU()
    layer = make(prelu)
    assert layer.act is prelu and dict(layer.named_children())["act"] is prelu
    assert "act.weight" in layer.state_dict()
    rebuilt = layer.activation_arg()
    assert isinstance(rebuilt, nn.PReLU) and rebuilt is not prelu
    check_scripted(layer, (torch.randn(shape),))


@pytest.mark.parametrize("make, shape", ACTIVATED_LAYERS)
@pytest.mark.parametrize("activation", ["relu", None])
def test_layers_pickled_with_an_act_child_still_load(make, shape, activation):
    # torchblocks 0.1.0 gave every layer an ``act`` child (nn.Identity for none) and no
    # ``activation``/``module_activation`` attributes: such a pickle loads and computes the same.
    layer = make(activation)
    x = torch.randn(shape)
    expected = layer(x)
    old = pickle.loads(pickle.dumps(layer))
    for name in ("activation", "module_activation"):
        del old.__dict__[name]
    old._modules["act"] = get_activation(activation)
    loaded = pickle.loads(pickle.dumps(old))
    assert torch.equal(loaded(x), expected)
    assert ("act" in dict(loaded.named_children())) == (activation is not None)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"`activation`.*'relu'.*Received activation='rellu'"):
        get_activation("rellu")


@pytest.mark.parametrize("bad", [3, 1.0, True, torch.relu])
def test_wrong_type_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"`activation`.*Received activation="):
        get_activation(bad)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_modules_script_and_round_trip(name):
    check_scripted(get_activation(name), (torch.randn(2, 3, 4, 4),))
