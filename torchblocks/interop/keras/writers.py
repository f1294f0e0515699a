"""Source writers: for each module class ``from_keras`` produces, the constructor call that
rebuilds a module from its attributes, as ``to_source`` writes it.

``WRITERS`` maps a module class (matched exactly, never a subclass) to a function returning a
``Call``; adding a class is one function decorated with ``@writes(ModuleClass)``. A writer reads
every attribute that changes the module and writes only the arguments that differ from the
defaults; ``to_source`` runs the written code and compares the result with the module.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Optional, Sequence, Tuple

from torch import nn

from ... import activations as tb_activations
from ...activations import ACTIVATION_NAMES, get_activation, is_identity
from ...conv import Conv2d, DepthwiseConv2d, SeparableConv2d
from ...linear import Dense
from ...norm import BatchNorm
from ...pooling import AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d
from . import layers as keras_layers
from .layers import Add, Flatten

__all__ = ["Call", "Code", "TB", "WRITERS", "call", "non_default", "write", "writes"]

TB = "import torchblocks as tb"
KERAS_LAYERS = "from torchblocks.interop.keras.layers import {}"
ACTIVATIONS = "from torchblocks.activations import {}"


@dataclass(frozen=True)
class Call:
    """A constructor call in the written source: callee, rendered arguments, needed imports."""

    callee: str
    args: Tuple[str, ...]
    imports: FrozenSet[str]

    @property
    def text(self) -> str:
        return f"{self.callee}({', '.join(self.args)})"


Writer = Callable[[nn.Module], Call]
WRITERS: Dict[type, Writer] = {}


def writes(*classes: type) -> Callable[[Writer], Writer]:
    """Register the decorated function as the source writer of modules of exactly ``classes``."""

    def register(write: Writer) -> Writer:
        for cls in classes:
            WRITERS[cls] = write
        return write

    return register


class Code(str):
    """Source text written as it is (an expression), where a literal would be less readable."""


def _literal(value: Any) -> str:
    if isinstance(value, Call):
        return value.text
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, str) and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_literal, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (bool, int, float, str, type(None))):
        return repr(value)
    raise TypeError(f"to_source cannot write a value of type {type(value).__name__}: {value!r}")


def call(callee: str, imports: Sequence[str], *args: Any, **kwargs: Any) -> Call:
    """A ``Call`` of ``callee`` with positional ``args`` and keyword ``kwargs`` (values: Python
    literals or nested ``Call``s, whose imports are kept)."""
    needed = set(imports)
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, Call):
            needed |= value.imports
    rendered = [_literal(a) for a in args] + [f"{k}={_literal(v)}" for k, v in kwargs.items()]
    return Call(callee, tuple(rendered), frozenset(needed))


def non_default(**pairs: Tuple[Any, Any]) -> Dict[str, Any]:
    """Keyword arguments whose (value, default) pair differs from the default."""
    return {name: value for name, (value, default) in pairs.items() if value != default}


def _activation(act: nn.Module) -> Dict[str, Any]:
    """The ``activation=`` argument of a layer: omitted, a Keras name, or a module."""
    if is_identity(act):
        return {}
    for name in ACTIVATION_NAMES:
        candidate = get_activation(name)
        if type(candidate) is type(act) and repr(candidate) == repr(act):
            return {"activation": name}
    return {"activation": write(act, "activation")}


@writes(Conv2d)
def _conv(m: Conv2d) -> Call:
    return call(
        "tb.Conv2d", [TB], m.in_channels, m.out_channels, m.kernel_size,
        **non_default(stride=(m.stride, (1, 1)), padding=(m.padding_spec, "valid"),
                      dilation=(m.dilation, (1, 1)), groups=(m.groups, 1),
                      bias=(m.bias is not None, True)),
        **_activation(m.act),
    )


@writes(DepthwiseConv2d)
def _depthwise(m: DepthwiseConv2d) -> Call:
    return call(
        "tb.DepthwiseConv2d", [TB], m.in_channels, m.kernel_size,
        **non_default(stride=(m.stride, (1, 1)), padding=(m.padding_spec, "valid"),
                      dilation=(m.dilation, (1, 1)), depth_multiplier=(m.depth_multiplier, 1),
                      bias=(m.bias is not None, True)),
        **_activation(m.act),
    )


@writes(SeparableConv2d)
def _separable(m: SeparableConv2d) -> Call:
    dw = m.depthwise
    return call(
        "tb.SeparableConv2d", [TB], m.in_channels, m.out_channels, dw.kernel_size,
        **non_default(stride=(dw.stride, (1, 1)), padding=(dw.padding_spec, "valid"),
                      dilation=(dw.dilation, (1, 1)), depth_multiplier=(dw.depth_multiplier, 1),
                      bias=(m.pointwise.bias is not None, True)),
        **_activation(m.act),
    )


def _momentum(momentum: Optional[float]) -> Any:
    """Keras' momentum m arrives as torch's 1 - m (0.010000000000000009 for 0.99): written so."""
    if isinstance(momentum, float) and len(repr(momentum)) > 8:
        keras_momentum = round(1.0 - momentum, 8)
        if 1.0 - keras_momentum == momentum:
            return Code(f"1 - {keras_momentum!r}")
    return momentum


@writes(BatchNorm)
def _batch_norm(m: BatchNorm) -> Call:
    bn = m.bn
    return call(
        "tb.BatchNorm", [TB], bn.num_features,
        **non_default(axis=(m.axis, 1), eps=(bn.eps, 1e-5), momentum=(_momentum(bn.momentum), 0.1),
                      affine=(bn.affine, True), track_running_stats=(bn.track_running_stats, True)),
    )


@writes(Dense)
def _dense(m: Dense) -> Call:
    return call(
        "tb.Dense", [TB], m.in_features, m.out_features,
        **non_default(bias=(m.bias is not None, True)), **_activation(m.act),
    )


@writes(MaxPool2d, AvgPool2d)
def _pooling(m: nn.Module) -> Call:
    return call(
        f"tb.{type(m).__name__}", [TB], m.kernel_size, stride=m.stride,
        **non_default(padding=(m.padding_spec, "valid")),
    )


@writes(GlobalAvgPool2d, GlobalMaxPool2d)
def _global_pooling(m: nn.Module) -> Call:
    return call(f"tb.{type(m).__name__}", [TB], **non_default(keepdims=(m.keepdims, False)))


@writes(Add)
def _add(m: Add) -> Call:
    return call("Add", [KERAS_LAYERS.format("Add")])


@writes(Flatten)
def _flatten(m: Flatten) -> Call:
    return call(
        "Flatten", [KERAS_LAYERS.format("Flatten")], m.channels_last,
        **non_default(permuted_for=(tuple(m.permuted_for), ())),
    )


@writes(nn.Dropout)
def _dropout(m: nn.Dropout) -> Call:
    return call("nn.Dropout", [], m.p, **non_default(inplace=(m.inplace, False)))


@writes(nn.ZeroPad2d)
def _zero_pad(m: nn.ZeroPad2d) -> Call:
    return call("nn.ZeroPad2d", [], tuple(m.padding))


@writes(
    nn.Identity, nn.ReLU, nn.ReLU6, nn.SELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Hardsigmoid, nn.Hardswish, nn.Mish,
    nn.Softsign,
)
def _plain_activation(m: nn.Module) -> Call:
    inplace = getattr(m, "inplace", False)
    return call(f"nn.{type(m).__name__}", [], **non_default(inplace=(inplace, False)))


@writes(nn.Hardtanh)
def _hardtanh(m: nn.Hardtanh) -> Call:
    return call("nn.Hardtanh", [], m.min_val, m.max_val, **non_default(inplace=(m.inplace, False)))


@writes(nn.LeakyReLU)
def _leaky_relu(m: nn.LeakyReLU) -> Call:
    return call("nn.LeakyReLU", [], m.negative_slope, **non_default(inplace=(m.inplace, False)))


@writes(nn.ELU)
def _elu(m: nn.ELU) -> Call:
    return call("nn.ELU", [], **non_default(alpha=(m.alpha, 1.0), inplace=(m.inplace, False)))


@writes(nn.GELU)
def _gelu(m: nn.GELU) -> Call:
    return call("nn.GELU", [], **non_default(approximate=(m.approximate, "none")))


@writes(nn.Softmax, nn.LogSoftmax)
def _softmax(m: nn.Module) -> Call:
    return call(f"nn.{type(m).__name__}", [], dim=m.dim)


@writes(nn.Softplus)
def _softplus(m: nn.Softplus) -> Call:
    return call("nn.Softplus", [], **non_default(beta=(m.beta, 1.0), threshold=(m.threshold, 20.0)))


@writes(tb_activations.HardSigmoid, tb_activations.Exponential)
def _torchblocks_activation(m: nn.Module) -> Call:
    name = type(m).__name__
    return call(name, [ACTIVATIONS.format(name)])


@writes(keras_layers.Subtract, keras_layers.Multiply, keras_layers.Divide, keras_layers.Average,
        keras_layers.Maximum, keras_layers.Minimum)
def _merge(m: nn.Module) -> Call:
    name = type(m).__name__
    return call(name, [KERAS_LAYERS.format(name)])


def _glue(m: nn.Module, *args: Any, **kwargs: Any) -> Call:
    """The call of a module of torchblocks.interop.keras.layers."""
    name = type(m).__name__
    return call(name, [KERAS_LAYERS.format(name)], *args, **kwargs)


@writes(keras_layers.Concatenate)
def _concatenate(m: keras_layers.Concatenate) -> Call:
    return _glue(m, m.dim)


@writes(keras_layers.Arithmetic)
def _arithmetic(m: keras_layers.Arithmetic) -> Call:
    return _glue(m, m.op, m.constant, **non_default(reverse=(m.reverse, False)))


@writes(keras_layers.ScaleAdd)
def _scale_add(m: keras_layers.ScaleAdd) -> Call:
    return _glue(m, m.scale)


@writes(keras_layers.Reshape)
def _reshape(m: keras_layers.Reshape) -> Call:
    return _glue(m, tuple(m.shape), m.channels_last_in, m.channels_last_out)


@writes(keras_layers.Permute)
def _permute(m: keras_layers.Permute) -> Call:
    return _glue(m, tuple(m.dims))


@writes(keras_layers.Cropping2d)
def _cropping(m: keras_layers.Cropping2d) -> Call:
    return _glue(m, m.top, m.bottom, m.left, m.right)


@writes(keras_layers.Rescaling)
def _rescaling(m: keras_layers.Rescaling) -> Call:
    scale, offset = (tuple(float(v) for v in t.flatten().tolist()) for t in (m.scale, m.offset))
    return _glue(m, scale, offset, **non_default(dim=(m.dim, 1), rank=(m.rank, 4)))


@writes(keras_layers.Normalization)
def _normalization(m: keras_layers.Normalization) -> Call:
    return _glue(
        m, m.mean.numel(),
        **non_default(dim=(m.dim, 1), rank=(m.rank, 4), invert=(m.invert, False), epsilon=(m.epsilon, 1e-7)),
    )


@writes(keras_layers.LayerNorm)
def _layer_norm(m: keras_layers.LayerNorm) -> Call:
    return _glue(
        m, m.normalized_shape[0],
        **non_default(dim=(m.dim, 1), eps=(m.eps, 1e-3), center=(m.bias is not None, True),
                      scale=(m.weight is not None, True), rms_scaling=(m.rms_scaling, False)),
    )


@writes(keras_layers.LayerScale)
def _layer_scale(m: keras_layers.LayerScale) -> Call:
    return _glue(m, m.gamma.numel(), **non_default(dim=(m.dim, 1), rank=(m.rank, 4)))


@writes(keras_layers.StochasticDepth)
def _stochastic_depth(m: keras_layers.StochasticDepth) -> Call:
    return _glue(m, m.rate)


@writes(keras_layers.PointwiseDense)
def _pointwise_dense(m: keras_layers.PointwiseDense) -> Call:
    return _glue(m, m.in_features, m.out_features, **non_default(bias=(m.bias is not None, True)),
                 **_activation(m.act))


@writes(keras_layers.FrozenBatchNorm)
def _frozen_batch_norm(m: keras_layers.FrozenBatchNorm) -> Call:
    bn = m.bn
    return _glue(
        m, bn.num_features,
        **non_default(axis=(m.axis, 1), eps=(bn.eps, 1e-5), momentum=(_momentum(bn.momentum), 0.1)),
    )


@writes(keras_layers.Conv2dTranspose)
def _conv_transpose(m: keras_layers.Conv2dTranspose) -> Call:
    return _glue(
        m, m.in_channels, m.out_channels, m.kernel_size,
        **non_default(stride=(m.stride, (1, 1)), padding=(m.padding_spec, "valid"),
                      output_padding=(tuple(m.keras_output_padding), (-1, -1)),
                      dilation=(m.dilation, (1, 1)), bias=(m.bias is not None, True)),
        **_activation(m.act),
    )


@writes(nn.Flatten)
def _torch_flatten(m: nn.Flatten) -> Call:
    return call("nn.Flatten", [], **non_default(start_dim=(m.start_dim, 1), end_dim=(m.end_dim, -1)))


@writes(nn.Unflatten)
def _unflatten(m: nn.Unflatten) -> Call:
    return call("nn.Unflatten", [], m.dim, tuple(m.unflattened_size))


@writes(nn.Dropout2d)
def _dropout2d(m: nn.Dropout2d) -> Call:
    return call("nn.Dropout2d", [], m.p, **non_default(inplace=(m.inplace, False)))


@writes(nn.Upsample)
def _upsample(m: nn.Upsample) -> Call:
    return call(
        "nn.Upsample", [], scale_factor=tuple(m.scale_factor), mode=m.mode,
        **non_default(align_corners=(m.align_corners, None),
                      recompute_scale_factor=(m.recompute_scale_factor, None)),
    )


@writes(nn.LayerNorm)
def _torch_layer_norm(m: nn.LayerNorm) -> Call:
    return call(
        "nn.LayerNorm", [], tuple(m.normalized_shape),
        **non_default(eps=(m.eps, 1e-5), elementwise_affine=(m.elementwise_affine, True),
                      bias=(m.bias is not None or not m.elementwise_affine, True)),
    )


@writes(nn.CELU)
def _celu(m: nn.CELU) -> Call:
    return call("nn.CELU", [], **non_default(alpha=(m.alpha, 1.0)))


@writes(nn.Hardshrink, nn.Softshrink)
def _shrink(m: nn.Module) -> Call:
    return call(f"nn.{type(m).__name__}", [], **non_default(lambd=(m.lambd, 0.5)))


@writes(nn.Tanhshrink, nn.LogSigmoid)
def _argument_free(m: nn.Module) -> Call:
    return call(f"nn.{type(m).__name__}", [])


@writes(nn.GLU)
def _glu(m: nn.GLU) -> Call:
    return call("nn.GLU", [], dim=m.dim)


def write(module: nn.Module, what: str) -> Call:
    """The constructor call of ``module`` (``what`` names it in the error), by its class's writer.

    Raises:
        NotImplementedError: no writer is registered for exactly this class.
    """
    cls = type(module)
    writer = WRITERS.get(cls)
    if writer is None:
        known = ", ".join(sorted(("nn." if c.__module__.startswith("torch.") else "") + c.__name__ for c in WRITERS))
        raise NotImplementedError(
            f"to_source: {what}: no source writer for module class "
            f"{cls.__module__}.{cls.__qualname__}; writers exist for {known}."
        )
    return writer(module)
