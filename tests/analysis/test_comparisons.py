"""``analysis.comparisons``: the ``torchblocks compare`` job's grid, pairs and table."""
import pytest

import torchblocks as tb
from torchblocks.analysis import comparisons


def test_layer_grid_varies_channels_slowest():
    assert comparisons.layer_grid([8, 16], [3, 5], [1, 2]) == [
        (8, 3, 1), (8, 3, 2), (8, 5, 1), (8, 5, 2), (16, 3, 1), (16, 3, 2), (16, 5, 1), (16, 5, 2),
    ]
    assert comparisons.layer_name(64, 3, 2) == "C=64 k=3 s=2"


def test_compare_layer_counts_the_separable_and_the_full_conv():
    c, k, s, size = 8, 3, 2, (10, 10)
    result = comparisons.compare_layer(c, k, s, size)
    out = 5 * 5  # Keras 'same': ceil(10 / 2)
    assert result.model.params == k * k * c + c * c + c  # depthwise (no bias) + pointwise + bias
    assert result.counterpart.params == k * k * c * c + c
    assert result.model.macs == (k * k * c + c * c) * out
    assert result.counterpart.macs == k * k * c * c * out
    assert result.theoretical_ratio == pytest.approx(1 / c + 1 / k**2)


def test_model_pair_uses_the_counterpart_or_the_separable_variant():
    model, standard, name, standard_name = comparisons.model_pair("SeparableConvNet")
    assert (name, standard_name) == ("SeparableConvNet", "standard_counterpart")
    assert not any(isinstance(m, (tb.SeparableConv2d, tb.DepthwiseConv2d)) for m in standard.modules())
    separable, standard, name, standard_name = comparisons.model_pair("resnet18")
    assert (name, standard_name) == ('resnet18(conv="separable")', 'resnet18(conv="standard")')
    assert separable.conv == "separable" and standard.conv == "standard"


def test_comparison_table_lists_one_row_per_comparison():
    rows = [comparisons.compare_layer(8, 3, 1, (6, 6)), comparisons.compare_layer(8, 5, 1, (6, 6))]
    table = comparisons.comparison_table("t", rows, layers=True)
    records = table.to_records()
    assert [r["name"] for r in records] == ["C=8 k=3 s=1", "C=8 k=5 s=1"]
    assert [r["macs"] for r in records] == [r.model.macs for r in rows]
    assert "theoretical_ratio" in records[0] and "latency_ms" not in records[0]


def test_plot_needs_measured_latencies(tmp_path):
    row = comparisons.compare_layer(8, 3, 1, (6, 6))
    with pytest.raises(ValueError, match="needs comparisons with measured latencies"):
        comparisons.plot_channel_sweep(str(tmp_path / "p.png"), [row], [8], "t")


def test_plot_writes_a_png(tmp_path):
    rows = [comparisons.compare_layer(c, 3, 1, (6, 6), latency=True, repeats=3) for c in (4, 8)]
    path = tmp_path / "p.png"
    comparisons.plot_channel_sweep(str(path), rows, [4, 8], "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
