"""``count(..., meta=True)``: the same report as fvcore's real run, on every model the project
builds and on their standard counterparts, without touching the caller's model; clear refusals.
The real runs also show that no model logs an "unsupported operator" warning."""
import logging
import warnings

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis
from torchblocks.analysis.counterpart import build_counterpart
from torchblocks.models import MODEL_NAMES, get_model

# One model per block family, each with its counterpart, at small inputs (the counts scale with
# the input; which ops run does not): the book's separable convs, Xception's separable residual
# blocks, ResNet's basic and bottleneck blocks in both conv modes (resnet34/101/152 repeat them).
PROJECT_MODELS = [("SeparableConvNet", {}, 64), ("xception", {}, 71),
                  ("resnet18", {"conv": "separable"}, 32), ("resnet50", {"conv": "separable"}, 32)]


def test_project_models_cover_every_model_family():
    assert {name for name, _, _ in PROJECT_MODELS} <= set(MODEL_NAMES)
    assert {name for name in MODEL_NAMES if name.startswith("resnet")} == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}


def _same_report(model: nn.Module, x: torch.Tensor, caplog=None, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = analysis.count(model, x, **kwargs)
        meta = analysis.count(model, x, meta=True, **kwargs)
    if caplog is not None:
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert meta.macs == real.macs and meta.macs > 0
    assert meta.by_module == real.by_module
    assert meta.by_operator == real.by_operator
    assert (meta.params, meta.non_trainable_params, meta.buffers, meta.input_shapes) == (
        real.params, real.non_trainable_params, real.buffers, real.input_shapes)
    assert meta.unsupported_ops == real.unsupported_ops == {}


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size", PROJECT_MODELS)
def test_meta_count_equals_the_real_count_on_each_model_and_its_counterpart(name, kwargs, size, caplog):
    caplog.set_level(logging.DEBUG)
    model = get_model(name, **kwargs)
    x = torch.randn(1, 3, size, size)
    _same_report(model, x, caplog)
    counterpart = build_counterpart(model).module  # resnets: the standard resnet's blocks
    assert not any(isinstance(m, tb.SeparableConv2d) for m in counterpart.modules())
    _same_report(counterpart, x, caplog)


MODES = [{"training": True}, {"include_bn": False}]


@pytest.mark.parametrize("kwargs", MODES, ids=["training", "bn_folded"])
def test_meta_count_follows_the_counting_options(kwargs):
    model = nn.Sequential(tb.ConvBN(3, 4, 3, padding="same"), nn.ReLU(inplace=True), tb.MaxPool2d(2),
                          tb.Residual(tb.Conv2d(4, 4, 1)), tb.GlobalAvgPool2d(), tb.DenseBN(4, 5),
                          nn.Dropout(0.5, inplace=True))
    _same_report(model, torch.randn(2, 3, 8, 8), **kwargs)


def test_the_callers_model_is_left_alone():
    model = nn.Sequential(tb.Conv2d(3, 4, 3), tb.BatchNorm(4)).train()
    before = [t.clone() for t in model.state_dict().values()]
    report = analysis.count(model, torch.randn(2, 3, 6, 6), meta=True)
    assert report.macs == 2 * 16 * (4 * 27 + 4 * 2)
    assert all(not t.is_meta for t in model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    assert model.training and model[1].bn.training


def test_a_model_on_the_meta_device_is_counted():
    with torch.device("meta"):
        model = tb.models.get_model("SeparableConvNet")
    report = analysis.count(model, torch.empty(1, 3, 64, 64, device="meta"), meta=True)
    assert report.params == 38_949 and report.macs == analysis.count(
        tb.models.get_model("SeparableConvNet"), torch.randn(1, 3, 64, 64)).macs


class _Cumsum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, 1)


class _ReadsValues(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else x  # a sum (1 MAC per element), and a value read


def test_refusals_name_the_call_or_the_reason():
    with pytest.raises(analysis.MetaCountError, match=r"no cost for the torch call .*cumsum: count with a real run"):
        analysis.count(_Cumsum(), torch.randn(2, 3), meta=True)
    with pytest.raises(analysis.MetaCountError, match="_ReadsValues cannot run on the meta device"):
        analysis.count(_ReadsValues(), torch.randn(2, 3), meta=True)
    # The model's own check of its inputs keeps its type and message, as in a real run.
    with pytest.raises(ValueError, match="expects inputs whose last dim is in_features=3"):
        analysis.count(tb.Dense(3, 2), torch.randn(2, 4), meta=True)


def test_compare_falls_back_to_a_real_run():
    model = nn.Sequential(tb.SeparableConv2d(3, 4, 3), _ReadsValues())
    x = torch.randn(1, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = analysis.compare(model, x)
    # fvcore's trace drops the sum, whose result reaches no output (it is only read as a bool).
    assert result.model.macs == analysis.count(model, x).macs == 16 * (3 * 9 + 3 * 4)
    assert result.counterpart.macs == 16 * 4 * 3 * 9
