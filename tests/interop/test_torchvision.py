"""torchvision <-> torchblocks ResNets: identical eval outputs both ways (random init, no download)."""
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import ResNet as TVResNet

import torchblocks as tb
from torchblocks.interop.torchvision import from_torchvision, to_torchvision

ARCHS = ["resnet18", "resnet50"]
INPUT_SHAPE = (2, 3, 64, 64)


def _randomize_batchnorm(model: nn.Module) -> None:
    """Distinct BN scales, shifts and statistics everywhere, so no two BN layers are interchangeable."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def _outputs(model: nn.Module, *inputs: torch.Tensor) -> list:
    with torch.no_grad():
        return [model(x) for x in inputs]


@pytest.mark.parametrize("arch", ARCHS)
def test_from_torchvision(arch):
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    _randomize_batchnorm(tv)
    tv.eval()
    model = from_torchvision(tv)
    assert isinstance(model, tb.models.ResNet) and model.arch == arch and not model.training
    x, other = torch.randn(INPUT_SHAPE), torch.randn(INPUT_SHAPE)
    (out, _), (expected, expected_other) = _outputs(model, x, other), _outputs(tv, x, other)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # A different input moves the oracle far beyond the (zero) tolerance: the check can fail.
    assert (expected_other - expected).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_to_torchvision(arch):
    model = getattr(tb.models, arch)(num_classes=10)
    _randomize_batchnorm(model)
    model.eval()
    tv = to_torchvision(model)
    assert isinstance(tv, TVResNet) and not tv.training
    x = torch.randn(INPUT_SHAPE)
    torch.testing.assert_close(_outputs(tv, x)[0], _outputs(model, x)[0], rtol=0, atol=0)


def test_round_trip_keeps_state_and_mode():
    tv = torchvision.models.resnet18(weights=None, num_classes=3)
    _randomize_batchnorm(tv)
    back = to_torchvision(from_torchvision(tv))
    assert back.training and back.fc.out_features == 3
    for key, value in tv.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: nn.Linear(2, 2), TypeError, "torchvision.models.ResNet"),
        (lambda: torchvision.models.resnext50_32x4d(weights=None), ValueError, "groups=32"),
        (lambda: TVResNet(TVBasicBlock, [1, 1, 1, 1]), ValueError, r"stage depths \(1, 1, 1, 1\)"),
    ],
)
def test_from_torchvision_rejects(make, error, message):
    with pytest.raises(error, match=message):
        from_torchvision(make())


def test_to_torchvision_rejects():
    with pytest.raises(ValueError, match="conv='separable'"):
        to_torchvision(tb.models.resnet18(conv="separable"))
    with pytest.raises(TypeError, match="torchblocks.models.ResNet"):
        to_torchvision(tb.models.SeparableConvNet())
