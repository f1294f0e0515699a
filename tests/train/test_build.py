"""``torchblocks.train.build``: the initialisers against Keras' sampled ranges and He's gain."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchblocks as tb
from torchblocks.train import initialize


def _max_abs(weight) -> float:
    return float(np.abs(np.asarray(weight)).max())


@pytest.mark.parametrize("depth_multiplier", [1, 2])
def test_keras_init_matches_keras_glorot_limits(depth_multiplier):
    """Glorot-uniform with Keras' fans, the depthwise kernel's included: the sampled ranges agree
    with a Keras SeparableConv2D's (1.5%, 20k+ samples each), where torch's fans would not."""
    from keras_oracle import keras, to_numpy

    c_in, c_out = 64, 96
    layer = keras().layers.SeparableConv2D(c_out, 5, depth_multiplier=depth_multiplier)
    layer.build((1, 9, 9, c_in))
    ours = initialize(tb.SeparableConv2d(c_in, c_out, 5, depth_multiplier=depth_multiplier), "keras")
    for name, kernel in (("depthwise", layer.depthwise_kernel), ("pointwise", layer.pointwise_kernel)):
        weight = getattr(ours, name).weight.detach()
        assert _max_abs(weight) == pytest.approx(_max_abs(to_numpy(kernel)), rel=0.015), name
    assert not ours.pointwise.bias.any()
    if depth_multiplier > 1:
        torch_limit = (6.0 / (25 + 25 * c_in * depth_multiplier)) ** 0.5  # torch's fans for the depthwise weight
        assert torch_limit < 0.8 * _max_abs(to_numpy(layer.depthwise_kernel))


def test_he_init_gives_unit_gain_per_relu_layer():
    torch.manual_seed(0)
    conv = initialize(torch.nn.Conv2d(256, 256, 3), "he")
    x = torch.randn(8, 256, 12, 12)
    with torch.no_grad():
        second_moment = float(F.relu(conv(x)).pow(2).mean())
    assert second_moment == pytest.approx(1.0, rel=0.1)  # He: E[relu(y)^2] = E[x^2]
    assert not conv.bias.any()
