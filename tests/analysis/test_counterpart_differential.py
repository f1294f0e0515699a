"""Differential test of ``standard_counterpart``/``compare`` and of counting on the meta device.

Hypothesis draws small models of every kind the counterpart handles (torchblocks and plain torch
convs, grouped and depthwise convs, separable layers, depthwise -> BN -> ReLU -> 1×1 pairs,
shared modules, branches, vector inputs) and an oracle written from the documented rules gives
the MACs and parameters of the model and of its counterpart in closed form. ``count`` (fvcore),
``count(meta=True)``, ``standard_counterpart`` and ``compare`` must all equal it, or refuse clearly
(a conv under a weight parametrization).
"""
import math
import warnings
from dataclasses import dataclass
from typing import List

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchblocks as tb
from torchblocks import analysis

CHANNELS = [2, 4, 6]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Cost:
    """MACs per output position (N·H'·W') and parameters of a block, and of its counterpart."""

    macs: int
    params: int
    std_macs: int
    std_params: int
    replaced: int  # lines in the counterpart's list of replacements
    refused: bool = False


@dataclass(frozen=True)
class Block:
    module: nn.Module
    c_out: int
    stride: int
    cost: Cost
    # For a depthwise + pointwise pair: what replacing its depthwise conv alone changes.
    dw_alone: Cost = None


class _Branch(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def _conv(c_in, c_out, k, stride, groups, bias, plain, relu):
    """A conv, torchblocks or plain, with Keras 'same' output size ceil(n / stride)."""
    if plain:
        conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=bias)
        return nn.Sequential(conv, nn.ReLU()) if relu else conv
    return tb.Conv2d(c_in, c_out, k, stride, "same", groups=groups, bias=bias,
                     activation="relu" if relu else None)


@st.composite
def blocks(draw, c_in: int, top: bool = True) -> Block:
    kinds = ["conv", "grouped", "depthwise", "separable", "pair"]
    kinds += ["branch", "shared", "weight_norm"] if top else []
    kind = draw(st.sampled_from(kinds))
    k, stride = draw(st.sampled_from([3, 5])), draw(st.sampled_from([1, 2]))
    bias, plain, relu = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    c_out, m = draw(st.sampled_from(CHANNELS)), draw(st.sampled_from([1, 2]))
    kk, mid, b = k * k, c_in * m, (c_out if bias else 0)
    act = c_out if relu else 0
    if kind == "shared":
        inner = draw(blocks(c_in, top=False).filter(lambda x: (x.c_out, x.stride) == (c_in, 1)))
        # A pair whose modules run twice is not one pair: its depthwise conv alone is replaced.
        c = inner.dw_alone or inner.cost
        return Block(nn.Sequential(inner.module, inner.module), c_in, 1,
                     Cost(2 * c.macs, c.params, 2 * c.std_macs, c.std_params, c.replaced))
    if kind == "branch":
        a = draw(blocks(c_in, top=False))
        z = draw(blocks(c_in, top=False).filter(lambda x: (x.c_out, x.stride) == (a.c_out, a.stride)))
        ca, cz = a.cost, z.cost
        cost = Cost(ca.macs + cz.macs + a.c_out, ca.params + cz.params, ca.std_macs + cz.std_macs + a.c_out,
                    ca.std_params + cz.std_params, ca.replaced + cz.replaced)
        return Block(_Branch(a.module, z.module), a.c_out, a.stride, cost)
    if kind == "weight_norm":
        conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(c_in, c_in, k, stride, k // 2, groups=c_in))
        return Block(conv, c_in, stride, Cost(0, 0, 0, 0, 0, refused=True))
    if kind == "conv":
        macs, params = c_out * c_in * kk + act, c_out * c_in * kk + b
        return Block(_conv(c_in, c_out, k, stride, 1, bias, plain, relu), c_out, stride,
                     Cost(macs, params, macs, params, 0))
    if kind == "grouped":
        groups = draw(st.sampled_from([g for g in (2, 3, 4, 6) if c_in % g == 0 and c_out % g == 0]))
        full = c_out * c_in * kk
        return Block(_conv(c_in, c_out, k, stride, groups, bias, plain, relu), c_out, stride,
                     Cost(full // groups + act, full // groups + b, full + act, full + b, 1))
    if kind == "depthwise":
        act, b = (mid if relu else 0), (mid if bias else 0)
        module = (_conv(c_in, mid, k, stride, c_in, bias, True, relu) if plain else
                  tb.DepthwiseConv2d(c_in, k, stride, "same", depth_multiplier=m, bias=bias,
                                     activation="relu" if relu else None))
        return Block(module, mid, stride,
                     Cost(mid * kk + act, mid * kk + b, mid * c_in * kk + act, mid * c_in * kk + b, 1))
    if kind == "separable":
        module = tb.SeparableConv2d(c_in, c_out, k, stride, "same", depth_multiplier=m, bias=bias,
                                    activation="relu" if relu else None)
        return Block(module, c_out, stride, Cost(mid * kk + mid * c_out + act, mid * kk + mid * c_out + b,
                                                 c_out * c_in * kk + act, c_out * c_in * kk + b, 1))
    # kind == "pair": a depthwise conv, BatchNorm and/or ReLU6 modules, a 1×1 conv.
    norm, inner_relu, plain_pw = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    dw = (nn.Conv2d(c_in, mid, k, stride, k // 2, groups=c_in, bias=False) if plain
          else tb.DepthwiseConv2d(c_in, k, stride, "same", depth_multiplier=m, bias=False))
    between = ([nn.BatchNorm2d(mid)] if norm else []) + ([nn.ReLU6()] if inner_relu else [])
    pw = (nn.Conv2d(mid, c_out, 1, bias=bias) if plain_pw
          else tb.Conv2d(mid, c_out, 1, bias=bias, activation="relu" if relu else None))
    act = 0 if plain_pw else act
    macs = mid * kk + (2 * mid if norm else 0) + (mid if inner_relu else 0) + mid * c_out + act
    params = mid * kk + (2 * mid if norm else 0) + mid * c_out + b
    # The pair's counterpart: one full conv c_in -> c_out (pw's bias and activation), nothing between.
    pair = Cost(macs, params, c_out * c_in * kk + act, c_out * c_in * kk + b, 1)
    alone = Cost(macs, params, macs - mid * kk + mid * c_in * kk, params - mid * kk + mid * c_in * kk, 1)
    return Block(nn.Sequential(dw, *between, pw), c_out, stride, pair, dw_alone=alone)


@dataclass(frozen=True)
class Case:
    model: nn.Module
    x: torch.Tensor
    cost: Cost  # totals over the whole input


@st.composite
def image_models(draw) -> Case:
    batch, c = draw(st.integers(1, 2)), draw(st.sampled_from(CHANNELS))
    h, w = draw(st.integers(5, 9)), draw(st.integers(5, 9))
    x = torch.randn(batch, c, h, w)
    layers: List[nn.Module] = []
    total = Cost(0, 0, 0, 0, 0)
    for _ in range(draw(st.integers(1, 3))):
        block = draw(blocks(c))
        h, w = math.ceil(h / block.stride), math.ceil(w / block.stride)
        n, cost = batch * h * w, block.cost
        total = Cost(total.macs + n * cost.macs, total.params + cost.params, total.std_macs + n * cost.std_macs,
                     total.std_params + cost.std_params, total.replaced + cost.replaced,
                     total.refused or cost.refused)
        layers.append(block.module)
        c = block.c_out
    return Case(nn.Sequential(*layers), x, total)


@st.composite
def vector_models(draw) -> Case:
    """Dense layers (torchblocks or plain, BatchNorm1d between): nothing to replace."""
    rows, features = draw(st.integers(1, 3)), draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    layers: List[nn.Module] = []
    macs = params = 0
    for a, b in zip(features, features[1:]):
        relu = draw(st.booleans())
        layers.append(tb.Dense(a, b, activation="relu" if relu else None) if draw(st.booleans())
                      else nn.Linear(a, b))
        relu = relu and isinstance(layers[-1], tb.Dense)
        macs += rows * a * b + (rows * b if relu else 0)
        params += a * b + b
        if draw(st.booleans()):
            layers.append(nn.BatchNorm1d(b))
            macs, params = macs + 2 * rows * b, params + 2 * b
    return Case(nn.Sequential(*layers), torch.randn(rows, features[0]), Cost(macs, params, macs, params, 0))


def _check(case: Case) -> None:
    model, x, cost = case.model, case.x, case.cost
    if cost.refused:
        with pytest.raises(NotImplementedError, match="carries a weight parametrization"):
            analysis.standard_counterpart(model)
        with pytest.raises(NotImplementedError, match="carries a weight parametrization"):
            analysis.compare(model, x)
        return
    real = analysis.count(model, x)
    assert (real.macs, real.params) == (cost.macs, cost.params)
    meta = analysis.count(model, x, meta=True)
    assert (meta.macs, meta.params, meta.by_module, meta.by_operator) == (
        real.macs, real.params, real.by_module, real.by_operator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counterpart = analysis.standard_counterpart(model)
        result = analysis.compare(model, x)
    messages = [str(w.message) for w in caught]
    assert messages == ([] if cost.replaced else [messages[0]] * 2)
    assert cost.replaced or "nothing to replace" in messages[0]
    std = analysis.count(counterpart, x)
    assert (std.macs, std.params) == (cost.std_macs, cost.std_params)
    assert (result.model.macs, result.counterpart.macs) == (cost.macs, cost.std_macs)
    assert (result.model.params, result.counterpart.params) == (cost.params, cost.std_params)
    assert len(result.replaced) == cost.replaced and result.note == ""
    assert result.macs_ratio == (cost.macs / cost.std_macs if cost.std_macs else None)
    with torch.no_grad():
        assert counterpart.eval()(x).shape == model.eval()(x).shape


@SETTINGS
@given(image_models())
def test_image_models_match_the_closed_form(case):
    _check(case)


@settings(max_examples=10, deadline=None)
@given(vector_models())
def test_vector_models_have_nothing_to_replace(case):
    _check(case)
