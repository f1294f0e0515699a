"""Convert ResNets between torchvision and torchblocks, weights and BatchNorm statistics included.

The torchblocks ResNet has torchvision's state-dict keys, so both directions are a strict
``load_state_dict``; what this module adds is picking the matching architecture and refusing the
torchvision variants torchblocks does not build (ResNeXt, wide ResNets, other stems).
"""
from typing import Tuple

import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..models.resnet import RESNET_CONFIGS, BasicBlock, ResNet

def _architecture(tv_model: nn.Module) -> str:
    """The torchblocks architecture name of a torchvision ResNet, or ``ValueError``."""
    if not isinstance(tv_model, tv_resnet.ResNet):
        raise TypeError(
            f"Invalid type for argument `tv_model`. Expected a torchvision.models.ResNet. "
            f"Received an object of type {type(tv_model).__name__}."
        )
    if tv_model.groups != 1 or tv_model.base_width != 64:
        raise ValueError(
            f"Invalid value for argument `tv_model`. torchblocks builds plain ResNets (groups=1, "
            f"width_per_group=64); received groups={tv_model.groups}, "
            f"width_per_group={tv_model.base_width} (a ResNeXt or wide ResNet)."
        )
    block = type(tv_model.layer1[0])
    depths: Tuple[int, ...] = tuple(len(getattr(tv_model, f"layer{i}")) for i in (1, 2, 3, 4))
    is_basic = block is tv_resnet.BasicBlock
    for arch, (tb_block, tb_depths) in RESNET_CONFIGS.items():
        if (tb_block is BasicBlock) == is_basic and tb_depths == depths:
            return arch
    raise ValueError(
        f"Invalid value for argument `tv_model`. Expected one of {tuple(RESNET_CONFIGS)}; received a "
        f"ResNet of {block.__name__} blocks with stage depths {depths}."
    )


def _reference_tensor(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def from_torchvision(tv_model: nn.Module) -> ResNet:
    """A torchblocks ResNet with ``tv_model``'s weights, BatchNorm statistics and train/eval mode.

    Args:
        tv_model: a ``torchvision.models.resnet18`` .. ``resnet152`` (any ``num_classes``).

    Returns:
        ``ResNet`` on the same device and dtype, giving the same outputs on (N, 3, H, W) input.
    """
    arch = _architecture(tv_model)
    ref = _reference_tensor(tv_model)
    model = ResNet(arch, num_classes=tv_model.fc.out_features).to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict(tv_model.state_dict())
    return model.train(tv_model.training)


def to_torchvision(tb_model: ResNet) -> nn.Module:
    """A ``torchvision.models.ResNet`` with ``tb_model``'s weights, statistics and train/eval mode.

    Args:
        tb_model: a torchblocks ``ResNet`` built with ``conv="standard"`` (torchvision has no
            separable variant).
    """
    if not isinstance(tb_model, ResNet):
        raise TypeError(
            f"Invalid type for argument `tb_model`. Expected a torchblocks.models.ResNet. "
            f"Received an object of type {type(tb_model).__name__}."
        )
    if tb_model.conv != "standard":
        raise ValueError(
            f"Invalid value for argument `tb_model`. torchvision has no depthwise-separable "
            f"ResNet; received a model built with conv={tb_model.conv!r}."
        )
    ref = _reference_tensor(tb_model)
    builder = getattr(torchvision.models, tb_model.arch)
    model = builder(weights=None, num_classes=tb_model.num_classes).to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict(tb_model.state_dict())
    return model.train(tb_model.training)
