"""The cost of each op (``analysis.handlers``): BatchNorm by mode, pooling windows, dense and pad,
and no "unsupported operator" warning from any torchblocks layer (the models: test_meta.py)."""
import logging
import warnings

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis
from torchblocks.analysis import formulas
from torchblocks.activations import ACTIVATION_NAMES


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


class _SwinOps(nn.Module):
    """The ops torchvision's Swin Transformers add (shifted-window masks, cosine attention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x.new_zeros(x.shape)
        mask[:, 0] = 2.0  # fill_
        mask = (mask != 0).to(x.dtype)  # ne
        y = torch.nn.functional.normalize(x, dim=-1)  # linalg_vector_norm, clamp_min, expand_as, div
        z = x.clone().zero_() + x.numel()  # clone, zero_, numel
        return y + mask + z + x.pow(2)


def test_swin_ops_have_documented_costs():
    x = torch.randn(2, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = analysis.count(_SwinOps(), x)
    n, rows = x.numel(), x.numel() // 4
    # norm: 1 per input element; clamp_min: 1 per norm; div and pow: 1 per element; 4 adds.
    assert report.by_operator == {"linalg_vector_norm": n, "clamp_min": rows, "div": n, "pow": n, "add": 4 * n}
    assert report.unsupported_ops == {}


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def test_fused_multi_head_attention_costs_its_matrix_products_and_softmax():
    n, length, embed, heads = 2, 5, 8, 2
    report = analysis.count(_SelfAttention(), torch.randn(n, length, embed))
    assert list(report.by_operator) == ["_native_multi_head_attention"]
    projections = n * 4 * length * embed * embed  # q, k, v and output
    scores_and_sum = 2 * n * length * length * embed
    assert report.macs == projections + scores_and_sum + n * heads * length * length


# torchvision classifiers with an in-place dropout: (builder, MACs of the classifier), from its
# layers: Linear(1280, 1000); Linear(576, 1024), Hardswish, Linear(1024, 1000); Linear(1280, 1000).
DROPOUT_CLASSIFIERS = [
    ("efficientnet_b0", 1280 * 1000),
    ("mobilenet_v3_small", 576 * 1024 + 1024 + 1024 * 1000),
    ("mnasnet0_5", 1280 * 1000),
]


@pytest.mark.slow
@pytest.mark.parametrize("builder, classifier_macs", DROPOUT_CLASSIFIERS)
def test_torchvision_in_place_dropout_is_free(builder, classifier_macs):
    import torchvision

    model = torchvision.models.get_model(builder, weights=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = analysis.count(model, torch.randn(1, 3, 32, 32))
    assert report.unsupported_ops == {}
    assert report.by_module["classifier"] == classifier_macs
