"""Keras as the oracle: build a Keras 3 layer, copy its weights into a torchblocks layer by hand,
run both and compare.

The weight layouts are transposed here independently of ``torchblocks.interop`` (which these tests
must not trust): Keras conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw); depthwise kernel
(kh, kw, C, m) -> torch (C·m, 1, kh, kw) with output channel ``c·m + j``; pointwise (1, 1, C·m, out);
Dense kernel (in, out) -> torch (out, in). Keras runs on the torch backend (tests/conftest.py).
"""
import io
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

RTOL = 1e-5


def keras():
    """The keras module (imported on first use: it takes seconds)."""
    import keras as _keras

    return _keras


def book_separable_model(height: int = 64, width: int = 64, channels: int = 3, num_classes: int = 10,
                         activation="softmax"):
    """The book's SeparableConv2D model in Keras (with an ``Input`` instead of ``input_shape=``, as
    Keras 3 asks) and a choice of classifier activation."""
    layers = keras().layers
    model = keras().Sequential()
    model.add(keras().Input((height, width, channels)))
    model.add(layers.SeparableConv2D(32, 3, activation="relu"))
    model.add(layers.SeparableConv2D(64, 3, activation="relu"))
    model.add(layers.MaxPooling2D(2))
    model.add(layers.SeparableConv2D(64, 3, activation="relu"))
    model.add(layers.SeparableConv2D(128, 3, activation="relu"))
    model.add(layers.MaxPooling2D(2))
    model.add(layers.SeparableConv2D(64, 3, activation="relu"))
    model.add(layers.SeparableConv2D(128, 3, activation="relu"))
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dense(32, activation="relu"))
    model.add(layers.Dense(num_classes, activation=activation))
    return model


def to_numpy(value) -> np.ndarray:
    """A Keras output (a torch tensor on this backend) or variable as a float32 NumPy array."""
    return np.asarray(keras().ops.convert_to_numpy(value), dtype=np.float32)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def random_weights(layer, rng: np.random.Generator) -> None:
    """Give every weight of a built Keras layer random values (biases too: Keras zeroes them).

    Variables named ``moving_variance`` (or ``gamma``) get positive values.
    """
    values = []
    for w in layer.weights:
        shape = tuple(w.shape)
        if w.name in ("moving_variance", "gamma"):
            values.append(rng.uniform(0.5, 1.5, size=shape).astype(np.float32))
        else:
            values.append(rng.normal(0.0, 0.5, size=shape).astype(np.float32))
    layer.set_weights(values)


def conv_kernel(kernel: np.ndarray) -> Tensor:
    """Keras Conv2D kernel (kh, kw, in, out) -> torch weight (out, in, kh, kw)."""
    kh, kw, cin, cout = kernel.shape
    w = np.empty((cout, cin, kh, kw), np.float32)
    for o in range(cout):
        for i in range(cin):
            w[o, i] = kernel[:, :, i, o]
    return torch.from_numpy(w)


def depthwise_kernel(kernel: np.ndarray) -> Tensor:
    """Keras depthwise kernel (kh, kw, C, m) -> torch weight (C·m, 1, kh, kw), channel c·m + j."""
    kh, kw, channels, mult = kernel.shape
    w = np.empty((channels * mult, 1, kh, kw), np.float32)
    for c in range(channels):
        for j in range(mult):
            w[c * mult + j, 0] = kernel[:, :, c, j]
    return torch.from_numpy(w)


def dense_kernel(kernel: np.ndarray) -> Tensor:
    """Keras Dense kernel (in, out) -> torch weight (out, in)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.T))


def _set(param: Tensor, value: Tensor) -> None:
    assert tuple(param.shape) == tuple(value.shape), (tuple(param.shape), tuple(value.shape))
    with torch.no_grad():
        param.copy_(value)


def copy_conv(k_layer, conv: nn.Conv2d) -> None:
    """Keras Conv2D -> tb.Conv2d."""
    weights = [to_numpy(w) for w in k_layer.weights]
    _set(conv.weight, conv_kernel(weights[0]))
    if conv.bias is not None:
        _set(conv.bias, torch.from_numpy(weights[1]))


def copy_depthwise(k_layer, conv: nn.Conv2d) -> None:
    """Keras DepthwiseConv2D -> tb.DepthwiseConv2d."""
    weights = [to_numpy(w) for w in k_layer.weights]
    _set(conv.weight, depthwise_kernel(weights[0]))
    if conv.bias is not None:
        _set(conv.bias, torch.from_numpy(weights[1]))


def copy_separable(k_layer, sep: nn.Module) -> None:
    """Keras SeparableConv2D (depthwise, pointwise, bias) -> tb.SeparableConv2d."""
    weights = [to_numpy(w) for w in k_layer.weights]
    _set(sep.depthwise.weight, depthwise_kernel(weights[0]))
    _set(sep.pointwise.weight, conv_kernel(weights[1]))
    if sep.pointwise.bias is not None:
        _set(sep.pointwise.bias, torch.from_numpy(weights[2]))


def copy_dense(k_layer, dense: nn.Linear) -> None:
    """Keras Dense -> tb.Dense / nn.Linear."""
    weights = [to_numpy(w) for w in k_layer.weights]
    _set(dense.weight, dense_kernel(weights[0]))
    if dense.bias is not None:
        _set(dense.bias, torch.from_numpy(weights[1]))


def copy_batchnorm(k_layer, bn_wrapper: nn.Module) -> None:
    """Keras BatchNormalization (gamma, beta, moving mean/variance) -> tb.BatchNorm (``.bn``)."""
    gamma, beta, mean, var = (torch.from_numpy(to_numpy(w)) for w in k_layer.weights)
    bn = bn_wrapper.bn
    _set(bn.weight, gamma)
    _set(bn.bias, beta)
    _set(bn.running_mean, mean)
    _set(bn.running_var, var)


def run_keras_nchw(k_layer, x: np.ndarray, **call_kwargs) -> np.ndarray:
    """Run a Keras (NHWC) layer or model on an NCHW array; return the output as NCHW."""
    return nhwc_to_nchw(to_numpy(k_layer(nchw_to_nhwc(x), **call_kwargs)))


def run_torch(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def assert_rel_close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    """Same shape and max |actual - expected| <= rtol · max |expected| (a relative error that
    near-zero entries cannot blow up)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, "oracle output is all zeros: the comparison would be vacuous"
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def check_scripted(module: nn.Module, inputs: Sequence[Tensor]) -> None:
    """Script ``module``; it must match eager, and again after a torch.jit save/load round trip."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated on 2.14
        scripted = torch.jit.script(module)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    with torch.no_grad():
        expected = module(*inputs)
        torch.testing.assert_close(scripted(*inputs), expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded(*inputs), expected, rtol=0, atol=0)


def randomize(model, rng: np.random.Generator) -> None:
    """Random weights for every layer of a Keras layer or model: He-normal kernels (by each output's
    fan-in, so deep models keep their signal; Keras' Glorot starves depthwise kernels), and random
    biases and BatchNorm parameters/statistics (Keras zeroes or ones them)."""
    layers = model.layers if isinstance(model, keras().Model) else [model]
    for layer in layers:
        if isinstance(layer, keras().Model):
            randomize(layer, rng)
            continue
        depthwise = isinstance(layer, keras().layers.DepthwiseConv2D)
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.name == "depthwise_kernel" or (depthwise and w.name == "kernel"):
                value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1])), size=shape)
            elif w.name in ("kernel", "pointwise_kernel"):
                value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), size=shape)
            elif w.name in ("moving_variance", "gamma"):
                value = rng.uniform(0.5, 1.5, size=shape)
            else:
                value = rng.normal(0.0, 0.1, size=shape)
            w.assign(value.astype(np.float32))


def calibrate_bn(model, x: np.ndarray) -> None:
    """Moving statistics := the statistics of batch ``x``: one training-mode pass with BN
    momentum 0, then the momenta restored (so the interop still has Keras' to convert)."""
    _calibrate(model, [l for l in model.layers if isinstance(l, keras().layers.BatchNormalization)], x)


def _calibrate(model, bns, x: np.ndarray) -> None:
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    with torch.no_grad():
        model(x, training=True)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum


def snapshot(module: nn.Module) -> dict:
    """Every tensor of the state dict, cloned, plus BatchNorm eps/momentum."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            state[name + ".eps"], state[name + ".momentum"] = sub.eps, sub.momentum
    return state


def assert_unchanged(module: nn.Module, before: dict) -> None:
    after = snapshot(module)
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key
        else:
            assert after[key] == value, key


def keras_nchw(model, x: np.ndarray, **kwargs) -> np.ndarray:
    """Keras output for an NCHW (or (N, F)) array, 4-D outputs returned as NCHW."""
    out = to_numpy(model(nchw_to_nhwc(x) if x.ndim == 4 else x, **kwargs))
    return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


def images(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Normal noise plus a random offset per sample and channel: global average pooling would
    reduce pure noise images to nearly the same features, leaving the oracle insensitive."""
    offsets = rng.normal(0.0, 1.0, size=shape[:2] + (1,) * (len(shape) - 2))
    return (rng.normal(0.0, 1.0, size=shape) + offsets).astype(np.float32)


def randomize_all(model, rng: np.random.Generator) -> None:
    """Random, non-trivial values for every float weight of a Keras model, nested models included:
    He-normal kernels by fan-in (depthwise and grouped kernels by their own fan-in), BatchNorm and
    LayerNorm scales (gamma) and shifts (beta), moving and Normalization variances in U(0.5, 1.5),
    everything else (biases, means, ConvNeXt's layer scales) N(0, 0.1).

    Positive shifts keep most ReLUs active, as in trained networks: with zero-mean shifts a deep
    random ReLU network with BatchNorm is chaotic (a 1e-6 change of its input moves ResNet50's
    logits by 3e-4), so no float32 port could match it to 1e-5.
    """
    layers = keras().layers
    for layer in model.layers:
        if isinstance(layer, keras().Model):
            randomize_all(layer, rng)
            continue
        for w in layer.weights:
            shape = tuple(w.shape)
            if "float" not in str(w.dtype):
                continue  # e.g. Normalization's sample count
            if w.name in ("kernel", "depthwise_kernel", "pointwise_kernel"):
                if w.name == "depthwise_kernel" or isinstance(layer, layers.DepthwiseConv2D):
                    fan_in = shape[0] * shape[1]
                elif isinstance(layer, layers.Conv2DTranspose):
                    fan_in = shape[0] * shape[1] * shape[3]
                else:
                    fan_in = int(np.prod(shape[:-1]))
                value = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
            elif w.name in ("gamma", "beta", "moving_variance", "variance"):
                value = rng.uniform(0.5, 1.5, size=shape)
            else:
                value = rng.normal(0.0, 0.1, size=shape)
            w.assign(value.astype(np.float32))


def batch_norms(model) -> list:
    """Every BatchNormalization layer of a Keras model, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras().Model):
            found.extend(batch_norms(layer))
        elif isinstance(layer, keras().layers.BatchNormalization):
            found.append(layer)
    return found


def calibrate_all_bn(model, x: np.ndarray) -> None:
    """``calibrate_bn`` for every BatchNormalization, nested models included (``x`` in the model's
    own layout)."""
    _calibrate(model, batch_norms(model), x)


# Every image classifier of keras.applications with its smallest valid input size; NASNetMobile is
# absent: Keras 3.15 refuses to build it on the torch backend ("an outstanding bug").
APPLICATIONS = {
    **{name: 32 for name in ("VGG16", "VGG19", "ResNet50", "ResNet101", "ResNet152", "ResNet50V2",
                             "ResNet101V2", "ResNet152V2", "MobileNet", "MobileNetV2", "MobileNetV3Small",
                             "MobileNetV3Large", "DenseNet121", "DenseNet169", "DenseNet201", "NASNetLarge")},
    "InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71,
    **{f"EfficientNetB{i}": 32 for i in range(8)},
    **{f"EfficientNetV2{s}": 32 for s in ("B0", "B1", "B2", "B3", "S", "M", "L")},
    **{f"ConvNeXt{s}": 32 for s in ("Tiny", "Small", "Base", "Large", "XLarge")},
}
# The top of a Keras application: its classifier (as logits), or the features pooled by avg or max.
APPLICATION_VARIANTS = {
    "top": dict(include_top=True, classifier_activation=None),
    "avg": dict(include_top=False, pooling="avg"),
    "max": dict(include_top=False, pooling="max"),
}


def _dropouts(model) -> list:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras().Model):
            found.extend(_dropouts(layer))
        elif hasattr(layer, "rate") and isinstance(layer, keras().layers.Layer):
            found.append(layer)
    return found


def calibrated_outputs(model, inputs):
    """``calibrate_all_bn(model, inputs)``, returning Keras' inference output on ``inputs`` (Keras'
    own layout, in and out) from that same pass: with the dropout rates at 0 during it, a
    training-mode pass whose BatchNorm statistics become the moving ones computes exactly what
    inference then computes."""
    dropouts = _dropouts(model)
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0
    bns = batch_norms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        with torch.no_grad():
            out = model(inputs, training=True)
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return [to_numpy(o) for o in out] if isinstance(out, (list, tuple)) else to_numpy(out)


def noise_floor(model, x: np.ndarray, rng: np.random.Generator) -> float:
    """How far Keras' own float32 output moves (relative) when its input moves by one ulp: the
    rounding noise of the oracle itself, which grows with a model's depth."""
    nudged = (x * (1 + np.float32(2.0 ** -23) * rng.choice([-1.0, 1.0], size=x.shape))).astype(np.float32)
    return rel_error(keras_nchw(model, nudged), keras_nchw(model, x))


def application_case(name: str, variant: str, rng: np.random.Generator, size: int = 0, batch: int = 32):
    """A keras.applications model (weights=None) with every weight random and non-trivial
    (``randomize_all``), BatchNorm statistics from a real batch of ``batch`` images, that batch
    (NCHW) and Keras' output on it: (model, x, expected).

    Images are ``images()`` (unit noise with a random offset per sample and channel), as the
    applications' ``preprocess_input`` makes them, or 100 + 50·``images()``, raw pixels, for the
    models that preprocess themselves (a Rescaling or Normalization first).
    """
    size = size or APPLICATIONS[name]
    model = getattr(keras().applications, name)(
        weights=None, input_shape=(size, size, 3), **APPLICATION_VARIANTS[variant]
    )
    randomize_all(model, rng)
    x = images(rng, batch, 3, size, size)
    if type(model.layers[1]).__name__ in ("Rescaling", "Normalization"):
        x = x * 50.0 + 100.0
    expected = calibrated_outputs(model, nchw_to_nhwc(x))
    return model, x, nhwc_to_nchw(expected) if expected.ndim == 4 else expected
