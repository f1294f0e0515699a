"""MaxPool2d and AvgPool2d: Keras 3 as oracle, plus a NumPy reference for 'same' average pooling.

Keras 3.15's torch backend repeats edge pixels in uneven 'same' average pooling (DESIGN.md), so
the documented rule (average the real pixels only, as TensorFlow does) is checked against NumPy.
"""
import itertools

import numpy as np
import pytest
import torch
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


def test_static_same_pooling_is_plain_torch_pooling():
    for cls in (tb.MaxPool2d, tb.AvgPool2d):
        static = cls(3, 1, "same")
        assert not static.same_is_dynamic
        assert static.padding == (1, 1)
        assert cls(3, 2, "same").same_is_dynamic
        assert cls(2, 1, "same").same_is_dynamic


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
