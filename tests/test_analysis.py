"""torchblocks.analysis: fvcore counts against closed-form formulas and FlopCounterMode,
standard counterparts, comparisons, summaries, warnings and errors.

Expected values are written out from the textbook formulas (MACs = N·C_out·(C_in/g)·k²·H'·W'
with Keras output sizes), Keras' parameter counts, or torch's FlopCounterMode (2 per MAC).
"""
import itertools
import logging
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import torchblocks as tb
from torchblocks import analysis
from torchblocks.analysis import formulas
from torchblocks.activations import ACTIVATION_NAMES
from torchblocks.models import MODEL_NAMES, get_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Counting runs thousands of tiny ops; on 2 shared cores, 2 intra-op threads spin-wait on
    each other (25 ms per tiny conv instead of 0.1 ms). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def keras_out(n: int, k: int, s: int, padding: str, d: int = 1) -> int:
    """Keras output length: 'same' ceil(n / s), 'valid' floor((n - (k - 1)·d - 1) / s) + 1."""
    return math.ceil(n / s) if padding == "same" else (n - (k - 1) * d - 1) // s + 1


def flop_counter_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


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


BN_SHAPES = [((2, 4, 5, 7), 1), ((2, 3, 5, 7), -1), ((6, 4), 1)]


@pytest.mark.parametrize("shape, axis", BN_SHAPES)
def test_batchnorm_cost_by_mode(shape, axis):
    x = torch.randn(*shape)
    bn = tb.BatchNorm(shape[axis], axis=axis).train()
    stats = (bn.bn.running_mean.clone(), bn.bn.running_var.clone(), bn.bn.num_batches_tracked.clone())
    numel = x.numel()
    assert analysis.count(bn, x).macs == 2 * numel == formulas.batchnorm_macs(numel)
    assert analysis.count(bn, x, training=True).macs == 5 * numel == formulas.batchnorm_macs(numel, True)
    assert analysis.count(bn, x, include_bn=False).macs == 0
    # The caller's module keeps its mode and its running statistics.
    assert bn.training and bn.bn.training
    for before, after in zip(stats, (bn.bn.running_mean, bn.bn.running_var, bn.bn.num_batches_tracked)):
        assert torch.equal(before, after)
    report = analysis.count(bn, x)
    assert (report.params, report.buffers, report.keras_count_params) == (
        2 * shape[axis], 2 * shape[axis], 4 * shape[axis])


def test_count_restores_each_submodule_mode():
    model = nn.Sequential(tb.Conv2d(3, 4, 3), tb.BatchNorm(4), nn.Sequential(tb.BatchNorm(4)))
    model.train()
    model[2][0].eval()
    before = [m.training for m in model.modules()]
    x = torch.randn(2, 3, 8, 8)
    numel = 2 * 4 * 6 * 6
    # Eval by default: fvcore's BN cost is 2 per element in eval mode, 5 in training mode.
    assert analysis.count(model, x).macs == 4 * 3 * 9 * 36 * 2 + 2 * (2 * numel)
    assert [m.training for m in model.modules()] == before


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


POOLS = [
    (tb.MaxPool2d(3, 2, "same"), (1, 2, 9, 9), (5, 5), 9),
    (tb.MaxPool2d(2), (1, 3, 9, 8), (4, 4), 4),
    (tb.AvgPool2d(3, 1, "same"), (2, 2, 7, 6), (7, 6), 9),
    (tb.AvgPool2d((2, 3), (2, 1)), (1, 2, 8, 9), (4, 7), 6),
]


@pytest.mark.parametrize("pool, shape, out_hw, area", POOLS)
def test_pooling_costs_window_area_per_output(pool, shape, out_hw, area):
    x = torch.randn(*shape)
    out_numel = shape[0] * shape[1] * out_hw[0] * out_hw[1]
    assert pool(x).shape[-2:] == out_hw
    assert analysis.count(pool, x).macs == area * out_numel == formulas.pool_macs(pool.kernel_size, out_numel)


def test_dense_and_pad_costs():
    x = torch.randn(3, 6)
    assert analysis.count(tb.Dense(6, 4, activation="relu"), x).macs == formulas.dense_macs(6, 4, 3, True) == 84
    # An asymmetric 'same' pad (F.pad) costs nothing: only the conv is counted.
    conv = tb.Conv2d(2, 3, 2, padding="same")
    report = analysis.count(conv, torch.randn(1, 2, 5, 5))
    assert report.macs == 3 * 2 * 4 * 25
    assert report.by_operator.get("pad", 0) == 0


def _fvcore_records(caplog):
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


# One model per block family (the deeper ResNets repeat resnet18's and resnet50's blocks; the
# default `torchblocks compare` run, tested in test_cli.py, covers the standard counterparts).
MODEL_CASES = [
    ("SeparableConvNet", {}, 32),
    ("xception", {}, 71),
    ("resnet18", {"conv": "separable"}, 32),
    ("resnet50", {}, 32),
]


def test_model_cases_cover_every_model_family():
    assert {name for name, _, _ in MODEL_CASES} <= set(MODEL_NAMES)
    assert {"SeparableConvNet", "xception", "resnet18", "resnet50"} <= set(MODEL_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size", MODEL_CASES)
def test_no_warning_and_no_unsupported_op_for_the_models(name, kwargs, size, caplog):
    model = get_model(name, **kwargs)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = analysis.count(model, torch.randn(1, 3, size, size))
    assert _fvcore_records(caplog) == []
    assert report.unsupported_ops == {}
    assert report.by_operator["conv"] > 0


def test_no_warning_for_layers_activations_and_pooling_heads(caplog):
    caplog.set_level(logging.DEBUG)
    layers = [tb.Conv2d(3, 3, 3, activation=name) for name in ACTIVATION_NAMES]
    layers += [tb.AvgPool2d(3, 2, "same"), tb.MaxPool2d(2, 3, "same"), tb.BatchNorm(8, axis=-1)]
    # Residual's identity shortcut is never called: no "never called" warning either.
    layers += [tb.Residual(tb.ConvBN(3, 3, 3, padding="same")), tb.Residual(tb.Conv2d(3, 3, 1))]
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for layer in layers:
            assert analysis.count(layer, x).unsupported_ops == {}
        # The models' global pooling heads (Keras GlobalMax/AveragePooling2D): 1 per input element.
        for head in (tb.GlobalMaxPool2d(), tb.GlobalAvgPool2d()):
            assert analysis.count(head, x).macs == x.numel()
    assert _fvcore_records(caplog) == []


class _Cumsum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, 1)


def test_unknown_op_is_reported_not_hidden():
    with pytest.warns(RuntimeWarning, match=r"_Cumsum: no cost is known for \['aten::cumsum'\]"):
        report = analysis.count(_Cumsum(), torch.randn(2, 3))
    assert report.unsupported_ops == {"aten::cumsum": 1}


def test_script_module_falls_back_to_flop_counter_mode():
    sep = tb.SeparableConv2d(3, 5, 3, activation="relu")
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in 2.14
        scripted = torch.jit.script(sep)
    report = analysis.count(scripted, x)
    assert report.method == "FlopCounterMode"
    assert "ScriptModule" in report.note and "FlopCounterMode" in report.note
    # Convolutions only (no activation cost), and no per-module breakdown.
    assert report.macs == 2 * 64 * (3 * 9 + 3 * 5)
    assert report.by_module == {"": report.macs}
    assert report.params == 3 * 9 + 3 * 5 + 5


def test_model_holding_a_frozen_script_module_falls_back_and_is_left_alone():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        frozen = torch.jit.freeze(torch.jit.script(tb.Conv2d(3, 4, 3).eval()))
    wrapper = nn.Sequential(frozen)  # training mode, as built
    report = analysis.count(wrapper, torch.randn(2, 3, 9, 9))
    assert report.method == "FlopCounterMode" and report.macs == 2 * 4 * 3 * 9 * 7 * 7
    assert wrapper.training and not hasattr(frozen, "training")  # no flag added to the frozen module


def test_include_bn_false_equals_the_bn_folded_model():
    model = nn.Sequential(
        tb.Conv2d(3, 8, 3, bias=False), tb.BatchNorm(8), nn.ReLU(), tb.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
    ).eval()
    x = torch.randn(2, 3, 9, 9)
    folded = tb.fuse_bn(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    convs = 2 * 49 * (8 * 3 * 9 + 4 * 8)
    relu, bn = 2 * 49 * 8, 2 * 49 * (8 + 4) * 2
    assert analysis.count(model, x).macs == convs + relu + bn
    assert analysis.count(model, x, include_bn=False).macs == convs + relu == analysis.count(folded, x).macs


class _ReturnsFloat(nn.Module):
    def forward(self, x: torch.Tensor) -> float:
        return float(x.sum())


def test_untraceable_model_gives_one_line_runtime_error():
    with pytest.raises(RuntimeError, match=r"^fvcore could not trace _ReturnsFloat: ") as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's own warning about float()
            analysis.count(_ReturnsFloat(), torch.randn(2, 3))
    assert "\n" not in str(info.value)


def test_count_argument_errors():
    with pytest.raises(TypeError, match="Invalid type for argument `model`"):
        analysis.count("conv", torch.randn(1))
    with pytest.raises(TypeError, match="Invalid type for argument `inputs`"):
        analysis.count(tb.Dense(3, 2), [1.0, 2.0])
    # The model's own check on the inputs keeps its type and message.
    with pytest.raises(ValueError, match="expects inputs whose last dim is in_features=3"):
        analysis.count(tb.Dense(3, 2), torch.randn(2, 4))


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


def test_measure_latency_restores_mode_and_checks_arguments():
    model = nn.Sequential(tb.Conv2d(3, 4, 3), tb.BatchNorm(4)).train()
    assert analysis.measure_latency(model, torch.randn(1, 3, 8, 8), warmup=1, repeats=3) > 0
    assert model.training and model[1].bn.training
    with pytest.raises(ValueError, match="Invalid value for argument `repeats`"):
        analysis.measure_latency(model, torch.randn(1, 3, 8, 8), repeats=0)


def book_model_macs() -> int:
    """The book's model on 1×3×64×64, layer by layer (Keras 'valid' sizes 62, 60, 30, ...)."""
    def sep(c_in, c_out, n):
        return 9 * c_in * n * n + c_in * c_out * n * n + c_out * n * n  # dw + pw + ReLU

    total = sep(3, 32, 62) + sep(32, 64, 60) + 4 * 64 * 30 * 30
    total += sep(64, 64, 28) + sep(64, 128, 26) + 4 * 128 * 13 * 13
    total += sep(128, 64, 11) + sep(64, 128, 9)
    total += 128 * 9 * 9  # global average pooling: one add per input element
    return total + (128 * 32 + 32) + 32 * 10


def test_summary_of_the_book_model():
    model = get_model("SeparableConvNet")
    result = analysis.summary(model, torch.randn(1, 3, 64, 64))
    names = [row.name for row in result.rows]
    assert names == [f"features.{n}" for n in (
        "sepconv1", "sepconv2", "pool1", "sepconv3", "sepconv4", "pool2", "sepconv5", "sepconv6")] + [
        "pool", "fc1", "fc2"]
    shapes = [row.output_shape for row in result.rows]
    assert shapes[:3] == ["(1, 32, 62, 62)", "(1, 64, 60, 60)", "(1, 64, 30, 30)"]
    assert shapes[-1] == "(1, 10)"
    assert sum(row.params for row in result.rows) == 38_949
    assert sum(row.macs for row in result.rows) == result.report.macs == book_model_macs()
    text = str(result)
    assert "Total params: 38,949" in text and f"Total MACs: {book_model_macs():,}" in text
    assert "FLOPs = 2 x MACs" in text
    top = analysis.summary(model, torch.randn(1, 3, 64, 64), depth=1)
    assert [row.name for row in top.rows] == ["features", "pool", "fc1", "fc2"]
    assert top.rows[0].params == 38_949 - 4_128 - 330


def test_summary_rows_partition_a_residual_model():
    block = nn.Sequential(tb.Conv2d(3, 8, 3, padding="same"), tb.IdentityResidualBlock(8), nn.Flatten())
    x = torch.randn(1, 3, 6, 6)
    result = analysis.summary(block, x)
    own = [row for row in result.rows if row.type_name.endswith("own ops")]
    assert [(row.name, row.macs) for row in own] == [("1", 8 * 36)]  # the residual add
    assert sum(r.macs for r in result.rows) == result.report.macs
    assert sum(r.params for r in result.rows) == result.report.params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(tb.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="needs an eager nn.Module"):
        analysis.summary(scripted, x)
    with pytest.raises(ValueError, match="Invalid value for argument `depth`"):
        analysis.summary(block, x, depth=0)


def _bn_outputs(model: nn.Module, x: torch.Tensor):
    """(channels, output numel) of every torch BatchNorm that runs, by forward hooks."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((m.num_features, o.numel())))
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def test_folding_savings_of_resnet18_equal_the_bn_formulas():
    model, x = get_model("resnet18").eval(), torch.randn(1, 3, 64, 64)
    bns = _bn_outputs(model, x)
    savings = analysis.folding_savings(model, x)
    assert len(bns) == 20
    # Every ResNet conv is bias-free: folding drops 2·C affine parameters and adds a C bias.
    assert savings.params_removed == sum(c for c, _ in bns) == 4800
    assert savings.buffers_removed == 2 * sum(c for c, _ in bns)
    assert savings.macs_removed == sum(formulas.batchnorm_macs(n) for _, n in bns)
    assert savings.after.macs == analysis.count(model, x, include_bn=False).macs
    assert f"{savings.macs_removed:,} MACs" in str(savings)


def test_folding_savings_are_zero_where_nothing_folds():
    # ConvBN puts the ReLU between conv and BN: fuse_bn must leave it, and the savings say so.
    savings = analysis.folding_savings(tb.ConvBN(4, 8, 3), torch.randn(2, 4, 9, 9))
    assert (savings.params_removed, savings.buffers_removed, savings.macs_removed) == (0, 0, 0)
