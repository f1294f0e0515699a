"""The Keras ``activation=`` look-up against Keras 3's own activation functions."""
import numpy as np
import pytest
import torch
from torch import nn

import torchblocks as tb
from keras_oracle import assert_rel_close, check_scripted, keras, nchw_to_nhwc, nhwc_to_nchw, to_numpy
from torchblocks.activations import ACTIVATION_NAMES, get_activation, is_identity


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
