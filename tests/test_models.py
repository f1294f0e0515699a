"""SeparableConvNet against the book's Keras model, and the model registry."""
import numpy as np
import pytest
import torch
import torch.fx
from torch import nn

import torchblocks
import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    book_separable_model,
    check_scripted,
    copy_dense,
    copy_separable,
    nchw_to_nhwc,
    random_weights,
    rel_error,
    run_torch,
    to_numpy,
)
from test_models_xception import LeafTracer

CHANNELS_CLASSES = [(3, 10), (1, 5)]
BAD_ARGS = [
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(in_channels="3"), TypeError, "in_channels"),
]
REGISTRY_CASES = [
    ("SeparableConvNet", tb.models.SeparableConvNet),
    ("separableconvnet", tb.models.SeparableConvNet),
    ("XCEPTION", tb.models.Xception),
    ("ResNet18", tb.models.ResNet),
]


@pytest.mark.parametrize("channels, classes", CHANNELS_CLASSES)
def test_separable_convnet_parameter_count(channels, classes):
    expected = book_separable_model(64, 64, channels, classes).count_params()
    model = tb.models.SeparableConvNet(channels, classes)
    assert sum(p.numel() for p in model.parameters()) == expected
    if (channels, classes) == (3, 10):
        assert expected == 38_949


def test_separable_convnet_matches_keras(rng):
    """Keras weights copied by hand: same logits (the Keras classifier without its softmax)."""
    k_model = book_separable_model(activation=None)
    for layer in k_model.layers:
        if layer.weights:
            random_weights(layer, rng)
    model = tb.models.SeparableConvNet().eval()
    k_seps = [l for l in k_model.layers if type(l).__name__ == "SeparableConv2D"]
    seps = [m for m in model.modules() if isinstance(m, tb.SeparableConv2d)]
    assert len(k_seps) == len(seps) == 6
    for k_layer, sep in zip(k_seps, seps):
        copy_separable(k_layer, sep)
    k_dense = [l for l in k_model.layers if type(l).__name__ == "Dense"]
    copy_dense(k_dense[0], model.fc1)
    copy_dense(k_dense[1], model.fc2)
    x = rng.uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    other = rng.uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    expected = to_numpy(k_model(nchw_to_nhwc(x)))
    assert_rel_close(run_torch(model, x), expected, rtol=1e-5)
    # The oracle can fail: another input moves its logits far beyond the tolerance.
    assert rel_error(to_numpy(k_model(nchw_to_nhwc(other))), expected) > 1e-2


def test_separable_convnet_minimum_size():
    model = tb.models.SeparableConvNet().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="at least 32x32 pixels; received 31x40"):
        model(torch.zeros(1, 3, 31, 40))


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGS)
def test_separable_convnet_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        tb.models.SeparableConvNet(**kwargs)


def test_separable_convnet_scripted():
    check_scripted(tb.models.SeparableConvNet(), (torch.randn(2, 3, 64, 64),))


@pytest.mark.parametrize("factory, size", [(tb.models.SeparableConvNet, 64), (tb.models.resnet18, 64)])
def test_fx_trace_with_leaves(factory, size):
    model = factory().eval()
    traced = torch.fx.GraphModule(model, LeafTracer().trace(model))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_model_names():
    assert tb.models.MODEL_NAMES == (
        "SeparableConvNet", "xception", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"
    )


@pytest.mark.parametrize("name, cls", REGISTRY_CASES)
def test_get_model(name, cls):
    model = torchblocks.models.get_model(name, num_classes=7)
    assert type(model) is cls
    assert isinstance(model, nn.Module)
    last = [m for m in model.modules() if isinstance(m, tb.Dense)][-1]
    assert last.out_features == 7


def test_get_model_unknown_name():
    with pytest.raises(ValueError, match=r"one of \('SeparableConvNet', 'xception', 'resnet18', .*name='vgg16'"):
        tb.models.get_model("vgg16")
    with pytest.raises(TypeError, match="name"):
        tb.models.get_model(None)
