"""``optimize_for_inference``: every path against the eval-mode model, ``relu_plan`` and
``BlockedSeparable``; BatchNorm statistics come from a real batch (``reliability_cases.calibrate``)."""
import copy
import io
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import models
from torchblocks import _onednn, inference
from torchblocks._onednn import PackedConv2d
from torchblocks.inference import _BLOCK_BYTES, BlockedSeparable, inference_candidates, relu_plan
from reliability_cases import calibrate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _seq(*layers):
    return nn.Sequential(OrderedDict((f"l{i}", m) for i, m in enumerate(layers)))


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
    assert sum(isinstance(m, tb.BatchNorm) for m in model.modules()) == 2
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


def _close(actual, expected, rtol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))



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
        patch.setattr(inference, "_BLOCK_BYTES", 3 * 16 * 24 * 24 * 4)  # 3 samples a block
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


def test_default_path_without_onednn_falls_back_with_one_warning(small_net, monkeypatch):
    # A torch built without oneDNN, or one that renamed the private ops: the probe says no.
    monkeypatch.setattr(_onednn, "available", lambda: False)
    monkeypatch.setattr(_onednn, "unavailable_reason", lambda: "probe failed")
    model, x = small_net
    with pytest.warns(RuntimeWarning, match=r"unavailable \(probe failed\); using method 'fuse_bn\+channels_last'"):
        optimized = tb.optimize_for_inference(model, x)
    assert not any(isinstance(m, PackedConv2d) for m in optimized.modules())
    with torch.no_grad():
        _close(optimized(x), model(x), rtol=1e-4)
    with pytest.raises(NotImplementedError, match="needs oneDNN weight packing, which is unavailable here: probe failed"):
        tb.optimize_for_inference(model, x, method="fuse_bn+channels_last+packed")

