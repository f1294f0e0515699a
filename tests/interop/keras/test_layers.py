"""``interop.keras.layers``: the modules for Keras layers torch has no counterpart of, against
references that do not trust them: the adjoint of Keras' 'same'/'valid' convolution for
Conv2DTranspose, and the training behaviour (which elements a dropout draw covers, and its
scaling) of the regularisers. (test_converters.py checks each against Keras itself.)"""
import numpy as np
import pytest
import torch

import torchblocks as tb
from keras_oracle import assert_rel_close

layers = tb.interop.keras.layers

# (kernel, stride, padding, output_padding (-1: Keras' None), input (H, W))
TRANSPOSE_CASES = [
    (3, 2, "same", -1, (5, 6)),
    (4, 2, "same", -1, (5, 6)),
    (2, 2, "same", -1, (4, 5)),
    (5, 3, "same", -1, (4, 4)),
    (3, 1, "same", -1, (5, 6)),
    (3, 2, "valid", -1, (5, 6)),
    (2, 3, "valid", -1, (4, 5)),
    (3, 2, "same", 0, (5, 6)),
    (3, 2, "valid", 1, (5, 6)),
]


def _adjoint_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int, stride: int,
                       padding: str, out_hw) -> torch.Tensor:
    """Keras' transposed convolution is the adjoint of its convolution (tb.Conv2d, Keras padding)
    from an (out_hw) map to x's size: its vector-Jacobian product, plus the bias."""
    conv = tb.Conv2d(weight.shape[1], weight.shape[0], kernel, stride, padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    z = torch.zeros(x.shape[0], weight.shape[1], *out_hw, requires_grad=True)
    y = conv(z)
    assert y.shape == x.shape, (y.shape, x.shape)
    (grad,) = torch.autograd.grad(y, z, x)
    return (grad + bias.view(1, -1, 1, 1)).detach()


@pytest.mark.parametrize("kernel, stride, padding, output_padding, size", TRANSPOSE_CASES)
def test_conv_transpose_is_the_adjoint_of_keras_convolution(rng, kernel, stride, padding, output_padding, size):
    module = layers.Conv2dTranspose(3, 4, (kernel, kernel), (stride, stride), padding, (output_padding,) * 2)
    x = torch.from_numpy(rng.normal(size=(2, 3, *size)).astype(np.float32))
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
        out = module(x)
    reference = _adjoint_reference(x, module.weight, module.bias, kernel, stride, padding, out.shape[2:])
    assert_rel_close(out.numpy(), reference.numpy(), 1e-5)
    expected_h = size[0] * stride if padding == "same" and output_padding < 0 else None
    if expected_h is not None:
        assert out.shape[2] == expected_h  # Keras' 'same' output size


def test_spatial_dropout_drops_whole_channels_with_keras_scaling():
    torch.manual_seed(0)
    module = torch.nn.Dropout2d(0.5).train()  # what from_keras builds for SpatialDropout2D
    out = module(torch.ones(64, 8, 5, 5))
    per_channel = out.flatten(2)
    assert torch.all(per_channel.amax(-1) == per_channel.amin(-1))  # one draw per channel
    assert set(per_channel.unique().tolist()) == {0.0, 2.0}  # kept ones scaled by 1 / (1 - rate)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_stochastic_depth_drops_whole_samples_with_keras_scaling(rate):
    torch.manual_seed(0)
    module = layers.StochasticDepth(rate).train()
    out = module(torch.ones(4000, 3, 2, 2))
    per_sample = out.flatten(1)
    assert torch.all(per_sample.amax(-1) == per_sample.amin(-1))  # one draw per sample
    kept = per_sample[:, 0][per_sample[:, 0] != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - rate)))
    assert float((per_sample[:, 0] == 0).float().mean()) == pytest.approx(rate, abs=0.03)
    assert torch.equal(module.eval()(out), out)


def test_frozen_batch_norm_ignores_training_mode(rng):
    module = layers.FrozenBatchNorm(3, eps=0.01)
    with torch.no_grad():
        module.bn.running_mean.normal_()
        module.bn.running_var.uniform_(0.5, 1.5)
    x = torch.from_numpy(rng.normal(size=(4, 3, 5, 5)).astype(np.float32))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    torch.testing.assert_close(module.train()(x), module.eval()(x), rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_flatten_checks_the_shape_its_permutation_was_planned_for():
    module = layers.Flatten(channels_last=False, permuted_for=(3, 2, 4))
    assert module(torch.ones(2, 3, 2, 4)).shape == (2, 24)
    with pytest.raises(ValueError, match=r"permuted for inputs of shape \[N\] \+ \[3, 2, 4\]; received \[2, 3, 4, 2\]"):
        module(torch.ones(2, 3, 4, 2))


@pytest.mark.parametrize("make, message", [
    (lambda: layers.Arithmetic("power", 2.0), "Expected one of 'add', 'subtract'"),
    (lambda: layers.Permute((1, 3)), r"Expected a permutation of 1\.\.2"),
    (lambda: layers.StochasticDepth(1.0), "Expected 0 <= rate < 1"),
    (lambda: layers.Conv2dTranspose(2, 2, (3, 3), padding="full"), "Expected 'valid' or 'same'"),
])
def test_bad_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_cropping_refuses_to_crop_everything():
    with pytest.raises(ValueError, match=r"leaves nothing of an input of shape \[1, 2, 3, 3\]"):
        layers.Cropping2d(2, 1, 0, 0)(torch.ones(1, 2, 3, 3))
