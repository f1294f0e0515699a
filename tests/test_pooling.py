"""MaxPool2d and AvgPool2d: Keras 3 as oracle, plus a NumPy reference for 'same' average pooling.

Keras 3.15's torch backend repeats edge pixels in uneven 'same' average pooling, so
the documented rule (average the real pixels only, as TensorFlow does) is checked against NumPy.
"""
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

import torchblocks as tb
from keras_oracle import assert_rel_close, check_scripted, keras, run_keras_nchw, run_torch

POOL_SIZES = [1, 2, 3, 4]
STRIDES = [None, 1, 2, 3]
SIZES = [(9, 9), (10, 11), (12, 10)]
POOL_CASES = list(itertools.product(POOL_SIZES, STRIDES, SIZES))
RECT_CASES = [((2, 3), (1, 2)), ((3, 1), None), ((1, 3), (3, 2)), ((3, 3), (2, 1))]


def _input(rng: np.random.Generator, size) -> np.ndarray:
    return rng.normal(size=(2, 3, *size)).astype(np.float32)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def numpy_same_pool(x: np.ndarray, kernel, stride, reduce) -> np.ndarray:
    """Keras 'same' pooling on NCHW: windows clipped to the real pixels (TF's documented rule)."""
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    n, c, h, w = x.shape
    out_h, out_w = -(-h // stride[0]), -(-w // stride[1])
    top = max((out_h - 1) * stride[0] + kernel[0] - h, 0) // 2
    left = max((out_w - 1) * stride[1] + kernel[1] - w, 0) // 2
    y = np.empty((n, c, out_h, out_w), np.float64)
    for i in range(out_h):
        r0 = i * stride[0] - top
        rows = slice(max(r0, 0), min(r0 + kernel[0], h))
        for j in range(out_w):
            c0 = j * stride[1] - left
            cols = slice(max(c0, 0), min(c0 + kernel[1], w))
            y[:, :, i, j] = reduce(x[:, :, rows, cols].astype(np.float64), axis=(2, 3))
    return y.astype(np.float32)


def _keras_pool(cls, kernel, stride, padding, size):
    layer = cls(pool_size=kernel, strides=stride, padding=padding)
    layer.build((2, *size, 3))
    return layer


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("kernel, stride, size", POOL_CASES)
def test_max_pool_matches_keras(kernel, stride, size, padding, rng):
    x = _input(rng, size)
    expected = run_keras_nchw(_keras_pool(keras().layers.MaxPooling2D, kernel, stride, padding, size), x)
    assert_rel_close(run_torch(tb.MaxPool2d(kernel, stride, padding), x), expected)


@pytest.mark.parametrize("kernel, stride", RECT_CASES)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_rectangular_max_pool_matches_keras(kernel, stride, padding, rng):
    size = (10, 11)
    x = _input(rng, size)
    expected = run_keras_nchw(_keras_pool(keras().layers.MaxPooling2D, kernel, stride, padding, size), x)
    assert_rel_close(run_torch(tb.MaxPool2d(kernel, stride, padding), x), expected)


@pytest.mark.parametrize("kernel, stride, size", POOL_CASES)
def test_avg_pool_valid_matches_keras(kernel, stride, size, rng):
    x = _input(rng, size)
    expected = run_keras_nchw(_keras_pool(keras().layers.AveragePooling2D, kernel, stride, "valid", size), x)
    assert_rel_close(run_torch(tb.AvgPool2d(kernel, stride, "valid"), x), expected)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("size", SIZES)
def test_avg_pool_same_stride_one_odd_kernel_matches_keras(kernel, size, rng):
    # Symmetric padding: the one 'same' average case Keras 3.15's torch backend gets right.
    x = _input(rng, size)
    expected = run_keras_nchw(_keras_pool(keras().layers.AveragePooling2D, kernel, 1, "same", size), x)
    assert_rel_close(run_torch(tb.AvgPool2d(kernel, 1, "same"), x), expected)


@pytest.mark.parametrize("kernel, stride, size", POOL_CASES + [(k, s, (10, 11)) for k, s in RECT_CASES])
def test_same_pools_match_numpy_reference(kernel, stride, size, rng):
    x = _input(rng, size)
    avg = run_torch(tb.AvgPool2d(kernel, stride, "same"), x)
    assert_rel_close(avg, numpy_same_pool(x, kernel, stride, np.mean))
    mx = run_torch(tb.MaxPool2d(kernel, stride, "same"), x)
    assert_rel_close(mx, numpy_same_pool(x, kernel, stride, np.max))


def test_same_avg_pool_divides_by_real_pixels_only():
    # 3×3 ones, pool 2, stride 2: output 2×2; every window averages ones only -> exactly 1.
    # Counting the padded zeros would give 0.5 at the right column and bottom row.
    y = tb.AvgPool2d(2, 2, "same")(torch.ones(1, 1, 3, 3))
    torch.testing.assert_close(y, torch.ones(1, 1, 2, 2), rtol=0, atol=0)
    y = tb.AvgPool2d(3, 1, "same")(torch.ones(1, 1, 4, 5))
    torch.testing.assert_close(y, torch.ones(1, 1, 4, 5), rtol=0, atol=0)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (3, 1), (2, 2), (2, 1), (4, 3), ((3, 2), (1, 2))])
@pytest.mark.parametrize("size", [(7, 8), (6, 6)])
def test_same_max_pool_never_picks_padding(kernel, stride, size):
    x = -1.0 - torch.rand(2, 3, *size)  # all values in [-2, -1): a zero pad would win every edge
    y = tb.MaxPool2d(kernel, stride, "same")(x)
    assert float(y.max()) < -1.0
    assert_rel_close(y.numpy(), numpy_same_pool(x.numpy(), kernel, stride, np.max))


def test_stride_none_means_pool_size():
    for cls in (tb.MaxPool2d, tb.AvgPool2d):
        layer = cls((3, 2))
        assert layer.stride == (3, 2)
        assert tuple(layer(torch.randn(1, 1, 9, 8)).shape) == (1, 1, 3, 4)


# (kernel, stride) -> (dynamic, torch padding of the static path, outputs trimmed at the start)
SAME_PLANS = [
    ((3, 1), (False, (1, 1), 0)),  # odd kernel, stride 1: one symmetric pad
    ((2, 1), (False, (1, 1), 1)),  # even kernel, stride 1: k/2 both sides, first window dropped
    ((2, 2), (False, (0, 0), 0)),  # Keras pads 0 before for every n: ceil_mode adds the last window
    ((1, 3), (False, (0, 0), 0)),
    ((3, 2), (True, None, 0)),  # 'before' is 0 for even n, 1 for odd n
    ((4, 3), (True, None, 0)),
]


@pytest.mark.parametrize("cls", [tb.MaxPool2d, tb.AvgPool2d])
@pytest.mark.parametrize("kernel_stride, plan", SAME_PLANS)
def test_same_pooling_is_one_torch_pooling_call(cls, kernel_stride, plan):
    dynamic, padding, trim = plan
    layer = cls(*kernel_stride, "same")
    assert layer.same_is_dynamic == dynamic and layer.ceil_mode and layer.trim_h == trim == layer.trim_w
    if not dynamic:
        assert layer.padding == padding


# --- output shapes: a property test against the Keras formulas ---------------------------------


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 6),
    s=st.one_of(st.none(), st.integers(1, 4)),
    padding=st.sampled_from(["valid", "same"]),
    dh=st.integers(0, 12),
    dw=st.integers(0, 12),
)
def test_pool_output_shapes_follow_keras_formula(k, s, padding, dh, dw):
    stride = k if s is None else s
    low = 1 if padding == "same" else k
    h, w = low + dh, low + dw

    def keras_size(n):
        return -(-n // stride) if padding == "same" else (n - k) // stride + 1

    x = torch.zeros(1, 2, h, w)
    for cls in (tb.MaxPool2d, tb.AvgPool2d):
        assert tuple(cls(k, s, padding)(x).shape) == (1, 2, keras_size(h), keras_size(w))


# --- bad input ----------------------------------------------------------------------------------

BAD_POOL_ARGS = [
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=2.0), TypeError, "kernel_size"),
    (dict(kernel_size=False), TypeError, "kernel_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(2, -1)), ValueError, "stride"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding=2), ValueError, "padding"),  # more than half the pool size
]


@pytest.mark.parametrize("cls", [tb.MaxPool2d, tb.AvgPool2d])
@pytest.mark.parametrize("kwargs, error, name", BAD_POOL_ARGS)
def test_pooling_rejects_bad_arguments(cls, kwargs, error, name):
    args = dict(kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=f"`{name}`.*Received"):
        cls(**args)


@pytest.mark.parametrize("cls", [tb.MaxPool2d, tb.AvgPool2d])
def test_pooling_rejects_wrong_rank(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__} expects a 4-D \(N, C, H, W\).*3-D.*\[3, 8, 8\]"):
        cls(2, padding="same")(torch.randn(3, 8, 8))


# --- TorchScript --------------------------------------------------------------------------------

SCRIPTED_POOLS = [
    ("max-valid", lambda: tb.MaxPool2d(2)),
    ("max-same-dynamic", lambda: tb.MaxPool2d(3, 2, "same")),
    ("max-same-static", lambda: tb.MaxPool2d(3, 1, "same")),
    ("avg-valid", lambda: tb.AvgPool2d(3, 2)),
    ("avg-same-dynamic", lambda: tb.AvgPool2d(2, 2, "same")),
    ("avg-same-static", lambda: tb.AvgPool2d(3, 1, "same")),
    ("avg-int-padding", lambda: tb.AvgPool2d(3, 2, 1)),
]


@pytest.mark.parametrize("make", [c[1] for c in SCRIPTED_POOLS], ids=[c[0] for c in SCRIPTED_POOLS])
def test_pooling_scripts_and_round_trips(make):
    check_scripted(make(), (torch.randn(2, 3, 9, 10),))
    check_scripted(make(), (torch.randn(1, 3, 8, 7),))


# --- dtypes: the input's dtype on every path; integers pooled exactly; refusals name the layer -------

# Every path of both layers: valid, int padding, static 'same', 'same' with a trimmed first window,
# and dynamic 'same' at an even and an odd size (uneven pads), plus the global pools.
DTYPE_POOLS = [
    pytest.param(lambda: tb.MaxPool2d(2), id="max-valid"),
    pytest.param(lambda: tb.MaxPool2d(3, 2, 1), id="max-int-pad"),
    pytest.param(lambda: tb.MaxPool2d(3, 1, "same"), id="max-same-static"),
    pytest.param(lambda: tb.MaxPool2d(2, 1, "same"), id="max-same-trimmed"),
    pytest.param(lambda: tb.MaxPool2d(2, 2, "same"), id="max-same-k2s2"),
    pytest.param(lambda: tb.MaxPool2d(3, 2, "same"), id="max-same-dynamic"),
    pytest.param(lambda: tb.AvgPool2d(2), id="avg-valid"),
    pytest.param(lambda: tb.AvgPool2d(3, 2, 1), id="avg-int-pad"),
    pytest.param(lambda: tb.AvgPool2d(3, 1, "same"), id="avg-same-static"),
    pytest.param(lambda: tb.AvgPool2d(2, 1, "same"), id="avg-same-trimmed"),
    pytest.param(lambda: tb.AvgPool2d(3, 2, "same"), id="avg-same-dynamic"),
    pytest.param(lambda: tb.GlobalAvgPool2d(), id="global-avg"),
    pytest.param(lambda: tb.GlobalMaxPool2d(), id="global-max"),
]
FLOAT_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.mark.parametrize("dtype", list(FLOAT_TOLERANCE))
@pytest.mark.parametrize("size", [(9, 10), (8, 7)])
@pytest.mark.parametrize("make", DTYPE_POOLS)
def test_pooling_keeps_a_floating_dtype_on_every_path(make, size, dtype):
    x = torch.randn(2, 3, *size).to(dtype)
    layer = make()
    y = layer(x)
    expected = _reference(x.double(), layer)  # the windows in float64, from the same rounded values
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), expected, rtol=FLOAT_TOLERANCE[dtype], atol=FLOAT_TOLERANCE[dtype])


def _reference(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Keras pooling by explicit windows clipped to the real pixels, in ``x``'s dtype (integers:
    exact, the mean rounded toward zero as torch does)."""
    if isinstance(layer, (tb.GlobalAvgPool2d, tb.GlobalMaxPool2d)):
        return x.amax(dim=(2, 3)) if isinstance(layer, tb.GlobalMaxPool2d) else x.mean(dim=(2, 3))
    kernel, stride = layer.kernel_size, layer.stride
    h, w = x.shape[-2:]
    if layer.padding_spec == "same":
        out = (-(-h // stride[0]), -(-w // stride[1]))
        before = [max((o - 1) * s + k - n, 0) // 2 for o, s, k, n in zip(out, stride, kernel, (h, w))]
    else:
        pad = (0, 0) if layer.padding_spec == "valid" else layer.padding_spec
        out = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip((h, w), pad, kernel, stride))
        before = list(pad)
    y = torch.empty(x.shape[:2] + out, dtype=x.dtype)
    for i in range(out[0]):
        for j in range(out[1]):
            r0, c0 = i * stride[0] - before[0], j * stride[1] - before[1]
            window = x[:, :, max(r0, 0):r0 + kernel[0], max(c0, 0):c0 + kernel[1]]
            if isinstance(layer, tb.MaxPool2d):
                y[:, :, i, j] = window.amax(dim=(2, 3))
            else:
                total = window.sum(dim=(2, 3))
                count = kernel[0] * kernel[1] if layer.count_include_pad else window.shape[2] * window.shape[3]
                rounding = None if x.is_floating_point() else "trunc"
                y[:, :, i, j] = torch.div(total, count, rounding_mode=rounding)
    return y


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("size", [(5, 5), (6, 7)])
@pytest.mark.parametrize("make", [p for p in DTYPE_POOLS if p.id.startswith("max-")])
def test_max_pooling_integers_is_exact_at_the_extremes(make, size, dtype):
    # The whole range, minimum included: an explicit -inf (or lowest-value) pad would overflow or
    # tie with a real pixel; torch's implicit pad is never selected.
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (2, 3, *size), dtype=dtype)
    x[:, :, -1, -1] = info.min
    layer = make()
    y = layer(x)
    assert y.dtype == dtype and torch.equal(y, _reference(x, layer))


@pytest.mark.parametrize("size", [(5, 5), (6, 7)])
@pytest.mark.parametrize("make", [p for p in DTYPE_POOLS if p.id.startswith("avg-")])
def test_average_pooling_int64_is_torchs_integer_mean(make, size):
    x = torch.randint(-1000, 1000, (2, 3, *size))
    layer = make()
    y = layer(x)
    assert y.dtype == torch.int64 and torch.equal(y, _reference(x, layer))


UNSUPPORTED = [
    (lambda: tb.AvgPool2d(3, 2, "same"), torch.int32),
    (lambda: tb.AvgPool2d(2), torch.int8),
    (lambda: tb.MaxPool2d(3, 2, "same"), torch.bool),
    (lambda: tb.MaxPool2d(2), torch.complex64),
    (lambda: tb.GlobalAvgPool2d(), torch.int64),
    (lambda: tb.GlobalMaxPool2d(), torch.int16),
]


@pytest.mark.parametrize("make, dtype", UNSUPPORTED)
def test_dtypes_torch_cannot_pool_are_refused_by_name(make, dtype):
    layer = make()
    x = torch.ones(1, 2, 6, 6, dtype=dtype)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__} does not support {dtype} inputs.*x\.float\(\)"):
        layer(x)


@pytest.mark.parametrize("cls", [tb.GlobalAvgPool2d, tb.GlobalMaxPool2d])
def test_global_pooling_rejects_wrong_rank(cls):
    # A 3-D tensor would pass through torch's adaptive pooling as one unbatched (C, H, W) sample.
    with pytest.raises(ValueError, match=rf"{cls.__name__} expects a 4-D \(N, C, H, W\).*\[3, 8, 8\]"):
        cls()(torch.randn(3, 8, 8))
