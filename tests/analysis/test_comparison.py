"""``analysis.compare``: ratios (model / counterpart, never a division by zero), what was replaced,
a warning when nothing was, and a readable table from ``print()``."""
import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis
from torchblocks.analysis.comparison import SLOWER_NOTE, Comparison

COMPARE_LAYERS = [(16, 32, 3, 1), (8, 64, 5, 2), (32, 16, 7, 3)]


@pytest.mark.parametrize("c_in, c_out, k, s", COMPARE_LAYERS)
def test_single_layer_matches_theory(c_in, c_out, k, s):
    layer = tb.SeparableConv2d(c_in, c_out, k, s, "same")
    result = analysis.compare(layer, torch.randn(1, c_in, 12, 12))
    assert result.theoretical_ratio == pytest.approx(1 / c_out + 1 / (k * k), rel=1e-12)
    assert result.macs_ratio == pytest.approx(result.theoretical_ratio, rel=1e-12)
    assert result.params_ratio == (k * k * c_in + c_in * c_out + c_out) / (k * k * c_in * c_out + c_out)
    record = result.to_dict()
    assert record["macs"] == result.model.macs and record["counterpart_flops"] == 2 * result.counterpart.macs
    assert record["counterpart"] == "standard_counterpart" and record["latency_ms"] is None
    assert record["replaced"] == [f"model: SeparableConv2d -> full {k}x{k} conv {c_in}->{c_out}"]


def test_grouped_layer_ratio_is_one_over_groups():
    conv = nn.Conv2d(8, 16, 3, groups=4, bias=False)
    result = analysis.compare(conv, torch.randn(2, 8, 7, 7))
    assert result.theoretical_ratio == result.macs_ratio == 0.25


def test_latency_and_an_explicit_counterpart():
    sep = tb.SeparableConv2d(8, 8, 3, padding="same")
    dense = tb.Conv2d(8, 8, 3, padding="same")
    result = analysis.compare(sep, torch.randn(1, 8, 16, 16), dense, latency=True, repeats=3)
    assert result.counterpart_name == "Conv2d" and result.theoretical_ratio == pytest.approx(1 / 8 + 1 / 9)
    assert result.replaced is None
    assert result.latency_ms > 0 and result.counterpart_latency_ms > 0
    assert result.time_ratio == pytest.approx(result.latency_ms / result.counterpart_latency_ms)


def test_latency_needs_real_tensors():
    with torch.device("meta"):
        layer = tb.SeparableConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="Timing needs real tensors"):
        analysis.compare(layer, torch.randn(1, 3, 8, 8), latency=True)


def test_nothing_to_replace_is_said_and_nothing_divides_by_zero():
    with pytest.warns(RuntimeWarning, match="ReLU: nothing to replace"):
        result = analysis.compare(nn.ReLU(), torch.randn(2, 3, 4, 4))
    assert result.replaced == ()
    assert result.params_ratio is None and result.macs_ratio == 1.0  # 0 parameters, 96 MACs each
    text = str(result)
    assert "nothing to replace" in text and "-: no ratio" in text
    with pytest.warns(RuntimeWarning, match="Identity: nothing to replace"):
        assert analysis.compare(nn.Identity(), torch.randn(3)).macs_ratio is None


def test_print_gives_a_table_with_the_kinds_of_macs():
    model = nn.Sequential(tb.SeparableConv2d(3, 8, 3, activation="relu"), tb.BatchNorm(8))
    result = analysis.compare(model, torch.randn(1, 3, 6, 6))
    lines = str(result).splitlines()
    assert lines[0] == "Sequential vs standard_counterpart, input (1, 3, 6, 6)"
    assert lines[2].split() == ["Sequential", "standard_counterpart", "ratio", "model/counterpart"]
    rows = {line[:24].strip(): line[24:].split() for line in lines[4:10]}
    n = 16
    assert rows["params (trainable)"] == [f"{27 + 24 + 8 + 16:,}", f"{216 + 8 + 16:,}", "0.3125"]
    assert rows["MACs"][:2] == [f"{n * (27 + 24 + 8 + 16):,}", f"{n * (216 + 8 + 16):,}"]
    assert rows["conv + dense"][:2] == [f"{n * 51:,}", f"{n * 216:,}"]
    assert rows["normalization"] == [f"{n * 16}", f"{n * 16}", "1.0000"]
    assert rows["activations"][:2] == [f"{n * 8}", f"{n * 8}"]
    assert "replaced: 0: SeparableConv2d -> full 3x3 conv 3->8" in lines[-3]
    assert "Comparison(" not in str(result) and repr(result).startswith("Comparison(")


def test_a_slower_model_says_why():
    report = analysis.count(tb.SeparableConv2d(8, 8, 3), torch.randn(1, 8, 5, 5))
    full = analysis.count(tb.Conv2d(8, 8, 3), torch.randn(1, 8, 5, 5))
    slower = Comparison("sep", report, full, latency_ms=2.2, counterpart_latency_ms=1.0)
    assert slower.time_ratio == 2.2
    assert "ms per call" in str(slower) and SLOWER_NOTE in str(slower)
    faster = Comparison("sep", report, full, latency_ms=0.5, counterpart_latency_ms=1.0)
    assert SLOWER_NOTE not in str(faster)
