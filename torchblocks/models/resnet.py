"""ResNet-18/34/50/101/152 from ``Residual`` + ``Projection``, loading torchvision checkpoints as is.

Torchvision semantics (ResNet v1.5: the stride of a Bottleneck sits on its 3×3 conv; symmetric
padding 1 on the 3×3 convs, not Keras 'same'; 1×1 strided projection + BatchNorm shortcuts where
the shape changes). Each block is a ``Residual`` (body + ``Projection(norm=True)``) followed by a
ReLU. State-dict hooks on the blocks translate the keys to torchvision's
(``layer1.0.residual.body.conv1.weight`` <-> ``layer1.0.conv1.weight``,
``residual.shortcut.proj`` / ``residual.shortcut.bn.bn`` <-> ``downsample.0`` / ``downsample.1``),
so ``model.state_dict()`` has exactly torchvision's keys and
``model.load_state_dict(torchvision_resnet.state_dict())`` works strictly. (A TorchScript copy
keeps the internal keys: scripting does not run Python state-dict hooks.)

``conv="separable"`` replaces every 3×3 conv by a ``SeparableConv2d`` (same channels, stride,
padding 1, no bias): ``9·C_in + C_in·C_out`` parameters instead of ``9·C_in·C_out``.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

from torch import Tensor, nn

from ..conv import Conv2d, SeparableConv2d
from ..linear import Dense
from ..padding import check_positive_int
from ..pooling import MaxPool2d
from ..residual import Projection, Residual

CONV_TYPES = ("standard", "separable")

# Internal key prefix -> torchvision key prefix, relative to a block.
_TO_TORCHVISION = (
    ("residual.body.", ""),
    ("residual.shortcut.proj.", "downsample.0."),
    ("residual.shortcut.bn.bn.", "downsample.1."),
)


def _check_conv(conv: object) -> str:
    if conv not in CONV_TYPES:
        raise ValueError(
            f"Invalid value for argument `conv`. Expected one of {CONV_TYPES}. Received conv={conv!r}."
        )
    return str(conv)


def _conv3x3(in_channels: int, out_channels: int, stride: int, conv: str) -> nn.Module:
    """torchvision's ``conv3x3`` (padding 1, no bias), or its depthwise-separable counterpart."""
    if _check_conv(conv) == "separable":
        return SeparableConv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
    return Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


def _rename(state_dict: Dict[str, Tensor], prefix: str, pairs: Sequence[Tuple[str, str]]) -> None:
    """Rename, in place and in order, the keys under ``prefix`` whose rest starts with a pair's first."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in pairs:
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break
        else:
            # Keep the block's keys contiguous and in order: re-append untouched ones too.
            state_dict[key] = state_dict.pop(key)


def _to_torchvision_keys(module: nn.Module, state_dict: Dict[str, Tensor], prefix: str, local_metadata) -> None:
    _rename(state_dict, prefix, _TO_TORCHVISION)


def _from_torchvision_keys(
    module: nn.Module, state_dict: Dict[str, Tensor], prefix: str, local_metadata, strict, missing, unexpected, errors
) -> None:
    # The body's layers (conv1, bn1, ...) are the only torchvision names without a fixed prefix:
    # every key of this block that is not already internal belongs to the body.
    body_names = tuple(f"{name}." for name in module.residual.body._modules)
    pairs: List[Tuple[str, str]] = [(new, old) for old, new in _TO_TORCHVISION if new]
    pairs += [(name, "residual.body." + name) for name in body_names]
    _rename(state_dict, prefix, pairs)


class _Block(nn.Module):
    """``ReLU(Residual(body, shortcut)(x))`` with torchvision's state-dict keys."""

    expansion = 1

    def __init__(self, body: nn.Sequential, shortcut: Optional[nn.Module]) -> None:
        super().__init__()
        self.residual = Residual(body, shortcut)
        self.act = nn.ReLU()
        self.register_state_dict_post_hook(_to_torchvision_keys)
        self.register_load_state_dict_pre_hook(_from_torchvision_keys)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, channels * expansion, H / stride, W / stride)."""
        return self.act(self.residual(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> Optional[Projection]:
    if stride != 1 or in_channels != out_channels:
        return Projection(in_channels, out_channels, stride, norm=True)
    return None


class BasicBlock(_Block):
    """ResNet-18/34 block: 3×3 conv-BN-ReLU, 3×3 conv-BN, plus the shortcut, then ReLU.

    torchvision: ``torchvision.models.resnet.BasicBlock``. (N, in_channels, H, W) ->
    (N, channels, H', W'), H' = (H - 1) // stride + 1.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, conv: str = "standard") -> None:
        body = nn.Sequential(
            OrderedDict(
                conv1=_conv3x3(in_channels, channels, stride, conv),
                bn1=nn.BatchNorm2d(channels),
                relu1=nn.ReLU(),
                conv2=_conv3x3(channels, channels, 1, conv),
                bn2=nn.BatchNorm2d(channels),
            )
        )
        super().__init__(body, _shortcut(in_channels, channels, stride))


class Bottleneck(_Block):
    """ResNet-50/101/152 block (v1.5): 1×1 conv-BN-ReLU, 3×3 strided conv-BN-ReLU, 1×1 conv-BN
    to ``4 * channels``, plus the shortcut, then ReLU.

    torchvision: ``torchvision.models.resnet.Bottleneck``. (N, in_channels, H, W) ->
    (N, 4 * channels, H', W'), H' = (H - 1) // stride + 1.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, conv: str = "standard") -> None:
        out_channels = channels * self.expansion
        body = nn.Sequential(
            OrderedDict(
                conv1=Conv2d(in_channels, channels, 1, bias=False),
                bn1=nn.BatchNorm2d(channels),
                relu1=nn.ReLU(),
                conv2=_conv3x3(channels, channels, stride, conv),
                bn2=nn.BatchNorm2d(channels),
                relu2=nn.ReLU(),
                conv3=Conv2d(channels, out_channels, 1, bias=False),
                bn3=nn.BatchNorm2d(out_channels),
            )
        )
        super().__init__(body, _shortcut(in_channels, out_channels, stride))


BlockType = Union[Type[BasicBlock], Type[Bottleneck]]

# Architecture name -> (block, blocks per stage), as torchvision.
RESNET_CONFIGS: Dict[str, Tuple[BlockType, Tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet with torchvision's layout and state-dict keys. torchvision: ``torchvision.models.ResNet``.

    (N, 3, H, W) -> (N, num_classes) logits. Submodules ``conv1``, ``bn1``, ``relu``, ``maxpool``,
    ``layer1`` .. ``layer4`` (``nn.Sequential`` of blocks), ``avgpool``, ``fc``; attributes
    ``arch`` (e.g. ``"resnet50"``) and ``conv``.

    Args:
        arch: one of ``RESNET_CONFIGS``.
        num_classes: logits of the final ``Dense``.
        conv: ``"standard"`` or ``"separable"`` (3×3 convs as ``SeparableConv2d``).
    """

    def __init__(self, arch: str, num_classes: int = 1000, conv: str = "standard") -> None:
        super().__init__()
        if arch not in RESNET_CONFIGS:
            raise ValueError(
                f"Invalid value for argument `arch`. Expected one of {tuple(RESNET_CONFIGS)}. "
                f"Received arch={arch!r}."
            )
        check_positive_int(num_classes, "num_classes")
        self.conv = _check_conv(conv)
        self.arch = arch
        self.num_classes = num_classes
        block, depths = RESNET_CONFIGS[arch]
        self.conv1 = Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        stages: List[nn.Sequential] = []
        for i, depth in enumerate(depths):
            channels = 64 * 2**i
            stride = 1 if i == 0 else 2
            blocks: List[nn.Module] = []
            for j in range(depth):
                blocks.append(block(in_channels, channels, stride if j == 0 else 1, self.conv))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = Dense(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation: He (fan_out) for convs, BN scale 1 and shift 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, conv={self.conv!r}"


def resnet18(num_classes: int = 1000, conv: str = "standard") -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2). torchvision: ``resnet18(weights=None)``."""
    return ResNet("resnet18", num_classes, conv)


def resnet34(num_classes: int = 1000, conv: str = "standard") -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3). torchvision: ``resnet34(weights=None)``."""
    return ResNet("resnet34", num_classes, conv)


def resnet50(num_classes: int = 1000, conv: str = "standard") -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3). torchvision: ``resnet50(weights=None)``."""
    return ResNet("resnet50", num_classes, conv)


def resnet101(num_classes: int = 1000, conv: str = "standard") -> ResNet:
    """ResNet-101 (Bottleneck, 3-4-23-3). torchvision: ``resnet101(weights=None)``."""
    return ResNet("resnet101", num_classes, conv)


def resnet152(num_classes: int = 1000, conv: str = "standard") -> ResNet:
    """ResNet-152 (Bottleneck, 3-8-36-3). torchvision: ``resnet152(weights=None)``."""
    return ResNet("resnet152", num_classes, conv)
