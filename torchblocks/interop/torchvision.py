"""Convert ResNets between torchvision and torchblocks, weights and BatchNorm statistics included.

The torchblocks ResNet has torchvision's state-dict keys and computes what torchvision's default
ResNet computes, so both directions come down to a strict ``load_state_dict``. What this module adds
is the proof that the source is that default architecture: every submodule of the source is
compared with a reference built on the meta device (no memory, no arithmetic) — its exact type,
every attribute the forward pass reads (kernel, stride, padding, dilation, groups, bias, BatchNorm
settings, pooling windows), its parameters and their shapes — and anything else is refused by
name: ``replace_stride_with_dilation``, a changed stem, ResNeXt/wide ResNets, ``GroupNorm`` or
``FrozenBatchNorm2d``, a ``Sequential`` head, another activation, forward hooks, tied weights.
"""
from typing import Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from ..linear import Dense
from ..models.resnet import RESNET_CONFIGS, BasicBlock, ResNet

# Per torch base class, the attributes its forward reads: these must equal the reference's. The
# first that differs is named, so dilation comes before the padding that usually changes with it.
# `bias` is compared as the constructor's flag (a bias or None).
_ATTRIBUTES: Tuple[Tuple[type, Tuple[str, ...]], ...] = (
    (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "dilation", "padding",
                 "groups", "padding_mode", "bias")),
    (nn.modules.batchnorm._BatchNorm, ("num_features", "eps", "momentum", "affine", "track_running_stats")),
    (nn.MaxPool2d, ("kernel_size", "stride", "dilation", "padding", "ceil_mode", "return_indices")),
    (nn.AdaptiveAvgPool2d, ("output_size",)),
    (nn.Linear, ("in_features", "out_features", "bias")),
)
# Attributes an int or a pair may spell alike (nn.MaxPool2d(3) is nn.MaxPool2d((3, 3))).
_PAIRS = ("kernel_size", "stride", "padding", "dilation", "output_size")
# What the torchvision constructor calls the thing an attribute reflects, for the messages.
_TV_HINTS = {
    "dilation": " (replace_stride_with_dilation is not supported)",
    "groups": " (groups=1: ResNeXt is not supported)",
}
_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _type_name(obj: object) -> str:
    """``torch.nn.GroupNorm`` rather than ``torch.nn.modules.normalization.GroupNorm``."""
    cls = obj if isinstance(obj, type) else type(obj)
    if cls.__module__.startswith("torch.nn.modules.") and getattr(nn, cls.__qualname__, None) is cls:
        return f"torch.nn.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _path(arg: str, name: str) -> str:
    return f"{arg}.{name}" if name else arg


def _attribute(module: nn.Module, name: str) -> object:
    value = getattr(module, name)
    if name == "bias":
        return value is not None
    if name in _PAIRS and isinstance(value, int):
        return (value, value)
    return value


def _checked_attributes(module: nn.Module) -> Tuple[str, ...]:
    for base, names in _ATTRIBUTES:
        if isinstance(module, base):
            return names
    return ()


def _tensors(module: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """The module's own parameters and buffers (not its children's) and their shapes."""
    own = {**module._parameters, **module._buffers}
    return {name: tuple(t.shape) for name, t in own.items() if t is not None}


def _compare(
    arg: str, source: nn.Module, reference: nn.Module, supported: str, hints: Dict[str, str]
) -> None:
    """Raise unless ``source`` has ``reference``'s submodules, types, attributes and tensor shapes."""
    found = dict(source.named_modules(remove_duplicate=False))
    expected = dict(reference.named_modules(remove_duplicate=False))
    for name, ref in expected.items():
        path = _path(arg, name)
        if name not in found:
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{path}` is missing; {supported} has a "
                f"{_type_name(ref)} there."
            )
        module = found[name]
        if type(module) is not type(ref):
            raise TypeError(
                f"Invalid type for argument `{arg}`. `{path}` is a {_type_name(module)}; the "
                f"conversion supports only a {_type_name(ref)} there, as {supported} has."
            )
        for attr in _checked_attributes(ref):
            value, want = _attribute(module, attr), _attribute(ref, attr)
            if value != want:
                raise ValueError(
                    f"Invalid value for argument `{arg}`. `{path}` has {attr}={value!r}; the "
                    f"conversion supports only {attr}={want!r}, as {supported} has"
                    f"{hints.get(attr, '')}."
                )
        # torchblocks layers keep their whole configuration (Keras padding, activation) in it.
        own_layer = name and type(ref).__module__.startswith("torchblocks")
        if own_layer and module.extra_repr() != ref.extra_repr():
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{path}` is configured as "
                f"({module.extra_repr()}); the conversion supports only ({ref.extra_repr()}), as "
                f"{supported} has."
            )
        tensors, want_tensors = _tensors(module), _tensors(ref)
        if tensors != want_tensors:
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{path}` holds the tensors {tensors} (name: "
                f"shape); the conversion supports only {want_tensors}, as {supported} has."
            )
    extra = [name for name in found if name not in expected]
    if extra:
        raise ValueError(
            f"Invalid value for argument `{arg}`. `{_path(arg, extra[0])}` "
            f"({_type_name(found[extra[0]])}) is not part of {supported}; the conversion would drop it."
        )


def _named_tensors(model: nn.Module) -> Iterator[Tuple[str, Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _check_plain(arg: str, model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Refuse what the architecture check cannot see; return the model's one device and dtype.

    Hooks, a ``forward`` set on an instance, tied tensors, mixed dtypes/devices and per-module
    train/eval modes would all change what the copy computes without showing in its layers.
    """
    for name, module in model.named_modules(remove_duplicate=False):
        path = _path(arg, name)
        hooks = [hook.strip("_") for hook in _HOOKS if getattr(module, hook, None)]
        if hooks:
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{path}` has {', '.join(hooks)}, which the "
                f"converted model would not run; remove them (handle.remove()) before converting and "
                f"register them on the result."
            )
        if "forward" in vars(module):
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{path}.forward` is replaced on the instance; "
                f"the conversion supports only the class's own forward."
            )
        if module.training != model.training:
            modes = ["eval", "training"]
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{path}` is in {modes[module.training]} mode "
                f"while `{arg}` is in {modes[model.training]} mode; the conversion keeps one mode for "
                f"the whole model: call `{arg}.train()` or `{arg}.eval()` first, and set per-module "
                f"modes on the result."
            )
    seen: Dict[int, str] = {}
    devices, dtypes = set(), set()
    for name, tensor in _named_tensors(model):
        if id(tensor) in seen and seen[id(tensor)] != name:
            raise ValueError(
                f"Invalid value for argument `{arg}`. `{_path(arg, name)}` is the same tensor as "
                f"`{_path(arg, seen[id(tensor)])}` (tied weights); the converted model would hold "
                f"two independent copies."
            )
        seen[id(tensor)] = name
        devices.add(tensor.device)
        if tensor.is_floating_point():
            dtypes.add(tensor.dtype)
    if len(devices) != 1 or len(dtypes) != 1:
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected every parameter and buffer on one device "
            f"with one floating dtype; received devices {sorted(map(str, devices))} and dtypes "
            f"{sorted(map(str, dtypes))}. Call `{arg}.to(device, dtype)` first."
        )
    return devices.pop(), dtypes.pop()


def _materialize(
    model: nn.Module, source: nn.Module, state: Dict[str, Tensor], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """``model`` (built on the meta device) with ``state`` copied in, ``source``'s mode and frozen flags."""
    model = model.to_empty(device=device).to(dtype)
    model.load_state_dict(state)
    requires_grad = {key: t.requires_grad for key, t in source.state_dict(keep_vars=True).items()}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if isinstance(tensor, nn.Parameter):
            tensor.requires_grad_(requires_grad[key])
    return model.train(source.training)


def _tv_blocks(tv_model: nn.Module) -> Tuple[type, Tuple[int, ...]]:
    """The block class and stage depths of a torchvision ResNet, refusing other block types."""
    first: List[Tuple[str, type]] = []
    depths: List[int] = []
    for i in (1, 2, 3, 4):
        stage = getattr(tv_model, f"layer{i}", None)
        if type(stage) is not nn.Sequential or len(stage) == 0:
            raise TypeError(
                f"Invalid type for argument `tv_model`. `tv_model.layer{i}` is a "
                f"{_type_name(stage)}; the conversion supports only a non-empty torch.nn.Sequential "
                f"of torchvision BasicBlock or Bottleneck blocks."
            )
        for j, block in enumerate(stage):
            if type(block) not in (tv_resnet.BasicBlock, tv_resnet.Bottleneck):
                raise TypeError(
                    f"Invalid type for argument `tv_model`. `tv_model.layer{i}.{j}` is a "
                    f"{_type_name(block)}; the conversion supports only torchvision's BasicBlock "
                    f"and Bottleneck."
                )
            if not first:
                first.append((f"layer{i}.{j}", type(block)))
            elif type(block) is not first[0][1]:
                raise TypeError(
                    f"Invalid type for argument `tv_model`. `tv_model.layer{i}.{j}` is a "
                    f"{_type_name(block)} while `tv_model.{first[0][0]}` is a {_type_name(first[0][1])}; "
                    f"the conversion supports only one block type throughout."
                )
        depths.append(len(stage))
    return first[0][1], tuple(depths)


def _architecture(tv_model: nn.Module) -> Tuple[str, type, Tuple[int, ...]]:
    """The torchblocks architecture name, block class and depths of a torchvision ResNet."""
    if type(tv_model) is not tv_resnet.ResNet:
        subclass = " (a subclass, whose forward may differ)" if isinstance(tv_model, tv_resnet.ResNet) else ""
        raise TypeError(
            f"Invalid type for argument `tv_model`. Expected a torchvision.models.ResNet (the class "
            f"itself). Received an object of type {type(tv_model).__name__}{subclass}."
        )
    if tv_model.groups != 1 or tv_model.base_width != 64:
        raise ValueError(
            f"Invalid value for argument `tv_model`. torchblocks builds plain ResNets (groups=1, "
            f"width_per_group=64); received groups={tv_model.groups}, "
            f"width_per_group={tv_model.base_width} (a ResNeXt or wide ResNet)."
        )
    if tv_model.dilation != 1:
        raise ValueError(
            f"Invalid value for argument `tv_model`. torchblocks builds ResNets with strided stages "
            f"(replace_stride_with_dilation=None); received a model whose last stage has "
            f"dilation={tv_model.dilation}."
        )
    block, depths = _tv_blocks(tv_model)
    is_basic = block is tv_resnet.BasicBlock
    for arch, (tb_block, tb_depths) in RESNET_CONFIGS.items():
        if (tb_block is BasicBlock) == is_basic and tb_depths == depths:
            return arch, block, depths
    raise ValueError(
        f"Invalid value for argument `tv_model`. Expected one of {tuple(RESNET_CONFIGS)}; received a "
        f"ResNet of {block.__name__} blocks with stage depths {depths}."
    )


def _linear_head(arg: str, model: nn.Module, allowed: Tuple[type, ...]) -> int:
    """``model.fc.out_features``, refusing any head but a plain linear layer."""
    fc = getattr(model, "fc", None)
    if type(fc) not in allowed:
        raise TypeError(
            f"Invalid type for argument `{arg}`. `{arg}.fc` is a {_type_name(fc)}; the conversion "
            f"supports only a {' or '.join(_type_name(t) for t in allowed)} head. Convert the model "
            f"with a linear head, then replace `fc` on the result."
        )
    return fc.out_features


def from_torchvision(tv_model: nn.Module) -> ResNet:
    """A torchblocks ResNet with ``tv_model``'s weights, BatchNorm statistics and train/eval mode.

    Only torchvision's default architecture converts: ``ResNet(BasicBlock | Bottleneck, depths)``
    of resnet18..152 with any ``num_classes`` and ``zero_init_residual``. Frozen parameters
    (``requires_grad=False``) stay frozen.

    Args:
        tv_model: a ``torchvision.models.resnet18`` .. ``resnet152``.

    Returns:
        ``ResNet`` on the same device and dtype, giving the same outputs on (N, 3, H, W) input.

    Raises:
        TypeError: ``tv_model`` is not a ``torchvision.models.ResNet``, or a submodule has another
            type than the default's (a ``GroupNorm``, a ``Sequential`` head, another activation).
        ValueError: an attribute differs from the default's (dilation, stem, groups, widths,
            BatchNorm settings, bias), or the model has hooks, tied weights, mixed dtypes, devices
            or train/eval modes.
    """
    arch, block, depths = _architecture(tv_model)
    num_classes = _linear_head("tv_model", tv_model, (nn.Linear,))
    with torch.device("meta"):
        reference = tv_resnet.ResNet(block, list(depths), num_classes=num_classes)
        model = ResNet(arch, num_classes=num_classes)
    supported = f"torchvision's default {arch} (ResNet({block.__name__}, {list(depths)}))"
    _compare("tv_model", tv_model, reference, supported, _TV_HINTS)
    device, dtype = _check_plain("tv_model", tv_model)
    return _materialize(model, tv_model, tv_model.state_dict(), device, dtype)


def to_torchvision(tb_model: ResNet) -> nn.Module:
    """A ``torchvision.models.ResNet`` with ``tb_model``'s weights, statistics and train/eval mode.

    Only the architecture ``tb.models.resnet18`` .. ``resnet152(conv="standard")`` builds
    converts (torchvision has no separable variant); ``fc`` may be a ``Dense`` without activation
    or a plain ``nn.Linear`` with any number of classes. Frozen parameters stay frozen.

    Args:
        tb_model: a torchblocks ``ResNet`` built with ``conv="standard"``.

    Raises:
        TypeError: ``tb_model`` is not a torchblocks ``ResNet``, or a submodule has another type.
        ValueError: ``conv="separable"``, an attribute differs from what the constructor builds, or
            the model has hooks, tied weights, mixed dtypes, devices or train/eval modes.
    """
    if type(tb_model) is not ResNet:
        subclass = " (a subclass, whose forward may differ)" if isinstance(tb_model, ResNet) else ""
        raise TypeError(
            f"Invalid type for argument `tb_model`. Expected a torchblocks.models.ResNet (the class "
            f"itself). Received an object of type {type(tb_model).__name__}{subclass}."
        )
    if tb_model.conv != "standard":
        raise ValueError(
            f"Invalid value for argument `tb_model`. torchvision has no depthwise-separable "
            f"ResNet; received a model built with conv={tb_model.conv!r}."
        )
    num_classes = _linear_head("tb_model", tb_model, (Dense, nn.Linear))
    with torch.device("meta"):
        reference: nn.Module = ResNet(tb_model.arch, num_classes=num_classes)
        if type(tb_model.fc) is nn.Linear:
            reference.fc = nn.Linear(reference.fc.in_features, num_classes)
        block, depths = RESNET_CONFIGS[tb_model.arch]
        tv_block = tv_resnet.BasicBlock if block is BasicBlock else tv_resnet.Bottleneck
        model = tv_resnet.ResNet(tv_block, list(depths), num_classes=num_classes)
    supported = f"torchblocks' {tb_model.arch}(conv='standard')"
    _compare("tb_model", tb_model, reference, supported, {})
    device, dtype = _check_plain("tb_model", tb_model)
    return _materialize(model, tb_model, tb_model.state_dict(), device, dtype)
