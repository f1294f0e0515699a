"""torchvision <-> torchblocks ResNets: identical outputs both ways, or a refusal naming the attribute.

Differential tests: hypothesis draws torchvision's constructor options (depths, num_classes,
replace_stride_with_dilation, groups/width_per_group, norm layers, zero_init_residual) and the
supported models' dtype, train/eval mode and frozen layers; a parametrized list changes built models
(stems, heads, activations, conv and BatchNorm attributes, block types, hooks, tied weights). A
supported model must give the source's exact outputs and state; any other must raise a
TypeError/ValueError naming the attribute. BatchNorm statistics come from a real batch and every
accepted example checks that another input moves the oracle far beyond the (zero) tolerance.
"""
import functools

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.models.resnet import ResNet as TVResNet
from torchvision.ops.misc import FrozenBatchNorm2d

import torchblocks as tb

INPUT_SHAPE = (2, 3, 32, 32)
ALL_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
# Real weights and forward passes: the three cheapest depths (101/152 differ only in depth; their
# mapping is covered on the meta device).
RUN_ARCHS = ["resnet18", "resnet34", "resnet50"]
DTYPES = [torch.float32, torch.float64]
# Each example builds a ResNet: a fixed, bounded set of examples and no shrinking (an example is a
# handful of independent choices, already minimal to read).
_SETTINGS = dict(deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
                 suppress_health_check=[HealthCheck.too_slow])
RUNS = settings(max_examples=8, **_SETTINGS)        # examples that run real models
OPTIONS = settings(max_examples=30, **_SETTINGS)    # mostly refusals, read on the meta device


def _calibrate(model: nn.Module, dtype: torch.dtype) -> None:
    """Running statistics from one real batch (momentum 1 for one training pass), distinct affine
    parameters per BatchNorm; the model's own momentum and mode are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    training = model.training
    with torch.no_grad():
        for m in norms:
            m.momentum = 1.0
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
        model.train()(torch.randn(8, *INPUT_SHAPE[1:], dtype=dtype))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(training)


def _assert_same_outputs(converted: nn.Module, source: nn.Module, dtype: torch.dtype) -> None:
    """Exact outputs in the source's mode (train mode: the same batch statistics and updates too)."""
    x, other = torch.randn(INPUT_SHAPE, dtype=dtype), torch.randn(INPUT_SHAPE, dtype=dtype)
    with torch.no_grad():
        got, expected = converted(x), source(x)
        got_other, expected_other = converted(other), source(other)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_other, expected_other, rtol=0, atol=0)
    # A different input moves the oracle far beyond the (zero) tolerance: the check can fail.
    assert (expected_other - expected).abs().max() > 1e-3 * expected.abs().max()
    source_state = source.state_dict()
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, source_state[key], rtol=0, atol=0, msg=key)


def _assert_same_flags(converted: nn.Module, source: nn.Module) -> None:
    assert converted.training == source.training
    flags = {k: p.requires_grad for k, p in source.state_dict(keep_vars=True).items()}
    for key, p in converted.state_dict(keep_vars=True).items():
        if isinstance(p, nn.Parameter):
            assert p.requires_grad == flags[key], key


# --- torchvision -> torchblocks -------------------------------------------------------------------

def _set(path: str, make):
    """A mutation that replaces the submodule at ``path`` by ``make(old)``."""
    def mutate(model: nn.Module) -> None:
        parent, _, name = path.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, name, make(getattr(owner, name)))
    return mutate


def _set_attr(path: str, attr: str, value):
    def mutate(model: nn.Module) -> None:
        setattr(model.get_submodule(path), attr, value)
    return mutate


def _hook(path: str):
    def mutate(model: nn.Module) -> None:
        model.get_submodule(path).register_forward_hook(lambda module, args, out: out * 2)
    return mutate


def _tie(path: str, other: str):
    """Make the weight of ``other`` the very parameter of ``path`` (tied weights)."""
    def mutate(model: nn.Module) -> None:
        model.get_submodule(other).weight = model.get_submodule(path).weight
    return mutate


def _dilate(path: str):
    """Dilation 2 with padding 2: the same output size, other numbers."""
    def mutate(model: nn.Module) -> None:
        for attr in ("dilation", "padding"):
            setattr(model.get_submodule(path), attr, (2, 2))
    return mutate


def _mixed_mode(model: nn.Module) -> None:
    model.train()
    model.layer1[0].bn1.eval()


def _instance_forward(model: nn.Module) -> None:
    block = model.layer3[0]
    block.forward = lambda x: type(block).forward(block, x) * 0.5


def _bn_without_affine(bn: nn.Module) -> nn.Module:
    return nn.BatchNorm2d(bn.num_features, affine=False)


def _conv_with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)


# torchvision's constructor options: (value, pattern of the refusal; None where supported).
# Dilation, groups and widths are options of Bottleneck ResNets only (BasicBlock raises itself).
STANDARD_DEPTHS = [(TVBasicBlock, [2, 2, 2, 2]), (TVBasicBlock, [3, 4, 6, 3]), (TVBottleneck, [3, 4, 6, 3])]
OTHER_DEPTHS = [(TVBasicBlock, [1, 1, 1, 1]), (TVBottleneck, [1, 2, 1, 1]), (TVBasicBlock, [2, 2, 2, 3])]
DILATIONS = st.one_of(st.just([False] * 3), st.lists(st.booleans(), min_size=3, max_size=3))
WIDTHS = st.one_of(st.just((1, 64)), st.sampled_from([(2, 64), (1, 32), (4, 16)]))
NORMS = st.one_of(
    st.just((None, None)),
    st.sampled_from([
        (functools.partial(nn.GroupNorm, 8), r"is a torch.nn.GroupNorm; .* only a torch.nn.BatchNorm2d"),
        (FrozenBatchNorm2d, "is a torchvision.ops.misc.FrozenBatchNorm2d"),
        (nn.SyncBatchNorm, "is a torch.nn.SyncBatchNorm"),
        (functools.partial(nn.BatchNorm2d, eps=1e-3), r"has eps=0.001; .* only eps=1e-05"),
        (functools.partial(nn.BatchNorm2d, momentum=0.3), r"has momentum=0.3; .* only momentum=0.1"),
    ]),
)


@OPTIONS
@given(
    depths=st.one_of(st.sampled_from(STANDARD_DEPTHS), st.sampled_from(OTHER_DEPTHS)),
    dilation=DILATIONS,
    widths=WIDTHS,
    norm=NORMS,
    num_classes=st.integers(1, 12),
    zero_init=st.booleans(),
)
def test_from_torchvision_constructor_options(depths, dilation, widths, norm, num_classes, zero_init):
    """Every combination of torchvision's ResNet options converts exactly or is refused by name."""
    block, layers = depths
    groups, width = widths if block is TVBottleneck else (1, 64)
    dilation = dilation if block is TVBottleneck else [False] * 3
    refusals = [norm[1]] if norm[1] else []
    if (block, layers) in OTHER_DEPTHS:
        refusals.append("stage depths")
    if any(dilation):
        refusals.append(r"replace_stride_with_dilation=None\); received .* dilation=")
    if (groups, width) != (1, 64):
        refusals.append(rf"received groups={groups}, width_per_group={width}")
    kwargs = dict(num_classes=num_classes, zero_init_residual=zero_init, groups=groups, width_per_group=width,
                  replace_stride_with_dilation=dilation, norm_layer=norm[0])
    if refusals:
        with torch.device("meta"):
            tv = TVResNet(block, layers, **kwargs)
        with pytest.raises((TypeError, ValueError), match="|".join(refusals)):
            tb.interop.torchvision.from_torchvision(tv)
        return
    tv = TVResNet(block, layers, **kwargs)
    _calibrate(tv, torch.float32)
    model = tb.interop.torchvision.from_torchvision(tv.eval())
    _assert_same_flags(model, tv)
    _assert_same_outputs(model, tv, torch.float32)


@RUNS
@given(
    arch=st.sampled_from(RUN_ARCHS),
    num_classes=st.integers(1, 12),
    dtype=st.sampled_from(DTYPES),
    training=st.booleans(),
    frozen=st.sampled_from([None, "conv1", "layer1", "fc"]),
)
def test_from_torchvision_exact(arch, num_classes, dtype, training, frozen):
    """Supported models keep dtype, train/eval mode (train mode: same batch statistics and running
    statistics updates) and frozen parameters."""
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes).to(dtype)
    _calibrate(tv, dtype)
    tv.train(training)
    if frozen:
        tv.get_submodule(frozen).requires_grad_(False)
    model = tb.interop.torchvision.from_torchvision(tv)
    assert type(model) is tb.models.ResNet and model.arch == arch and model.num_classes == num_classes
    assert next(model.parameters()).dtype == dtype
    _assert_same_flags(model, tv)
    _assert_same_outputs(model, tv, dtype)


# Changes made to a torchvision resnet18 after construction: (id, mutation, error, message).
TV_DEPARTURES = [
    ("stem_kernel", _set("conv1", lambda c: nn.Conv2d(3, 64, 3, 1, 1, bias=False)), ValueError,
     r"`tv_model.conv1` has kernel_size=\(3, 3\)"),
    ("stem_stride", _set_attr("conv1", "stride", (1, 1)), ValueError,
     r"`tv_model.conv1` has stride=\(1, 1\); .* only stride=\(2, 2\)"),
    ("stem_channels", _set("conv1", lambda c: nn.Conv2d(1, 64, 7, 2, 3, bias=False)), ValueError,
     r"`tv_model.conv1` has in_channels=1"),
    ("stem_bias", _set("conv1", _conv_with_bias), ValueError, r"`tv_model.conv1` has bias=True"),
    ("no_maxpool", _set("maxpool", lambda p: nn.Identity()), TypeError,
     r"`tv_model.maxpool` is a torch.nn.Identity"),
    ("maxpool_kernel", _set("maxpool", lambda p: nn.MaxPool2d(2, 2)), ValueError,
     r"`tv_model.maxpool` has kernel_size=\(2, 2\)"),
    ("maxpool_ceil", _set_attr("maxpool", "ceil_mode", True), ValueError,
     r"`tv_model.maxpool` has ceil_mode=True"),
    ("max_head", _set("avgpool", lambda p: nn.AdaptiveMaxPool2d(1)), TypeError, "AdaptiveMaxPool2d"),
    ("sequential_head", _set("fc", lambda fc: nn.Sequential(nn.Dropout(0.2), fc)), TypeError,
     r"`tv_model.fc` is a torch.nn.Sequential; .* only a torch.nn.Linear head"),
    ("head_without_bias", _set("fc", lambda fc: nn.Linear(fc.in_features, 10, bias=False)), ValueError,
     r"`tv_model.fc` has bias=False"),
    ("gelu", _set("layer2.1.relu", lambda r: nn.GELU()), TypeError,
     r"`tv_model.layer2.1.relu` is a torch.nn.GELU"),
    ("stem_relu", _set("relu", lambda r: nn.ReLU6()), TypeError, r"`tv_model.relu` is a torch.nn.ReLU6"),
    ("block_dilation", _dilate("layer3.1.conv1"), ValueError,
     r"`tv_model.layer3.1.conv1` has dilation=\(2, 2\); .* only dilation=\(1, 1\), "
     r".*\(replace_stride_with_dilation is not supported\)"),
    ("block_stride", _set_attr("layer2.0.downsample.0", "stride", (1, 1)), ValueError,
     r"`tv_model.layer2.0.downsample.0` has stride=\(1, 1\)"),
    ("block_padding_mode", _set_attr("layer1.1.conv2", "padding_mode", "reflect"), ValueError,
     r"`tv_model.layer1.1.conv2` has padding_mode='reflect'"),
    ("no_downsample", _set_attr("layer2.0", "downsample", None), ValueError,
     r"`tv_model.layer2.0.downsample` is missing"),
    ("bn_no_affine", _set("layer1.0.bn1", _bn_without_affine), ValueError,
     r"`tv_model.layer1.0.bn1` has affine=False"),
    ("bn_no_stats", _set_attr("layer1.0.bn2", "track_running_stats", False), ValueError,
     r"`tv_model.layer1.0.bn2` has track_running_stats=False"),
    ("block_type", _set("layer3.1", lambda b: TVBottleneck(256, 64)), TypeError,
     r"`tv_model.layer3.1` is a torchvision.models.resnet.Bottleneck while `tv_model.layer1.0` is a "
     r".*BasicBlock"),
    ("stage_type", _set("layer4", lambda s: nn.ModuleList(s)), TypeError,
     r"`tv_model.layer4` is a torch.nn.ModuleList"),
    ("pruned", lambda m: prune.identity(m.conv1, "weight"), ValueError,
     r"`tv_model.conv1` holds the tensors \{'weight_orig': .*'weight_mask'"),
    ("hook", _hook("layer2.0.conv1"), ValueError, r"`tv_model.layer2.0.conv1` has forward_hooks"),
    ("tied", _tie("layer4.0.bn1", "layer4.1.bn1"), ValueError,
     r"`tv_model.layer4.1.bn1.weight` is the same tensor as `tv_model.layer4.0.bn1.weight` \(tied"),
    ("mixed_mode", _mixed_mode, ValueError,
     r"`tv_model.layer1.0.bn1` is in eval mode while `tv_model` is in training"),
    ("instance_forward", _instance_forward, ValueError, r"`tv_model.layer3.0.forward` is replaced"),
    ("extra_module", lambda m: m.add_module("dropout", nn.Dropout()), ValueError,
     r"`tv_model.dropout` \(torch.nn.Dropout\) is not part of"),
    ("extra_parameter", lambda m: m.layer1[0].register_parameter("scale", nn.Parameter(torch.ones(1))),
     ValueError, r"`tv_model.layer1.0` holds the tensors \{'scale': \(1,\)\}"),
    ("mixed_dtype", lambda m: m.fc.half(), ValueError,
     r"one floating dtype; received .* dtypes \['torch.float16'"),
]


@pytest.mark.parametrize(
    "mutate, error, message", [d[1:] for d in TV_DEPARTURES], ids=[d[0] for d in TV_DEPARTURES]
)
def test_from_torchvision_refuses_changed_models(mutate, error, message):
    """Built on the meta device: the checks read only the architecture."""
    with torch.device("meta"):
        tv = torchvision.models.resnet18(weights=None)
        mutate(tv)
    with pytest.raises(error, match=message):
        tb.interop.torchvision.from_torchvision(tv)


# --- torchblocks -> torchvision -------------------------------------------------------------------

class _SubResNet(tb.models.ResNet):
    """A user's subclass: its forward could differ, so it is refused."""


BODY = "residual.body"
# Departures from what tb.models.ResNet builds: (id, model class, ResNet kwargs, mutation, error,
# message).
TB_DEPARTURES = [
    ("separable", tb.models.ResNet, {"conv": "separable"}, None, ValueError, "conv='separable'"),
    ("subclass", _SubResNet, {}, None, TypeError, r"_SubResNet \(a subclass"),
    ("sequential_head", tb.models.ResNet, {}, _set("fc", nn.Sequential), TypeError,
     r"`tb_model.fc` is a torch.nn.Sequential"),
    ("groupnorm", tb.models.ResNet, {},
     _set(f"layer1.0.{BODY}.bn1", lambda bn: nn.GroupNorm(8, bn.num_features)),
     TypeError, rf"`tb_model.layer1.0.{BODY}.bn1` is a torch.nn.GroupNorm"),
    ("gelu", tb.models.ResNet, {}, _set("layer2.0.act", lambda r: nn.GELU()), TypeError,
     r"`tb_model.layer2.0.act` is a torch.nn.GELU"),
    ("same_stem", tb.models.ResNet, {}, _set("conv1", lambda c: tb.Conv2d(3, 64, 7, 2, "same", bias=False)),
     ValueError, r"`tb_model.conv1` has padding=\(0, 0\)"),
    ("conv_activation", tb.models.ResNet, {},
     _set("conv1", lambda c: tb.Conv2d(3, 64, 7, 2, 3, bias=False, activation="relu")),
     ValueError, r"`tb_model.conv1` is configured as \(.*activation='relu'\); the conversion supports "
     r"only \(3, 64, .*bias=False\)"),
    ("same_block_conv", tb.models.ResNet, {},
     _set(f"layer1.0.{BODY}.conv2", lambda c: tb.Conv2d(64, 64, 3, 1, "same", bias=False)), ValueError,
     rf"`tb_model.layer1.0.{BODY}.conv2` is configured as \(64, 64, .*padding='same'"),
    ("torch_pool", tb.models.ResNet, {}, _set("maxpool", lambda p: nn.MaxPool2d(3, 2, 1)), TypeError,
     r"`tb_model.maxpool` is a torch.nn.MaxPool2d; .* only a torchblocks.pooling.MaxPool2d"),
    ("identity_shortcut", tb.models.ResNet, {}, _set("layer2.0.residual.shortcut", lambda s: nn.Identity()),
     TypeError, r"`tb_model.layer2.0.residual.shortcut` is a torch.nn.Identity"),
    ("conv_stride", tb.models.ResNet, {}, _set_attr("layer3.0.residual.shortcut.proj", "stride", (1, 1)),
     ValueError, r"`tb_model.layer3.0.residual.shortcut.proj` has stride=\(1, 1\)"),
    ("block_dilation", tb.models.ResNet, {}, _dilate(f"layer3.1.{BODY}.conv1"), ValueError,
     rf"`tb_model.layer3.1.{BODY}.conv1` has dilation=\(2, 2\)"),
    ("hook", tb.models.ResNet, {}, _hook(f"layer1.0.{BODY}.relu1"), ValueError,
     rf"`tb_model.layer1.0.{BODY}.relu1` has forward_hooks"),
    ("tied", tb.models.ResNet, {}, _tie(f"layer4.0.{BODY}.bn1", f"layer4.1.{BODY}.bn1"), ValueError,
     "tied weights"),
    ("mixed_mode", tb.models.ResNet, {}, lambda m: m.eval().layer4.train(), ValueError,
     r"`tb_model.layer4` is in training mode"),
    ("extra_module", tb.models.ResNet, {}, lambda m: m.add_module("drop", nn.Dropout()), ValueError,
     r"`tb_model.drop` \(torch.nn.Dropout\) is not part of"),
]


@RUNS
@given(
    arch=st.sampled_from(RUN_ARCHS),
    num_classes=st.integers(1, 12),
    dtype=st.sampled_from(DTYPES),
    training=st.booleans(),
    frozen=st.sampled_from([None, "conv1", "layer4", "fc"]),
    linear_head=st.booleans(),
)
def test_to_torchvision_exact(arch, num_classes, dtype, training, frozen, linear_head):
    model = tb.models.ResNet(arch, num_classes)
    if linear_head:  # what users do to fine-tune: a plain nn.Linear is a Dense without activation
        model.fc = nn.Linear(model.fc.in_features, num_classes + 1)
    model = model.to(dtype)
    _calibrate(model, dtype)
    model.train(training)
    if frozen:
        model.get_submodule(frozen).requires_grad_(False)
    tv = tb.interop.torchvision.to_torchvision(model)
    assert type(tv) is TVResNet and tv.fc.out_features == model.fc.out_features
    assert next(tv.parameters()).dtype == dtype
    _assert_same_flags(tv, model)
    _assert_same_outputs(tv, model, dtype)


@pytest.mark.parametrize(
    "cls, kwargs, mutate, error, message", [d[1:] for d in TB_DEPARTURES], ids=[d[0] for d in TB_DEPARTURES]
)
def test_to_torchvision_refuses_changed_models(cls, kwargs, mutate, error, message):
    with torch.device("meta"):
        model = cls("resnet18", 10, **kwargs)
        if mutate is not None:
            mutate(model)
    with pytest.raises(error, match=message):
        tb.interop.torchvision.to_torchvision(model)


# --- fixed cases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_every_architecture_maps_on_the_meta_device(arch):
    """resnet18..152 map both ways with torchvision's keys and shapes (no memory, no arithmetic)."""
    with torch.device("meta"):
        tv = getattr(torchvision.models, arch)(weights=None, num_classes=7)
        ours = getattr(tb.models, arch)(num_classes=7)
    model = tb.interop.torchvision.from_torchvision(tv)
    back = tb.interop.torchvision.to_torchvision(ours)
    assert model.arch == arch and model.num_classes == 7 and type(back) is TVResNet
    shapes = {k: v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert {k: v.shape for k, v in back.state_dict().items()} == shapes


def test_round_trip_keeps_state_mode_and_frozen_flags():
    tv = torchvision.models.resnet18(weights=None, num_classes=3)
    tv.layer1.requires_grad_(False)
    back = tb.interop.torchvision.to_torchvision(tb.interop.torchvision.from_torchvision(tv))
    assert back.training and back.fc.out_features == 3
    for key, value in tv.state_dict(keep_vars=True).items():
        assert torch.equal(back.state_dict()[key], value), key
    assert [p.requires_grad for p in back.parameters()] == [p.requires_grad for p in tv.parameters()]


@pytest.mark.parametrize(
    "mutate",
    # layer2 is 4x4 at 32x32 input: deep enough into the map that dilation 2 reaches other pixels
    # (on layer4's 1x1 map a dilated 3x3 conv sees only its centre and computes the same).
    [_set_attr("conv1", "stride", (1, 1)), _dilate("layer2.1.conv2")],
    ids=["stem_stride", "dilation"],
)
def test_oracle_sees_what_a_plain_state_dict_copy_gets_wrong(mutate):
    """What the conversion refuses, a bare ``load_state_dict`` (the old behaviour) accepts silently;
    the differential oracle tells the two apart by far more than its tolerance."""
    tv = torchvision.models.resnet50(weights=None)
    mutate(tv)
    _calibrate(tv, torch.float32)
    tv.eval()
    naive = tb.models.resnet50()
    naive.load_state_dict(tv.state_dict())
    x = torch.randn(INPUT_SHAPE)
    with torch.no_grad():
        expected, got = tv(x), naive.eval()(x)
    assert (got - expected).abs().max() > 1e-2 * expected.abs().max()


@pytest.mark.parametrize(
    "call, make, error, message",
    [
        ("from_torchvision", lambda: nn.Linear(2, 2), TypeError, "Expected a torchvision.models.ResNet"),
        ("from_torchvision", lambda: torchvision.models.resnext50_32x4d(weights=None), ValueError,
         "groups=32"),
        ("from_torchvision", lambda: torchvision.models.wide_resnet50_2(weights=None), ValueError,
         "width_per_group=128"),
        ("from_torchvision", lambda: torchvision.models.quantization.resnet18(), TypeError,
         r"QuantizableResNet \(a subclass"),
        ("from_torchvision", lambda: TVResNet(TVBasicBlock, [2, 2, 2, 2], norm_layer=nn.SyncBatchNorm),
         TypeError, "torch.nn.SyncBatchNorm"),
        ("to_torchvision", lambda: tb.models.SeparableConvNet(), TypeError, "torchblocks.models.ResNet"),
    ],
)
def test_rejects_other_models(call, make, error, message):
    with torch.device("meta"):
        model = make()
    with pytest.raises(error, match=message):
        getattr(tb.interop.torchvision, call)(model)
