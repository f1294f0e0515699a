"""Closed-form counts (``analysis.formulas``) against fvcore's, over a sweep of every kernel,
stride, padding and option; MACs = N·C_out·(C_in/g)·k²·H'·W' with Keras output sizes."""
import itertools

import pytest
import torch

import torchblocks as tb
from torchblocks import analysis
from torchblocks.analysis import formulas
from analysis_helpers import flop_counter_flops, keras_out


# Every kernel 1-7 at every stride 1-3, both paddings; dilation, depth multiplier, activation and
# odd/even (H, W) cycle through their values so each meets every kernel and stride.
SIZES = ((15, 16), (16, 13), (14, 17))
SWEEP = [
    (k, s, padding, 1 + i % 2, 1 + (i // 2) % 2, ("relu", None)[(i // 3) % 2], SIZES[i % 3])
    for i, ((k, s), padding) in enumerate(
        itertools.product(itertools.product(range(1, 8), (1, 2, 3)), ("same", "valid"))
    )
]


@pytest.mark.parametrize("k, s, padding, d, m, act, size", SWEEP)
def test_separable_depthwise_standard_counts_equal_formulas(k, s, padding, d, m, act, size):
    n, c_in, c_out = 2, 3, 5
    x = torch.randn(n, c_in, *size)
    ho, wo = (keras_out(v, k, s, padding, d) for v in size)
    positions = n * ho * wo
    dw_macs = positions * c_in * m * k * k
    pw_macs = positions * c_in * m * c_out
    act_macs = positions * c_out if act else 0
    std_macs = positions * c_out * c_in * k * k

    sep = tb.SeparableConv2d(c_in, c_out, k, s, padding, d, depth_multiplier=m, activation=act)
    report = analysis.count(sep, x)
    assert report.by_module["depthwise"] == dw_macs
    assert report.by_module["pointwise"] == pw_macs
    assert report.macs == dw_macs + pw_macs + act_macs
    assert report.flops == 2 * report.macs
    assert report.macs == formulas.separable_macs(c_in, c_out, k, (ho, wo), m, n, activation=bool(act))
    assert report.params == k * k * c_in * m + c_in * m * c_out + c_out
    assert report.params == formulas.separable_params(c_in, c_out, k, m)
    assert formulas.conv_output_hw(*size, k, s, padding, d) == (ho, wo)
    # FlopCounterMode counts only the convolutions, 2 per MAC.
    assert flop_counter_flops(sep, x) == 2 * (dw_macs + pw_macs)

    dw = tb.DepthwiseConv2d(c_in, k, s, padding, d, depth_multiplier=m)
    assert analysis.count(dw, x).macs == dw_macs == formulas.depthwise_macs(c_in, k, (ho, wo), m, n)
    assert analysis.count(dw, x).params == formulas.depthwise_params(c_in, k, m) == c_in * m * (k * k + 1)

    std = tb.Conv2d(c_in, c_out, k, s, padding, d, activation=act)
    std_report = analysis.count(std, x)
    assert std_report.macs == std_macs + act_macs
    assert std_report.macs == formulas.conv2d_macs(c_in, c_out, k, (ho, wo), 1, n, activation=bool(act))
    assert std_report.params == formulas.conv2d_params(c_in, c_out, k) == c_out * c_in * k * k + c_out
    assert flop_counter_flops(std, x) == 2 * std_macs


def test_sweep_covers_every_kernel_stride_padding_and_option():
    assert {(k, s, p) for k, s, p, *_ in SWEEP} == set(
        itertools.product(range(1, 8), (1, 2, 3), ("same", "valid")))
    assert {(d, m) for _, _, _, d, m, _, _ in SWEEP} == {(1, 1), (2, 1), (1, 2), (2, 2)}
    assert {size for *_, size in SWEEP} == set(SIZES)


def test_formula_values_by_hand():
    # SeparableConv2d(64, 128, 3, 'same') on 56×56: 64·9·3136 + 64·128·3136.
    assert formulas.separable_macs(64, 128, 3, (56, 56)) == 1_806_336 + 25_690_112
    assert formulas.separable_params(64, 128, 3) == 8_896  # README / Keras count
    assert formulas.conv2d_params(64, 128, 3) == 73_856
    assert formulas.separable_macs_ratio(128, 3) == pytest.approx(1 / 128 + 1 / 9, rel=1e-15)
    assert formulas.separable_macs_ratio(128, 3, depth_multiplier=2) == pytest.approx(2 / 128 + 2 / 9)
    assert formulas.pool_macs((2, 3), 10) == 60
    assert formulas.dense_macs(6, 4, rows=3, activation=True) == 72 + 12


def test_residual_blocks_equal_formulas():
    x = torch.randn(2, 4, 6, 6)
    conv = 2 * 36 * 4 * 4 * 9
    block = tb.Residual(tb.Conv2d(4, 4, 3, padding="same"))
    assert analysis.count(block, x).macs == conv + formulas.elementwise_macs(x.numel())

    projected = tb.Residual(tb.Conv2d(4, 8, 3, 2, "same"), tb.Projection(4, 8, stride=2, norm=True))
    out = 2 * 8 * 3 * 3
    expected = out * 4 * 9 + out * 4 + formulas.batchnorm_macs(out) + out
    assert analysis.count(projected, x).macs == expected

    y = torch.randn(1, 8, 10, 10)
    identity = tb.IdentityResidualBlock(8)
    assert analysis.count(identity, y).macs == 3 * (8 * 8 * 9 * 100 + 800) + 800
    down = tb.DownsamplingResidualBlock(4, 8)
    z = torch.randn(1, 4, 10, 10)
    conv1, conv2 = 8 * 4 * 9 * 100 + 800, 8 * 8 * 9 * 100 + 800
    pool, proj, add = 4 * 8 * 25, 8 * 4 * 25, 8 * 25
    report = analysis.count(down, z)
    assert report.macs == conv1 + conv2 + pool + proj + add
    assert report.by_module["shortcut"] == proj
    assert report.by_operator["add"] == add
