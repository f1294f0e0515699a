"""``analysis.summary``: a Keras ``model.summary()``-style table whose rows add up to the model."""
import warnings

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import analysis
from torchblocks.models import get_model


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
