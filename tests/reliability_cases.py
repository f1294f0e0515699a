"""Layer and block cases shared by the reliability tests (numerics, serialization, distributed).

Each case is a ``pytest.param(factory, input_shape, id=...)``: ``factory()`` builds a fresh module,
``input_shape`` is a tiny valid input for it. Shapes are chosen so every padding path runs: static
symmetric 'same', dynamic symmetric 'same' and asymmetric 'same' (extra pixel bottom/right).
"""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torchblocks as tb
from torchblocks import models

LAYER_CASES = [
    pytest.param(lambda: tb.Conv2d(2, 3, 3), (2, 2, 6, 6), id="conv-valid"),
    pytest.param(lambda: tb.Conv2d(2, 3, 3, padding="same"), (2, 2, 5, 4), id="conv-same-static"),
    # n=6, k=3, s=2: total pad 1, split (0, 1): asymmetric.
    pytest.param(lambda: tb.Conv2d(2, 3, 3, 2, "same"), (2, 2, 6, 6), id="conv-same-stride2-asym"),
    # n=7, k=3, s=2: total pad 2, split (1, 1): dynamic but symmetric.
    pytest.param(lambda: tb.Conv2d(2, 3, 3, 2, "same"), (2, 2, 7, 7), id="conv-same-stride2-sym"),
    pytest.param(lambda: tb.Conv2d(2, 3, (2, 4), padding="same"), (2, 2, 5, 6), id="conv-same-even-kernel"),
    pytest.param(lambda: tb.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 2, 6, 5), id="conv-same-dilation"),
    pytest.param(
        lambda: tb.Conv2d(2, 2, 3, 2, "same", dilation=(2, 1)), (2, 2, 6, 7), id="conv-same-dilation-stride2"
    ),
    pytest.param(lambda: tb.Conv2d(2, 4, 3, padding=(1, 2), groups=2), (2, 2, 4, 4), id="conv-int-pad-groups"),
    pytest.param(
        lambda: tb.Conv2d(2, 3, 3, padding="same", activation="tanh"), (2, 2, 4, 4), id="conv-activation"
    ),
    pytest.param(lambda: tb.DepthwiseConv2d(2, 3, 2, "same"), (2, 2, 6, 6), id="depthwise-m1-same-stride2"),
    pytest.param(
        lambda: tb.DepthwiseConv2d(2, 2, padding="same", depth_multiplier=2), (2, 2, 5, 5), id="depthwise-m2-even"
    ),
    pytest.param(
        lambda: tb.DepthwiseConv2d(3, 3, dilation=2, depth_multiplier=3), (2, 3, 6, 6), id="depthwise-m3-dilation"
    ),
    pytest.param(
        lambda: tb.SeparableConv2d(2, 3, 3, 2, "same", depth_multiplier=2), (2, 2, 6, 6), id="separable-m2-stride2"
    ),
    pytest.param(
        lambda: tb.SeparableConv2d(2, 3, 3, padding="same", dilation=2, activation="elu"),
        (2, 2, 5, 5),
        id="separable-dilation-activation",
    ),
    pytest.param(lambda: tb.MaxPool2d(2), (2, 2, 6, 6), id="maxpool-valid"),
    pytest.param(lambda: tb.MaxPool2d(2, 1, "same"), (2, 2, 5, 5), id="maxpool-same-asym"),
    pytest.param(lambda: tb.MaxPool2d(3, 2, "same"), (2, 2, 7, 6), id="maxpool-same-stride2"),
    pytest.param(lambda: tb.MaxPool2d(3, 1, "same"), (2, 2, 5, 5), id="maxpool-same-static"),
    pytest.param(lambda: tb.AvgPool2d(2), (2, 2, 6, 6), id="avgpool-valid"),
    pytest.param(lambda: tb.AvgPool2d(2, 1, "same"), (2, 2, 5, 5), id="avgpool-same-asym"),
    pytest.param(lambda: tb.AvgPool2d(3, 2, "same"), (2, 2, 7, 6), id="avgpool-same-stride2"),
    pytest.param(lambda: tb.AvgPool2d(3, 1, "same"), (2, 2, 5, 5), id="avgpool-same-static"),
    pytest.param(lambda: tb.AvgPool2d(3, 1, 1), (2, 2, 4, 4), id="avgpool-int-pad"),
    pytest.param(lambda: tb.GlobalAvgPool2d(), (2, 3, 5, 4), id="global-avgpool"),
    pytest.param(lambda: tb.GlobalMaxPool2d(keepdims=True), (2, 3, 5, 4), id="global-maxpool-keepdims"),
    pytest.param(lambda: tb.Dense(5, 4, activation="sigmoid"), (3, 5), id="dense"),
    pytest.param(lambda: tb.Dense(5, 4), (2, 3, 5), id="dense-3d"),
    pytest.param(lambda: tb.BatchNorm(3), (4, 3, 3, 3), id="bn-axis1"),
    pytest.param(lambda: tb.BatchNorm(3, axis=-1), (4, 2, 3, 3), id="bn-axis-1"),
    pytest.param(lambda: tb.BatchNorm(3), (5, 3), id="bn-vector"),
    pytest.param(lambda: tb.ConvBN(2, 3, 3, padding="same"), (3, 2, 4, 4), id="convbn"),
    pytest.param(lambda: tb.DenseBN(4, 3), (5, 4), id="densebn"),
    pytest.param(lambda: tb.Residual(tb.Conv2d(2, 2, 3, padding="same")), (2, 2, 4, 4), id="residual-identity"),
    pytest.param(
        lambda: tb.Residual(tb.Conv2d(2, 3, 3, 2, "same"), tb.Projection(2, 3, 2)),
        (2, 2, 5, 5),
        id="residual-projection",
    ),
    pytest.param(lambda: tb.Projection(2, 3, 2, norm=True), (3, 2, 5, 5), id="projection-bn"),
    pytest.param(lambda: tb.Projection(4, 3, norm=True, vector=True), (5, 4), id="projection-vector"),
    pytest.param(lambda: tb.IdentityResidualBlock(2), (2, 2, 4, 4), id="identity-block"),
    pytest.param(lambda: tb.DownsamplingResidualBlock(2, 3), (2, 2, 4, 4), id="downsampling-block"),
    pytest.param(
        lambda: nn.Sequential(
            OrderedDict(
                sep=tb.SeparableConv2d(3, 4, 3, padding="same", activation="relu"),
                bn=tb.BatchNorm(4),
                pool=tb.MaxPool2d(3, 2, "same"),
                block=tb.IdentityResidualBlock(4),
            )
        ),
        (2, 3, 6, 6),
        id="stack",
    ),
]

# Whole models at their smallest inputs (SeparableConvNet and ResNet need 32, Xception 71, as Keras).
MODEL_CASES = [
    pytest.param(lambda: models.SeparableConvNet(3, 10), (2, 3, 32, 32), id="separableconvnet"),
    pytest.param(lambda: models.resnet18(num_classes=10), (2, 3, 32, 32), id="resnet18"),
    pytest.param(lambda: models.resnet18(num_classes=10, conv="separable"), (2, 3, 32, 32), id="resnet18-separable"),
    pytest.param(lambda: models.xception(num_classes=10), (2, 3, 71, 71), id="xception"),
]

# The 4-D cases: the ones a memory format applies to.
SPATIAL_CASES = [case for case in LAYER_CASES if len(case.values[1]) == 4]


def has_batchnorm(module: nn.Module) -> bool:
    """Whether any submodule is a torch BatchNorm (training-mode outputs depend on the batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def calibrate_batchnorm(model: nn.Module, shape, batch: int = 8) -> nn.Module:
    """Set every BatchNorm's running statistics to those of one real batch, then eval mode.

    With random init and default buffers (0, 1) a deep model's output hardly depends on its input;
    batch statistics keep the signal. Momentum None with a fresh counter is a plain
    average over the one batch seen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(make_input((batch,) + tuple(shape[1:]), seed=3))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


def make_input(shape, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    """A reproducible standard-normal input of ``shape``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def calibrate(model: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """Eval-mode model whose BatchNorm statistics are those of a real batch (momentum 1); a
    model of several inputs takes one batch of each."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(*[torch.cat([x, torch.randn_like(x)]) for x in inputs])
        for bn in norms:
            bn.momentum = 0.1
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()
