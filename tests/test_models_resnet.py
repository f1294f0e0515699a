"""ResNet family: torchvision as the oracle for keys, counts, structure and training-mode numerics."""
import pytest
import torch
import torchvision
from torch import nn

import torchblocks as tb
from keras_oracle import check_scripted

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
SMALL_ARCHS = ["resnet18", "resnet50"]
BAD_ARGS = [
    (dict(conv="depthwise"), ValueError, "conv='depthwise'"),
    (dict(num_classes=0), ValueError, "num_classes"),
]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _torchvision_3x3(tv_model: nn.Module) -> list:
    """(in, out, stride) of every 3×3 conv of a torchvision ResNet, in module order."""
    return [
        (m.in_channels, m.out_channels, m.stride)
        for m in tv_model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_torchvision(arch):
    """Same keys in the same order, same shapes, same parameter count; a strict load works.

    Built on the meta device: structure only, no memory or initialisation time.
    """
    with torch.device("meta"):
        tv = getattr(torchvision.models, arch)(weights=None)
        model = getattr(tb.models, arch)()
    tv_state, state = tv.state_dict(), model.state_dict()
    assert set(state) == set(tv_state)
    assert list(state) == list(tv_state)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in tv_state.items()}
    assert _count(model) == _count(tv)
    result = model.load_state_dict(tv_state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_load_torchvision_state_dict_values():
    """Every tensor lands where torchvision keeps it (distinct random values, so no swap hides)."""
    tv = torchvision.models.resnet18(weights=None, num_classes=10)
    with torch.no_grad():
        for value in tv.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value))
    model = tb.models.resnet18(num_classes=10)
    model.load_state_dict(tv.state_dict())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tv.state_dict().items())
    assert torch.equal(model.layer2[0].residual.shortcut.bn.bn.running_var, tv.layer2[0].downsample[1].running_var)
    assert torch.equal(model.layer2[0].residual.body.bn2.weight, tv.layer2[0].bn2.weight)


@pytest.mark.parametrize("arch", ["resnet18"])
def test_training_step_matches_torchvision(arch):
    """Train mode: same outputs, gradients and BatchNorm running statistics as torchvision."""
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    model = getattr(tb.models, arch)(num_classes=10)
    model.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    out, tv_out = model(x), tv(x)
    torch.testing.assert_close(out, tv_out, rtol=0, atol=0)
    out.square().sum().backward()
    tv_out.square().sum().backward()
    tv_grads = dict(tv.named_parameters())
    state = model.state_dict(keep_vars=True)
    for key, tv_param in tv_grads.items():
        torch.testing.assert_close(state[key].grad, tv_param.grad, rtol=1e-5, atol=1e-6)
    for key, value in tv.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_blocks_are_residual_with_projections():
    model = tb.models.resnet50()
    first = model.layer2[0].residual
    assert isinstance(first, tb.Residual) and isinstance(first.shortcut, tb.Projection)
    assert first.shortcut.proj.stride == (2, 2) and first.shortcut.proj.bias is None
    assert isinstance(first.shortcut.bn, tb.BatchNorm)
    # v1.5: the stride sits on the 3×3 conv, not on the first 1×1.
    assert first.body.conv1.stride == (1, 1) and first.body.conv2.stride == (2, 2)
    assert model.layer2[1].residual.identity_shortcut
    # Each block owns its ReLU modules (none shared, as quantization needs).
    relus = [m for m in model.layer2[0].modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus) == 3


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_separable_variant(arch):
    """Every 3×3 conv becomes a SeparableConv2d: 9·C_in + C_in·C_out parameters for 9·C_in·C_out."""
    tv = getattr(torchvision.models, arch)(weights=None)
    convs = _torchvision_3x3(tv)
    saved = sum(9 * cin * cout - (9 * cin + cin * cout) for cin, cout, _ in convs)
    model = getattr(tb.models, arch)(num_classes=10, conv="separable")
    standard = getattr(tb.models, arch)(num_classes=10)
    assert _count(model) == _count(standard) - saved
    seps = [m for m in model.modules() if isinstance(m, tb.SeparableConv2d)]
    assert [(m.in_channels, m.out_channels, m.depthwise.stride) for m in seps] == convs
    assert all(m.depthwise.padding == (1, 1) and m.pointwise.bias is None for m in seps)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1 for m in model.modules())
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    model.load_state_dict(model.state_dict())  # the key hooks handle the separable layout too


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGS)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        tb.models.resnet18(**kwargs)


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_scripted(arch):
    check_scripted(getattr(tb.models, arch)(num_classes=10), (torch.randn(2, 3, 64, 64),))
