"""``analysis.count``: modes restored, the FlopCounterMode fallback for ScriptModules, BN left
out, errors; ``measure_latency``."""
import warnings

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis


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


def test_measure_latency_restores_mode_and_checks_arguments():
    model = nn.Sequential(tb.Conv2d(3, 4, 3), tb.BatchNorm(4)).train()
    assert analysis.measure_latency(model, torch.randn(1, 3, 8, 8), warmup=1, repeats=3) > 0
    assert model.training and model[1].bn.training
    with pytest.raises(ValueError, match="Invalid value for argument `repeats`"):
        analysis.measure_latency(model, torch.randn(1, 3, 8, 8), repeats=0)
