"""``analysis.comparisons``: the ``torchblocks compare`` job's grid, pairs, tables and plot."""
import os

import pytest
from torch import nn

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
    assert (name, standard_name, standard) == ("SeparableConvNet", "standard_counterpart", None)
    separable, standard, name, standard_name = comparisons.model_pair("resnet18")
    assert (name, standard_name) == ('resnet18(conv="separable")', 'resnet18(conv="standard")')
    assert separable.conv == "separable" and standard.conv == "standard"


def test_compare_model_takes_a_module_of_ones_own():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    result = comparisons.compare_model(model, (3, 9, 9), name="mine")
    assert result.name == "mine" and len(result.replaced) == 1
    assert result.counterpart.macs == 8 * 3 * 9 * 49 + 4 * 8 * 9 * 25
    with pytest.raises(ValueError, match="give the \\(C, H, W\\) of its input"):
        comparisons.compare_model(model)
    with pytest.raises(ValueError, match="Sequential has no SeparableConv2d and no depthwise or grouped"):
        comparisons.compare_model(nn.Sequential(nn.Conv2d(3, 4, 3)), (3, 8, 8))


def _rows():
    return [comparisons.compare_layer(512, 7, 1, (6, 6)), comparisons.compare_layer(8, 5, 2, (6, 6))]


def test_comparison_table_default_and_wide_columns():
    rows = _rows()
    table = comparisons.comparison_table("t", rows, layers=True)
    assert [c.title for c in table.columns] == [
        "layer", "params sep", "params std", "MACs sep", "MACs std", "MACs sep/std", "theory"]
    records = table.to_records()
    assert [r["name"] for r in records] == ["C=512 k=7 s=1", "C=8 k=5 s=2"]
    assert [r["macs"] for r in records] == [r.model.macs for r in rows]
    models = comparisons.comparison_table("m", rows, layers=False, wide=True)
    assert [c.title for c in models.columns][:3] == ["model", "input", "standard version"]


def test_comparison_table_with_times_names_the_ratio_and_fits_100_columns():
    rows = [comparisons.compare_layer(c, 3, 1, (8, 8), latency=True, repeats=3) for c in (4, 512)]
    table = comparisons.comparison_table("Single layers", rows, layers=True)
    titles = [c.title for c in table.columns]
    assert titles[-3:] == ["ms sep", "ms std", "time sep/std"] and "params sep" not in titles
    assert "speed-up" not in table.to_text()
    assert max(len(line) for line in table.to_text().splitlines()) <= 100
    records = table.to_records()
    assert records[0]["time_ratio"] == pytest.approx(rows[0].latency_ms / rows[0].counterpart_latency_ms)
    wide = comparisons.comparison_table("Single layers", rows, layers=True, wide=True)
    assert "params sep" in [c.title for c in wide.columns]


def test_plot_needs_measured_latencies(tmp_path):
    row = comparisons.compare_layer(8, 3, 1, (6, 6))
    with pytest.raises(ValueError, match="needs comparisons with measured latencies"):
        comparisons.plot_channel_sweep(str(tmp_path / "p.png"), [row], [8], "t")


BAD_PLOT_PATHS = [
    ("", "Expected a file, not a directory"),
    ("missing/p.png", "Expected a file in an existing, writable folder"),
    ("p.xyz", r"Expected a file name ending in one of .*\.png.*Received path=.*p\.xyz"),
]


@pytest.mark.parametrize("name, message", BAD_PLOT_PATHS)
def test_plot_path_is_checked(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        comparisons.check_plot_path(str(tmp_path / name) if name else str(tmp_path))


def test_plot_writes_a_png_whole(tmp_path):
    rows = [comparisons.compare_layer(c, 3, 1, (6, 6), latency=True, repeats=3) for c in (4, 8)]
    path = tmp_path / "p.png"
    comparisons.plot_channel_sweep(str(path), rows, [4, 8], "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["p.png"]  # no temporary file left beside it
