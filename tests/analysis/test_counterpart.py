"""``standard_counterpart`` and ``compare``: separable and depthwise convs become full convs of
the same shape; single-layer ratios equal the textbook ``m·(1/C_out + 1/k²)``."""
import warnings

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis
from torchblocks.models import get_model


COUNTERPART_MODEL = nn.Sequential(
    tb.SeparableConv2d(4, 8, 5, 2, "same", depth_multiplier=2, activation="relu"),
    nn.Sequential(tb.DepthwiseConv2d(8, 3, padding=(1, 2), dilation=(1, 2), bias=False)),
    tb.Conv2d(8, 6, 1),
)


def test_standard_counterpart_replaces_each_separable_and_depthwise_conv():
    original = COUNTERPART_MODEL
    counterpart = analysis.standard_counterpart(original)
    first, second = counterpart[0], counterpart[1][0]
    assert type(first) is tb.Conv2d and type(second) is tb.Conv2d
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (4, 8, (5, 5), (2, 2))
    assert first.padding_spec == "same" and first.bias is not None and isinstance(first.act, nn.ReLU)
    assert (second.in_channels, second.out_channels, second.kernel_size) == (8, 8, (3, 3))
    assert second.padding_spec == (1, 2) and second.dilation == (1, 2) and second.bias is None
    assert type(counterpart[2]) is tb.Conv2d and counterpart[2] is not original[2]
    # The original is untouched.
    assert isinstance(original[0], tb.SeparableConv2d) and isinstance(original[1][0], tb.DepthwiseConv2d)
    x = torch.randn(2, 4, 11, 12)
    assert counterpart(x).shape == original(x).shape == (2, 6, 6, 6)
    # 1: 8·4·25 per position at 6×6, + ReLU; 2: 8·8·9 at 6×6; 3: 6·8.
    positions = 2 * 36
    assert analysis.count(counterpart, x).macs == positions * (8 * 4 * 25 + 8 + 8 * 8 * 9 + 6 * 8)


def test_standard_counterpart_of_a_layer_and_errors():
    layer = tb.SeparableConv2d(3, 7, (3, 5), 2, "valid", activation="tanh")
    full = analysis.standard_counterpart(layer)
    assert type(full) is tb.Conv2d and full.kernel_size == (3, 5) and isinstance(full.act, nn.Tanh)
    assert (full.in_channels, full.out_channels, full.stride, full.padding_spec) == (3, 7, (2, 2), "valid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(tb.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="Expected an eager nn.Module"):
        analysis.standard_counterpart(scripted)


def test_standard_counterpart_of_the_book_model_has_keras_conv2d_count():
    counterpart = analysis.standard_counterpart(get_model("SeparableConvNet"))
    # Conv2D(3→32), (32→64), (64→64), (64→128), (128→64), (64→128), all 3×3 with bias, + Dense.
    convs = [(3, 32), (32, 64), (64, 64), (64, 128), (128, 64), (64, 128)]
    expected = sum(9 * i * o + o for i, o in convs) + 128 * 32 + 32 + 32 * 10 + 10
    assert expected == 282_282
    assert sum(p.numel() for p in counterpart.parameters()) == expected
    assert not any(isinstance(m, tb.SeparableConv2d) for m in counterpart.modules())


COMPARE_LAYERS = [(16, 32, 3, 1), (8, 64, 5, 2), (32, 16, 7, 3)]


@pytest.mark.parametrize("c_in, c_out, k, s", COMPARE_LAYERS)
def test_compare_single_layer_matches_theory(c_in, c_out, k, s):
    layer = tb.SeparableConv2d(c_in, c_out, k, s, "same")
    result = analysis.compare(layer, torch.randn(1, c_in, 12, 12))
    assert result.theoretical_ratio == pytest.approx(1 / c_out + 1 / (k * k), rel=1e-12)
    assert result.macs_ratio == pytest.approx(result.theoretical_ratio, rel=1e-12)
    assert result.params_ratio == (k * k * c_in + c_in * c_out + c_out) / (k * k * c_in * c_out + c_out)
    record = result.to_dict()
    assert record["macs"] == result.model.macs and record["counterpart_flops"] == 2 * result.counterpart.macs
    assert record["counterpart"] == "standard_counterpart" and record["latency_ms"] is None


def test_compare_with_latency_and_explicit_counterpart():
    sep = tb.SeparableConv2d(8, 8, 3, padding="same")
    dense = tb.Conv2d(8, 8, 3, padding="same")
    result = analysis.compare(sep, torch.randn(1, 8, 16, 16), dense, latency=True, repeats=3)
    assert result.counterpart_name == "Conv2d" and result.theoretical_ratio == pytest.approx(1 / 8 + 1 / 9)
    assert result.latency_ms > 0 and result.counterpart_latency_ms > 0
    assert result.speedup == pytest.approx(result.counterpart_latency_ms / result.latency_ms)
