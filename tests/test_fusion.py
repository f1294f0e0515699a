"""BatchNorm folding (``fuse_bn``) and ``optimize_for_inference``.

The oracle is the eval-mode model with BatchNorm statistics from a real batch and random affine
parameters; expected BatchNorm counts follow from each model's structure (Keras Xception has 40
BatchNormalization layers, torchvision's ResNet-18 20, ResNet-50 53).
"""
import copy
import io
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import models
from torchblocks import fusion
from torchblocks.fusion import (
    _BLOCK_BYTES, BlockedSeparable, PackedConv2d, conv_bn_pairs, inference_candidates, relu_plan,
)
from reliability_cases import calibrate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")




def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, (tb.BatchNorm, nn.BatchNorm2d)) for m in model.modules())


class ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


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


FAST_PATHS = [
    "eager", "fuse_bn", "fuse_bn+channels_last", "fuse_bn+channels_last+packed", "frozen_torchscript",
    "channels_last+frozen_torchscript",
]


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    body = _seq(tb.SeparableConv2d(4, 8, 3, 2, "same"), tb.BatchNorm(8), nn.ReLU())
    return calibrate(tb.Residual(body, tb.Projection(4, 8, 2, norm=True)), x), x


@pytest.mark.parametrize("path", FAST_PATHS)
def test_optimize_for_inference_paths_match_eager(path, small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x, method=path)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)


def test_optimize_for_inference_default_and_original_untouched(small_net):
    model, x = small_net
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimized = tb.optimize_for_inference(model, x)
    assert callable(optimized) and isinstance(optimized, nn.Module)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)
    assert count_bn(model) == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_optimize_for_inference_rejects_unknown_path(small_net):
    model, x = small_net
    with pytest.raises(ValueError, match=r"argument `method`.*Received method='tensorrt'"):
        tb.optimize_for_inference(model, x, method="tensorrt")


def test_inference_candidates_are_the_documented_ones():
    names = inference_candidates(nn.Identity(), (torch.zeros(1),))
    assert sorted(names) == sorted(FAST_PATHS + ["compile", "channels_last+compile"])


@pytest.mark.slow
def test_optimize_for_inference_compiled_path(small_net):
    model, x = small_net
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = tb.optimize_for_inference(model, x, method="compile")
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=1e-4, atol=1e-4)


# conv -> (packing input size, another input size): the packed weight is laid out for the first,
# and must give the same values on the second.
PACKABLE = {
    "same_s1": (lambda: tb.Conv2d(4, 6, 3, padding="same"), (1, 4, 9, 9), (3, 4, 7, 10)),
    "valid_s2_dilated": (lambda: tb.Conv2d(4, 6, 3, 2, dilation=2), (2, 4, 11, 11), (1, 4, 14, 9)),
    "depthwise_m2": (lambda: tb.DepthwiseConv2d(4, 3, 1, "same", depth_multiplier=2), (1, 4, 8, 8), (2, 4, 5, 6)),
    "torch_grouped_nobias": (lambda: nn.Conv2d(4, 6, 1, groups=2, bias=False), (1, 4, 6, 6), (2, 4, 3, 5)),
}


def _packed(name, relu=False):
    make, size, other = PACKABLE[name]
    torch.manual_seed(0)
    conv = make().eval()
    return conv, PackedConv2d(conv, list(size), relu=relu), torch.randn(size), torch.randn(other)


def _close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("name", sorted(PACKABLE))
def test_packed_conv_matches_the_conv_at_any_size(name, relu):
    conv, packed, x, other = _packed(name, relu)
    assert packed.onednn  # CPU float32 with oneDNN: the packed path is the one under test
    with torch.no_grad():
        for inp in (x, other, other.contiguous(memory_format=torch.channels_last)):
            expected = conv(inp).relu() if relu else conv(inp)
            _close(packed(inp), expected)


def test_packed_conv_keeps_only_the_packed_weight_and_round_trips():
    conv, packed, x, _ = _packed("same_s1", relu=True)
    assert packed.packed.is_mkldnn and [n for n, _ in packed.named_buffers()] == ["bias"]
    state = packed.state_dict()
    assert list(state) == ["bias", "weight"] and torch.equal(state["weight"], conv.weight.detach())
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(packed), torch.load(buffer, weights_only=False), torch.jit.script(packed)]
    fresh = PackedConv2d(tb.Conv2d(4, 6, 3, padding="same"), [1, 4, 9, 9], relu=True)
    assert str(fresh.load_state_dict(state)) == "<All keys matched successfully>"
    with torch.no_grad():
        expected = packed(x)
        for other in copies + [fresh]:
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


def test_packed_conv_in_float64_runs_the_plain_conv_and_repacks_in_float32():
    conv, packed, x, _ = _packed("valid_s2_dilated")
    double = copy.deepcopy(packed).double()
    assert not double.onednn and double.packed.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(double(x.double()), conv.double()(x.double()), rtol=1e-12, atol=1e-12)
        single = double.float()
        assert single.onednn and single.packed.is_mkldnn
        torch.testing.assert_close(single(x), packed(x), rtol=0, atol=0)


def test_packed_conv_failed_load_leaves_it_unchanged():
    _, packed, x, _ = _packed("same_s1")
    with torch.no_grad():
        before = packed(x)
        with pytest.raises(RuntimeError, match=r"size mismatch for weight: copying a param with shape \(3, 3\)"):
            packed.load_state_dict({"weight": torch.zeros(3, 3), "bias": torch.zeros(6)})
        torch.testing.assert_close(packed(x), before, rtol=0, atol=0)


def test_packed_conv_needs_a_static_zero_padding():
    with pytest.raises(ValueError, match=r"argument `conv`.*static zero padding.*padding='same'"):
        PackedConv2d(nn.Conv2d(4, 4, 3, padding="same"), [1, 4, 8, 8])
    with pytest.raises(ValueError, match=r"padding_mode='reflect'"):
        PackedConv2d(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), [1, 4, 8, 8])


def test_packed_conv_names_the_layer_on_a_wrong_input():
    _, packed, _, _ = _packed("depthwise_m2")
    with pytest.raises(ValueError, match=r"DepthwiseConv2d expects \(N, 4, H, W\) input"):
        packed(torch.randn(1, 5, 8, 8))


class ReluCases(nn.Module):
    """One ReLU of each kind ``relu_plan`` tells apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = tb.Conv2d(4, 4, 3, padding="same")
        self.bn = nn.Identity()  # a folded BatchNorm: looked through
        self.fused = nn.ReLU()  # only reader of the conv output: fused into the conv
        self.other = tb.Conv2d(4, 4, 1)
        self.inplace = nn.ReLU()  # only reader of a sum: in place
        self.shared_input = nn.ReLU()  # its input feeds the sum too: left alone
        self.last = tb.Conv2d(4, 4, 1)
        self.fused_inplace = nn.ReLU(inplace=True)  # in place already, still fused
        self.twice = nn.ReLU()  # called twice: left alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fused(self.bn(self.conv(x)))
        s = self.other(y)
        z = self.shared_input(s) + s
        return self.twice(self.twice(self.fused_inplace(self.last(self.inplace(z + x)))))


def test_relu_plan_fuses_or_runs_in_place_only_the_sole_readers():
    assert relu_plan(ReluCases()) == ({"conv": "fused", "last": "fused_inplace"}, ["inplace"])
    model, x = ReluCases().eval(), torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        _close(tb.optimize_for_inference(model, x)(x), model(x), rtol=1e-4)


def test_relu_plan_keeps_keras_shortcuts_reading_the_pre_relu_input():
    # Keras' identity block: the shortcut reads x before the block's leading ReLU.
    block = tb.Residual(_seq(nn.ReLU(), tb.SeparableConv2d(4, 4, 3, padding="same"), tb.BatchNorm(4), nn.ReLU()))
    # The leading ReLU (l0) stays out of place; the last one, sole reader of the conv, is fused.
    assert relu_plan(tb.fuse_bn(block)) == ({"body.l1.pointwise": "body.l3"}, [])


@pytest.mark.parametrize("make", [
    lambda: tb.SeparableConv2d(8, 12, 3, 1, "same"),
    lambda: tb.SeparableConv2d(8, 12, 3, 2, "same", depth_multiplier=2, activation="relu6"),
    lambda: tb.SeparableConv2d(8, 12, 5, 2, "valid", bias=False),
])
@pytest.mark.parametrize("batch", [1, 5])
def test_blocked_separable_equals_the_layer_in_any_number_of_blocks(make, batch):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(batch, 8, 13, 13)
    optimized = tb.optimize_for_inference(layer, x)
    assert isinstance(optimized, BlockedSeparable) and isinstance(optimized.pointwise, PackedConv2d)
    with torch.no_grad():
        expected = layer(x)
        for block_bytes in (_BLOCK_BYTES, 1, 2 * x[0].numel() * 4):  # 1 or 2 samples per block
            optimized.block_bytes = block_bytes
            _close(optimized(x), expected)


# model -> (input shape, convs, ReLUs fused into a conv, ReLUs in place, ReLUs left as they are).
# Xception: 2 stem + 4 shortcut + 2 x 34 separable convs; the ReLU opening each of its 11
# identity-shortcut blocks reads the shortcut's input and stays. ResNet-18: 17 + 3 shortcut convs;
# each block's ReLU after the sum runs in place. A batch of 1 fits in one block: no BlockedSeparable.
PACKED_MODELS = {
    "xception": ((1, 3, 71, 71), 74, 24, 0, 11),
    "resnet18": ((2, 3, 32, 32), 20, 9, 8, 0),
}


@pytest.mark.parametrize("name", [n for n in PACKED_MODELS if n in models.MODEL_NAMES])
def test_default_path_packs_every_conv_of_the_models(name):
    shape, convs, fused_relus, inplace_relus, kept_relus = PACKED_MODELS[name]
    x = torch.randn(shape)
    model = calibrate(models.get_model(name, num_classes=10), x)
    optimized = tb.optimize_for_inference(model, x)
    assert isinstance(optimized, torch.fx.GraphModule)  # flattened: intermediates freed early
    kinds = [type(m) for m in optimized.modules()]
    assert (kinds.count(PackedConv2d), kinds.count(BlockedSeparable)) == (convs, 0)
    called = [optimized.get_submodule(n.target) for n in optimized.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, nn.Identity) for m in called)  # folded BNs and fused ReLUs are gone
    assert sum(m.relu for m in optimized.modules() if isinstance(m, PackedConv2d)) == fused_relus
    relus = [m.inplace for m in optimized.modules() if isinstance(m, nn.ReLU)]
    assert (relus.count(True), relus.count(False)) == (inplace_relus, kept_relus)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last), torch.randn(shape)):
            _close(optimized(inp), model(inp), rtol=1e-4)


def test_separable_layers_whose_batch_spans_blocks_run_blocked_inside_a_network():
    torch.manual_seed(0)
    x = torch.randn(8, 16, 24, 24)  # 36 KiB a sample: 4 MiB blocks hold 113, so shrink the blocks below
    net = _seq(tb.SeparableConv2d(16, 16, 3, padding="same"), tb.BatchNorm(16), nn.ReLU(),
               tb.SeparableConv2d(16, 8, 3, 2, "valid"))
    net = calibrate(net, x)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fusion, "_BLOCK_BYTES", 3 * 16 * 24 * 24 * 4)  # 3 samples a block
        optimized = tb.optimize_for_inference(net, x)
    blocked = [m for m in optimized.modules() if isinstance(m, BlockedSeparable)]
    assert len(blocked) == 2 and blocked[0].pointwise.relu and not blocked[1].pointwise.relu
    with torch.no_grad():
        _close(optimized(x), net(x), rtol=1e-4)


def test_default_path_scripts_copies_and_pickles(small_net):
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x)
    buffer = io.BytesIO()
    torch.save(optimized, buffer)
    buffer.seek(0)
    with torch.no_grad():
        expected = optimized(x)
        for other in (torch.jit.script(optimized), copy.deepcopy(optimized), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


def test_default_path_without_onednn_keeps_plain_convs_and_stays_exact(small_net, monkeypatch):
    # A torch built without oneDNN (or without the ops inductor uses) gets the same path, unpacked.
    monkeypatch.setattr(fusion, "_onednn_packing_available", lambda: False)
    model, x = small_net
    optimized = tb.optimize_for_inference(model, x)
    assert not any(isinstance(m, PackedConv2d) for m in optimized.modules())
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)
