"""Xception (Chollet, 2017) with the Keras Applications layout: all three patterns in one model.

Entry flow, middle flow (8 identity residual blocks) and exit flow, as in
``keras.applications.Xception``: ReLU before each separable conv (block 2's first one follows
block 1's ReLU), BatchNorm after it, 1×1 stride-2 conv + BatchNorm shortcuts where the resolution
halves. Submodule names follow the Keras layer names (``block2_sepconv1`` is
``features.block2.body.sepconv1``), and the weighted leaf layers appear in ``named_modules()``
in the order of the Keras model's ``layers``: within a downsampling block the separable convs
first, then the shortcut's conv and BatchNorm.
"""
from collections import OrderedDict
from typing import Optional

import torch.fx
from torch import Tensor, nn
from torch.jit import Final

from ..conv import Conv2d, SeparableConv2d
from ..linear import Dense
from ..norm import BatchNorm
from ..padding import check_positive_int
from ..pooling import GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from ..residual import Projection, Residual
from ._layers import check_input_size

torch.fx.wrap("check_input_size")

MIN_SIZE = 71  # Keras Applications' minimum input size for Xception
POOLING_MODES = (None, "avg", "max")


def _sepconv(in_channels: int, out_channels: int) -> SeparableConv2d:
    return SeparableConv2d(in_channels, out_channels, 3, padding="same", bias=False)


def _relu_after_bn() -> nn.ReLU:
    # In place, as timm: it overwrites a BatchNorm output that nothing else reads, and BN's backward
    # needs its input, not its output (1-2.5% off a training step). The ReLU opening a block reads
    # the input the shortcut also reads, so it stays out of place.
    return nn.ReLU(inplace=True)


def _downsampling_block(
    in_channels: int, mid_channels: int, out_channels: int, relu_first: bool = True
) -> Residual:
    """[ReLU] SepConv-BN, ReLU SepConv-BN, 3×3/2 'same' max pool; + 1×1/2 conv-BN shortcut.

    The shortcut takes the block input before the leading ReLU, as in Keras.
    """
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    if relu_first:
        layers["sepconv1_act"] = nn.ReLU()
    layers["sepconv1"] = _sepconv(in_channels, mid_channels)
    layers["sepconv1_bn"] = BatchNorm(mid_channels)
    layers["sepconv2_act"] = _relu_after_bn()
    layers["sepconv2"] = _sepconv(mid_channels, out_channels)
    layers["sepconv2_bn"] = BatchNorm(out_channels)
    layers["pool"] = MaxPool2d(3, 2, padding="same")
    return Residual(nn.Sequential(layers), Projection(in_channels, out_channels, stride=2, norm=True))


def _middle_block(channels: int = 728) -> Residual:
    """Three times ReLU SepConv-BN, plus the input (identity shortcut)."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i in (1, 2, 3):
        layers[f"sepconv{i}_act"] = nn.ReLU() if i == 1 else _relu_after_bn()
        layers[f"sepconv{i}"] = _sepconv(channels, channels)
        layers[f"sepconv{i}_bn"] = BatchNorm(channels)
    return Residual(nn.Sequential(layers))


class Xception(nn.Module):
    """Xception. Keras: ``keras.applications.Xception(weights=None, classifier_activation=None)``.

    (N, 3, H, W) -> (N, num_classes) logits with ``include_top``; otherwise (N, 2048) with
    ``pooling="avg"``/``"max"``, or the last feature map (N, 2048, H', W') with ``pooling=None``
    (H' = ceil(((H - 3) // 2 - 1) / 16), 10 at 299). H and W must be at least 71, as in Keras.

    22,855,952 trainable parameters at 1000 classes; with the BatchNorm running means and
    variances 22,910,480, Keras' ``count_params()``. BatchNorm uses PyTorch's defaults
    (eps 1e-5, momentum 0.1); the Keras interop copies Keras' (1e-3, 0.99) when it loads weights.

    Submodules: ``features`` (``block1`` .. ``block14``), ``pool`` and ``fc`` (``nn.Identity``
    where absent).
    """

    include_top: Final[bool]
    min_size: Final[int]

    def __init__(self, num_classes: int = 1000, include_top: bool = True, pooling: Optional[str] = None) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        if not isinstance(include_top, bool):
            raise TypeError(
                f"Invalid type for argument `include_top`. Expected a bool. Received include_top={include_top!r}."
            )
        if pooling not in POOLING_MODES:
            raise ValueError(
                f"Invalid value for argument `pooling`. Expected one of {POOLING_MODES}. "
                f"Received pooling={pooling!r}."
            )
        if include_top and pooling is not None:
            raise ValueError(
                f"Invalid value for argument `pooling`. It applies only with include_top=False (the "
                f"top already averages). Received pooling={pooling!r} with include_top=True."
            )
        self.include_top = include_top
        self.min_size = MIN_SIZE
        self.num_classes = num_classes
        self.pooling = pooling
        blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
        blocks["block1"] = nn.Sequential(
            OrderedDict(
                conv1=Conv2d(3, 32, 3, stride=2, bias=False),
                conv1_bn=BatchNorm(32),
                conv1_act=_relu_after_bn(),
                conv2=Conv2d(32, 64, 3, bias=False),
                conv2_bn=BatchNorm(64),
                conv2_act=_relu_after_bn(),
            )
        )
        blocks["block2"] = _downsampling_block(64, 128, 128, relu_first=False)
        blocks["block3"] = _downsampling_block(128, 256, 256)
        blocks["block4"] = _downsampling_block(256, 728, 728)
        for i in range(5, 13):
            blocks[f"block{i}"] = _middle_block(728)
        blocks["block13"] = _downsampling_block(728, 728, 1024)
        blocks["block14"] = nn.Sequential(
            OrderedDict(
                sepconv1=_sepconv(1024, 1536),
                sepconv1_bn=BatchNorm(1536),
                sepconv1_act=_relu_after_bn(),
                sepconv2=_sepconv(1536, 2048),
                sepconv2_bn=BatchNorm(2048),
                sepconv2_act=_relu_after_bn(),
            )
        )
        self.features = nn.Sequential(blocks)
        if include_top or pooling == "avg":
            self.pool: nn.Module = GlobalAvgPool2d()
        elif pooling == "max":
            self.pool = GlobalMaxPool2d()
        else:
            self.pool = nn.Identity()
        self.fc: nn.Module = Dense(2048, num_classes) if include_top else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W), H, W >= 71 -> logits (N, num_classes), pooled (N, 2048) or (N, 2048, H', W')."""
        check_input_size(x, self.min_size, "Xception")
        return self.fc(self.pool(self.features(x)))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, include_top={self.include_top}, pooling={self.pooling!r}"


def xception(num_classes: int = 1000, include_top: bool = True, pooling: Optional[str] = None) -> Xception:
    """Build an :class:`Xception` (random init). Keras: ``keras.applications.Xception(weights=None)``.

    Args:
        num_classes: logits of the top ``Dense`` (Keras ``classes``); used with ``include_top``.
        include_top: end with global average pooling and ``Dense(num_classes)`` (no softmax: it
            belongs to the loss).
        pooling: without the top: ``None`` (feature map), ``"avg"`` or ``"max"`` (global pooling).
    """
    return Xception(num_classes, include_top, pooling)
