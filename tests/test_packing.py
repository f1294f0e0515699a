"""The packed path's graph rewrites (``torchblocks._packing``): which conv calls are packed, which
activations and residual sums they fold in, when a sum may overwrite its second operand, which
ReLUs run in place, and ``BlockedSeparable``; each checked against the eager model, BatchNorm
statistics from a real batch (``reliability_cases.calibrate``)."""
import operator
from collections import Counter, OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchblocks as tb
from torchblocks import _onednn, _packing, models
from torchblocks.activations import ACTIVATION_NAMES
from torchblocks._onednn import PackedConv2d
from torchblocks._packing import BLOCK_BYTES, BlockedSeparable, PixelConv2d
from generated_models import SqueezeExcitation
from reliability_cases import calibrate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def pack_every_conv(monkeypatch):
    """Tiny test convs are not worth packing; pack them all to test the rewrites."""
    monkeypatch.setattr(_packing, "MAX_DENSE_PIXELS", 0)


def _seq(*layers):
    return nn.Sequential(OrderedDict((f"l{i}", m) for i, m in enumerate(layers)))


def _close(actual, expected, rtol=1e-4):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def _rewrites(optimized):
    """What the graph does now: packed convs by (activation, residual), in-place ReLU calls, and
    the ReLU calls left as they were."""
    graph = optimized.module
    packed = Counter()
    in_place = kept = 0
    for node in graph.graph.nodes:
        if node.op == "call_module":
            module = graph.get_submodule(node.target)
            if isinstance(module, PackedConv2d):
                packed[(module.act, module.residual)] += 1
            kept += type(module) is nn.ReLU
        elif node.op == "call_function":
            in_place += node.target is torch.relu_
            kept += node.target in (F.relu, torch.relu)
    return packed, in_place, kept


class Followers(nn.Module):
    """One conv call per rewrite ``_packing`` tells apart."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()  # one instance called three times, as in torchvision's ResNet blocks
        self.a = tb.Conv2d(4, 4, 3, padding="same")
        self.bn = tb.BatchNorm(4)  # folded into ``a``: the ReLU after it is fused into ``a``
        self.b, self.c, self.d = tb.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), tb.Conv2d(4, 4, 3, padding="same")
        self.e, self.f = tb.Conv2d(4, 4, 1, activation="relu6"), nn.Conv2d(4, 4, 1)
        self.g = tb.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.a(x)))          # fused: ('relu', 'none')
        z = self.relu(self.b(y * 2) + y)           # y read before b runs: summed into y, ('relu', 'add_')
        w = F.silu(self.c(z))                      # fused: ('swish', 'none')
        v = self.d(w) + x                          # x is an input: summed into a new tensor, ('none', 'add')
        u = self.relu(v * w)                       # a product nothing else reads: in place
        s = torch.sigmoid(self.e(u))               # e's own ReLU6 is fused; the sigmoid is not
        t = self.f(s) + s.flip(-1)                 # s also read after f: ('none', 'add')
        return F.relu(t) + self.g(t)               # t read twice: this ReLU stays, g's sum is new


def test_each_call_site_folds_what_only_it_reads():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7)
    model = calibrate(Followers(), x)
    optimized = tb.optimize_for_inference(model, x)
    packed, in_place, kept = _rewrites(optimized)
    assert packed == Counter({
        ("relu", "none"): 1, ("relu", "add_"): 1, ("swish", "none"): 1, ("none", "add"): 3,
        ("hardtanh", "none"): 1,
    })
    assert (in_place, kept) == (1, 1)
    other = torch.randn_like(x)
    with torch.no_grad():
        _close(optimized(x), model(x))
        _close(optimized(other), model(other))
    assert type(model.relu) is nn.ReLU and not model.relu.inplace  # the shared module is untouched


# Keras activation name -> the oneDNN post-op a packed tb.Conv2d fuses it as; the other names
# (softmax, elu, mish, ...) have none, and the conv is left as it is.
FUSED_KERAS_ACTIVATIONS = {
    "relu": "relu", "relu6": "hardtanh", "silu": "swish", "swish": "swish", "sigmoid": "sigmoid",
    "tanh": "tanh", "hard_silu": "hardswish", "hard_swish": "hardswish", "hard_sigmoid": "hardsigmoid",
    "gelu": "gelu", "leaky_relu": "leaky_relu",
}


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_a_named_activation_applied_inside_the_layer_is_fused_or_the_conv_left_alone(name):
    # A named activation is applied by the leaf layer itself (no ``act`` child): the packed conv
    # must apply it too, and a BatchNorm after the layer (after its activation) is not folded.
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7)
    model = calibrate(_seq(tb.Conv2d(4, 6, 3, padding="same", activation=name), tb.BatchNorm(6),
                           tb.Conv2d(6, 5, 1, activation=name)), x)
    assert tb.fusion.conv_bn_pairs(model) == ([("l0", "l1")] if name == "linear" else [])
    optimized = tb.optimize_for_inference(model, x)
    called = [optimized.module.get_submodule(n.target) for n in optimized.module.graph.nodes if n.op == "call_module"]
    post_op = FUSED_KERAS_ACTIVATIONS.get(name)
    if post_op is not None and _onednn.activation_available(post_op):
        assert [m.act for m in called if isinstance(m, PackedConv2d)] == [post_op, post_op]
    elif name != "linear":
        assert [type(m) for m in called] == [tb.Conv2d, tb.BatchNorm, tb.Conv2d]
    with torch.no_grad():
        _close(optimized(x), model(x))
        _close(optimized(-3 * x), model(-3 * x))


class SumCases(nn.Module):
    """``conv(x) + other`` with every kind of ``other``: only a dead tensor of its own is overwritten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 4, 1)
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = self.convs[0](a * 2) + a               # a: a conv's output, read only before: overwritten
        c = self.convs[1](b) + b                   # b is what the conv reads: a new tensor
        d = self.convs[2](c) + b.permute(0, 1, 3, 2)  # a view of b: a new tensor
        e = self.convs[3](d) + c                   # c is read again below: a new tensor
        return e + c


def test_a_sum_overwrites_its_other_operand_only_where_that_is_dead_and_no_view():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)
    model = SumCases().eval()
    optimized = tb.optimize_for_inference(model, x)
    residuals = Counter(m.residual for m in optimized.modules() if isinstance(m, PackedConv2d))
    assert residuals == Counter({"none": 1, "add_": 1, "add": 3})
    with torch.no_grad():
        _close(optimized(x), model(x))
        _close(optimized(x), model(x))  # a second call reads no tensor the first one overwrote


def test_1x1_convs_on_single_pixels_run_as_matrix_products(monkeypatch):
    monkeypatch.setattr(_packing, "MAX_DENSE_PIXELS", 1)
    torch.manual_seed(0)
    x = torch.randn(2, 64, 24, 24)
    # A squeeze-excitation conv: 1x1 on one pixel. Its ReLU then runs in place.
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(64, 8, 1),
                          nn.ReLU()).eval()
    optimized = tb.optimize_for_inference(model, x)
    graph = optimized.module
    kinds = [type(graph.get_submodule(n.target)) for n in graph.graph.nodes if n.op == "call_module"]
    assert kinds == [PackedConv2d, PixelConv2d]  # the pooling to one pixel is a mean
    assert _rewrites(optimized) == (Counter({("relu", "none"): 1}), 1, 0)
    pixel = [m for m in optimized.modules() if isinstance(m, PixelConv2d)][0]
    with torch.no_grad():
        _close(optimized(x), model(x))
        wide = torch.randn(2, 64, 3, 3)  # more than one pixel: the conv itself runs
        _close(pixel(wide), model[3](wide))


def test_squeeze_excitation_scales_its_input_in_place_and_pools_with_a_mean():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    se = SqueezeExcitation(4)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), se, nn.Conv2d(4, 4, 1)).eval()
    optimized = tb.optimize_for_inference(model, x)
    calls = [(n.op, n.target) for n in optimized.module.graph.nodes if n.op in ("call_method", "call_function")]
    # The conv output is read by the pooling first, then scaled in place: its last use.
    assert ("call_method", "mean") in calls and ("call_method", "mul_") in calls
    assert not any(target is operator.mul for _, target in calls)
    with torch.no_grad():
        _close(optimized(x), model(x))


def test_a_product_read_again_later_is_not_computed_in_place():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6)

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * torch.sigmoid(y.mean((2, 3), keepdim=True)) + y

    model = Reused().eval()
    optimized = tb.optimize_for_inference(model, x)
    calls = [n.target for n in optimized.module.graph.nodes if n.op == "call_method"]
    assert "mul_" not in calls
    with torch.no_grad():
        _close(optimized(x), model(x))


def test_keras_shortcuts_keep_reading_the_pre_relu_input():
    # Keras' identity block: the shortcut reads x before the block's leading ReLU, which stays out
    # of place; the last ReLU, sole reader of the pointwise conv, is fused.
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7)
    block = calibrate(tb.Residual(_seq(
        nn.ReLU(), tb.SeparableConv2d(4, 4, 3, padding="same"), tb.BatchNorm(4), nn.ReLU())), x)
    optimized = tb.optimize_for_inference(block, x)
    packed, in_place, kept = _rewrites(optimized)
    assert (packed, in_place, kept) == (Counter({("none", "none"): 1, ("relu", "none"): 1}), 0, 1)
    with torch.no_grad():
        _close(optimized(x), block(x))


@pytest.mark.parametrize("make", [
    lambda: tb.SeparableConv2d(8, 12, 3, 1, "same"),
    lambda: tb.SeparableConv2d(8, 12, 3, 2, "same", depth_multiplier=2, activation="relu6"),
    lambda: tb.SeparableConv2d(8, 12, 5, 2, "valid", bias=False),
])
@pytest.mark.parametrize("batch", [2, 5])
def test_blocked_separable_equals_the_layer_in_any_number_of_blocks(make, batch, monkeypatch):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(batch, 8, 13, 13)
    monkeypatch.setattr(_packing, "BLOCK_BYTES", 1)  # one sample a block: the batch spans blocks
    optimized = tb.optimize_for_inference(layer, x)
    (blocked,) = [m for m in optimized.modules() if isinstance(m, BlockedSeparable)]
    with torch.no_grad():
        expected = layer(x)
        for block_bytes in (BLOCK_BYTES, 1, 2 * x[0].numel() * 4):  # all, 1 or 2 samples per block
            blocked.block_bytes = block_bytes
            _close(optimized(x), expected, rtol=1e-5)


def test_separable_layers_whose_batch_spans_blocks_run_blocked_inside_a_network(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(8, 16, 24, 24)  # 36 KiB a sample: 4 MiB blocks hold 113, so shrink the blocks
    net = calibrate(_seq(tb.SeparableConv2d(16, 16, 3, padding="same"), tb.BatchNorm(16), nn.ReLU(),
                         tb.SeparableConv2d(16, 8, 3, 2, "valid")), x)
    monkeypatch.setattr(_packing, "BLOCK_BYTES", 3 * 16 * 24 * 24 * 4)  # 3 samples a block
    optimized = tb.optimize_for_inference(net, x)
    blocked = [m for m in optimized.modules() if isinstance(m, BlockedSeparable)]
    # The BN folds into the first pointwise conv and the ReLU after the layer fuses into it.
    assert len(blocked) == 2 and blocked[0].pointwise.relu and not blocked[1].pointwise.relu
    assert all(isinstance(conv, PackedConv2d) for b in blocked for conv in (b.depthwise, b.pointwise))
    with torch.no_grad():
        _close(optimized(x), net(x))


# model -> (input shape, packed convs by (activation, residual), in-place ReLUs, ReLUs left).
# Xception: 2 stem + 4 shortcut + 2 x 34 separable convs; 24 ReLUs after a BN fused; its 12 sums
# fused into the conv that ends each block (written into the other branch, dead after); the ReLU
# opening each of the 11 identity-shortcut blocks reads the shortcut's input and stays.
# ResNet-18: 17 + 3 shortcut convs; each block's sum, and the ReLU after it, fused into its last conv.
PACKED_MODELS = {
    "xception": ((1, 3, 71, 71), {("relu", "none"): 24, ("none", "add_"): 12, ("none", "none"): 38}, 0, 11),
    "resnet18": ((2, 3, 32, 32), {("relu", "none"): 9, ("relu", "add_"): 8, ("none", "none"): 3}, 0, 0),
}


@pytest.mark.parametrize("name", sorted(PACKED_MODELS))
def test_default_path_packs_every_conv_of_the_models(name):
    shape, packed_expected, in_place_expected, kept_expected = PACKED_MODELS[name]
    x = torch.randn(shape)
    model = calibrate(models.get_model(name, num_classes=10), x)
    optimized = tb.optimize_for_inference(model, x)
    assert isinstance(optimized.module, torch.fx.GraphModule)  # flattened: intermediates freed early
    called = [optimized.module.get_submodule(n.target) for n in optimized.module.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, (nn.Identity, tb.BatchNorm)) for m in called)  # folded BNs are gone
    assert _rewrites(optimized) == (Counter(packed_expected), in_place_expected, kept_expected)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last), torch.randn(shape)):
            _close(optimized(inp), model(inp))
