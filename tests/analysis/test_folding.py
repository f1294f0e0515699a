"""``analysis.folding_savings``: what ``tb.fuse_bn`` removes, checked against the BN formulas."""

import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis
from torchblocks.analysis import formulas
from torchblocks.models import get_model


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
