"""BatchNorm folding: ``fuse_bn`` and ``conv_bn_pairs``.

The oracle is the eval-mode model with BatchNorm statistics from a real batch and random affine
parameters; expected BatchNorm counts follow from each model's structure (Keras Xception has 40
BatchNormalization layers, torchvision's ResNet-18 20, ResNet-50 53).
"""
from collections import OrderedDict

import pytest
import torch
from hypothesis import given
from torch import nn

import torchblocks as tb
from torchblocks import models
from torchblocks.fusion import conv_bn_pairs
from generated_models import TiedWeights, any_model, differential, sensitive_reference
from reliability_cases import calibrate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, (tb.BatchNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules())


class ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ConvCalledTwice(nn.Module):
    """One conv module on two inputs, a BN after one call: folding would change the other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x.flip(-1))


class ReadsConvWeight(nn.Module):
    """Forward code reads the conv's weight itself: folding would change what it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) * self.conv.weight.sum()


class ConvTwoUsers(nn.Module):
    """The conv's output feeds the BN and the sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = tb.Conv2d(4, 4, 3, padding="same")
        self.bn = tb.BatchNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def _seq(*layers):
    return nn.Sequential(OrderedDict((f"l{i}", m) for i, m in enumerate(layers)))


# name -> (factory, input shape, BatchNorms before, BatchNorms left after folding)
CASES = {
    "conv_bn": (lambda: _seq(tb.Conv2d(4, 6, 3, 2, "same"), tb.BatchNorm(6), nn.ReLU()), (2, 4, 10, 10), 1, 0),
    "conv_nobias_torch_bn": (lambda: _seq(nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6)), (2, 4, 9, 9), 1, 0),
    "depthwise_bn": (lambda: _seq(tb.DepthwiseConv2d(4, 3, 1, "same", depth_multiplier=2), tb.BatchNorm(8)), (2, 4, 7, 7), 1, 0),
    "separable_bn": (lambda: _seq(tb.SeparableConv2d(4, 8, 3, 2, "same", bias=False), tb.BatchNorm(8)), (2, 4, 10, 10), 1, 0),
    "projection": (lambda: tb.Projection(4, 8, stride=2, norm=True), (2, 4, 9, 9), 1, 0),
    "residual_projection": (
        lambda: tb.Residual(
            _seq(tb.SeparableConv2d(4, 8, 3, 2, "same"), tb.BatchNorm(8)), tb.Projection(4, 8, 2, norm=True)
        ),
        (2, 4, 10, 10), 2, 0,
    ),
    "identity_residual_bn": (
        lambda: tb.Residual(_seq(tb.Conv2d(4, 4, 3, padding="same"), tb.BatchNorm(4))), (2, 4, 7, 7), 1, 0,
    ),
    "convbn_relu_between": (lambda: tb.ConvBN(4, 6, 3, padding="same"), (2, 4, 7, 7), 1, 1),
    "bn_axis_last": (lambda: _seq(tb.Conv2d(4, 4, 1), ToChannelsLast(), tb.BatchNorm(4, axis=-1)), (2, 4, 5, 5), 1, 1),
    "bn_first": (lambda: _seq(tb.BatchNorm(4), tb.Conv2d(4, 4, 3)), (2, 4, 7, 7), 1, 1),
    "bn_after_pool": (lambda: _seq(tb.Conv2d(4, 4, 3), tb.MaxPool2d(2), tb.BatchNorm(4)), (2, 4, 8, 8), 1, 1),
    "conv_two_users": (ConvTwoUsers, (2, 4, 6, 6), 1, 1),
    "conv_called_twice": (ConvCalledTwice, (2, 4, 6, 6), 1, 1),
    "reads_conv_weight": (ReadsConvWeight, (2, 4, 5, 5), 1, 1),
    "tied_weights": (lambda: TiedWeights(4), (2, 4, 6, 6), 1, 0),
    "conv1d_bn1d": (lambda: _seq(nn.Conv1d(4, 6, 3, bias=False), nn.BatchNorm1d(6), nn.ReLU()), (2, 4, 9), 1, 0),
    "conv3d_bn3d": (lambda: _seq(nn.Conv3d(4, 6, 3, padding=1), nn.BatchNorm3d(6)), (2, 4, 5, 5, 5), 1, 0),
    "dense_bn1d": (lambda: _seq(nn.Linear(4, 6), nn.BatchNorm1d(6)), (3, 4), 1, 1),
}
CASE_NAMES = sorted(CASES)


def _case(name):
    factory, shape, _, _ = CASES[name]
    x = torch.randn(shape)
    return calibrate(factory(), x), x


@pytest.mark.parametrize("name", CASE_NAMES)
def test_fuse_bn_folds_exactly_the_conv_fed_batchnorms(name):
    model, x = _case(name)
    _, _, before, after = CASES[name]
    fused = tb.fuse_bn(model)
    assert (count_bn(model), count_bn(fused)) == (before, after)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    torch.jit.script(fused)  # still the original classes: still scriptable


def test_fuse_bn_leaves_the_original_untouched():
    model, x = _case("residual_projection")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = tb.fuse_bn(model)
    assert model.training and not fused.training
    assert count_bn(model) == 2
    assert model.body.l0.pointwise.bias is not None and model.shortcut.proj.bias is None
    assert fused.shortcut.proj.bias is not None  # created by folding
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_fold_uses_the_batchnorm_formula():
    # One channel by hand: y = g * (w * x + b - m) / sqrt(v + eps) + beta.
    conv = nn.Conv2d(1, 1, 1)
    bn = nn.BatchNorm2d(1, eps=0.25).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0), conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0), bn.running_var.fill_(0.75), bn.weight.fill_(4.0), bn.bias.fill_(0.5)
    fused = tb.fuse_bn(nn.Sequential(conv, bn))
    assert float(fused[0].weight.detach()) == pytest.approx(2.0 * 4.0 / 1.0)
    assert float(fused[0].bias.detach()) == pytest.approx((1.0 - 3.0) * 4.0 + 0.5)
    assert isinstance(fused[1], nn.Identity)


@pytest.mark.parametrize("layer", [tb.Conv2d(4, 4, 3, 2, "same"), tb.BatchNorm(4)])
def test_fuse_bn_on_a_single_layer_is_an_eval_copy(layer):
    x = torch.randn(2, 4, 6, 6)
    fused = tb.fuse_bn(layer)
    assert fused is not layer and type(fused) is type(layer) and not fused.training
    with torch.no_grad():
        torch.testing.assert_close(fused(x), layer.eval()(x), rtol=0, atol=0)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = tb.Conv2d(4, 4, 1)
        self.bn = tb.BatchNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > 0 else x


def test_fuse_bn_explains_an_untraceable_model():
    with pytest.raises(TypeError, match="fuse_bn needs a torch.fx-traceable forward; DataDependent failed"):
        tb.fuse_bn(DataDependent())


def test_fuse_bn_rejects_a_non_module():
    with pytest.raises(TypeError, match="argument `model`"):
        tb.fuse_bn("xception")


def test_conv_bn_pairs_names_the_pointwise_conv():
    model, _ = _case("residual_projection")
    assert conv_bn_pairs(model) == [("body.l0.pointwise", "body.l1"), ("shortcut.proj", "shortcut.bn")]


# model -> (input shape, BatchNorms in the model: Keras Xception 40, torchvision ResNets 20/20/53/104/155)
MODEL_BN = {
    "xception": ((1, 3, 71, 71), 40),
    "resnet18": ((1, 3, 32, 32), 20),
    "resnet50": ((1, 3, 32, 32), 53),
}
FUSION_MODELS = [n for n in MODEL_BN if n in models.MODEL_NAMES]


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_fuse_bn_on_models(name):
    shape, bn_count = MODEL_BN[name]
    x = torch.randn(shape)
    model = calibrate(models.get_model(name, num_classes=10), x)
    fused = tb.fuse_bn(model)
    assert (count_bn(model), count_bn(fused)) == (bn_count, 0)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
        # The oracle is sensitive: another input moves the logits far more than the tolerance.
        assert float((model(torch.randn(shape)) - expected).abs().max()) > 1e-2 * float(expected.abs().max())
    assert params(fused) < params(model)


def test_fuse_bn_folds_a_tied_weight_into_a_private_copy():
    model, x = _case("tied_weights")
    fused = tb.fuse_bn(model)
    # The folded conv has a weight of its own; the other user keeps the original, unscaled.
    assert fused.a.weight is not fused.b.weight
    assert torch.equal(fused.b.weight, model.b.weight) and model.a.weight is model.b.weight
    assert not torch.equal(fused.a.weight, model.a.weight)


@differential(60)
@given(generated=any_model())
def test_fuse_bn_differential(generated):
    """Generated models (shared modules, tied weights, branches, vectors, Conv1d/3d, every layer):
    fuse_bn equals the eval-mode model to float32 round-off, and leaves the model unchanged."""
    model, inputs = generated.model, generated.inputs
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected, tol = sensitive_reference(generated, 1e-5)
    fused = tb.fuse_bn(model)
    with torch.no_grad():
        actual = fused(*inputs)
    assert float((actual - expected).abs().max()) <= tol
    assert count_bn(fused) <= count_bn(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
