"""Conv2d, DepthwiseConv2d and SeparableConv2d against Keras 3 (torch backend) as the oracle."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import torchblocks as tb
from keras_oracle import (
    assert_rel_close,
    check_scripted,
    copy_conv,
    copy_depthwise,
    copy_separable,
    keras,
    random_weights,
    rel_error,
    run_keras_nchw,
    run_torch,
)

# Keras forbids stride > 1 together with dilation > 1, so those pairs are left out.
STRIDE_DILATION = [(1, 1), (2, 1), (3, 1), (1, 2)]
KERNELS = [1, 2, 3, 4, 5]
PADDINGS = ["valid", "same"]
MULTIPLIERS = [1, 2, 3]
# (H, W): odd/even and square/non-square, with every remainder mod 2 and mod 3 represented. The
# smallest side (9) fits the largest effective kernel (5 at dilation 2) under 'valid'.
SIZES = [(9, 9), (10, 11), (12, 10)]
ACTIVATIONS = [None, "relu", "tanh", "gelu", "swish"]
BATCH, C_IN, C_OUT = 2, 3, 5

# Every (stride, dilation, kernel, padding) on every input size; activations cycle.
CONV_CASES = [
    (s, d, k, p, size, ACTIVATIONS[i % len(ACTIVATIONS)])
    for i, ((s, d), k, p, size) in enumerate(
        itertools.product(STRIDE_DILATION, KERNELS, PADDINGS, SIZES)
    )
]
DEPTHWISE_CASES = [
    (s, d, k, p, m, SIZES[i % len(SIZES)], ACTIVATIONS[i % len(ACTIVATIONS)])
    for i, ((s, d), k, p, m) in enumerate(
        itertools.product(STRIDE_DILATION, KERNELS, PADDINGS, MULTIPLIERS)
    )
]
# Rectangular kernels, per-axis strides and groups (kernel, stride, dilation, padding, groups).
TUPLE_CASES = [
    ((2, 3), (1, 2), 1, "same", 1),
    ((3, 1), (2, 1), 1, "same", 1),
    ((1, 4), 1, (1, 2), "same", 1),
    ((3, 2), (3, 2), 1, "valid", 1),
    (3, 2, 1, "same", 3),
    (4, 1, 2, "same", 3),
]


def _input(rng: np.random.Generator, size, channels: int = C_IN) -> np.ndarray:
    return rng.normal(size=(BATCH, channels, *size)).astype(np.float32)


@pytest.mark.parametrize("stride, dilation, kernel, padding, size, activation", CONV_CASES)
def test_conv2d_matches_keras(stride, dilation, kernel, padding, size, activation, rng):
    x = _input(rng, size)
    k_layer = keras().layers.Conv2D(
        C_OUT, kernel, strides=stride, padding=padding, dilation_rate=dilation, activation=activation
    )
    k_layer.build((BATCH, *size, C_IN))
    random_weights(k_layer, rng)
    layer = tb.Conv2d(C_IN, C_OUT, kernel, stride, padding, dilation, activation=activation)
    copy_conv(k_layer, layer)
    assert_rel_close(run_torch(layer, x), run_keras_nchw(k_layer, x))


@pytest.mark.parametrize("kernel, stride, dilation, padding, groups", TUPLE_CASES)
def test_conv2d_tuples_and_groups_match_keras(kernel, stride, dilation, padding, groups, rng):
    size, channels = (10, 11), 6
    x = _input(rng, size, channels)
    k_layer = keras().layers.Conv2D(
        channels, kernel, strides=stride, padding=padding, dilation_rate=dilation, groups=groups
    )
    k_layer.build((BATCH, *size, channels))
    random_weights(k_layer, rng)
    layer = tb.Conv2d(channels, channels, kernel, stride, padding, dilation, groups)
    copy_conv(k_layer, layer)
    assert_rel_close(run_torch(layer, x), run_keras_nchw(k_layer, x))


@pytest.mark.parametrize(
    "stride, dilation, kernel, padding, multiplier, size, activation", DEPTHWISE_CASES
)
def test_depthwise_conv2d_matches_keras(stride, dilation, kernel, padding, multiplier, size, activation, rng):
    x = _input(rng, size)
    k_layer = keras().layers.DepthwiseConv2D(
        kernel, strides=stride, padding=padding, depth_multiplier=multiplier,
        dilation_rate=dilation, activation=activation,
    )
    k_layer.build((BATCH, *size, C_IN))
    random_weights(k_layer, rng)
    layer = tb.DepthwiseConv2d(C_IN, kernel, stride, padding, dilation, multiplier, activation=activation)
    copy_depthwise(k_layer, layer)
    assert_rel_close(run_torch(layer, x), run_keras_nchw(k_layer, x))


@pytest.mark.parametrize(
    "stride, dilation, kernel, padding, multiplier, size, activation", DEPTHWISE_CASES
)
def test_separable_conv2d_matches_keras(stride, dilation, kernel, padding, multiplier, size, activation, rng):
    x = _input(rng, size)
    k_layer = keras().layers.SeparableConv2D(
        C_OUT, kernel, strides=stride, padding=padding, depth_multiplier=multiplier,
        dilation_rate=dilation, activation=activation,
    )
    k_layer.build((BATCH, *size, C_IN))
    random_weights(k_layer, rng)
    layer = tb.SeparableConv2d(
        C_IN, C_OUT, kernel, stride, padding, dilation, multiplier, activation=activation
    )
    copy_separable(k_layer, layer)
    assert_rel_close(run_torch(layer, x), run_keras_nchw(k_layer, x))


def test_oracle_detects_wrong_padding_split_and_channel_order(rng):
    """The parity check can fail: a top/left-heavy 'same' pad or a j·C + c depthwise channel order
    both miss Keras by far more than the tolerance."""
    size = (10, 10)
    x = _input(rng, size)
    # n=10, k=3, s=2: 'same' pads one pixel in total, which Keras puts at the bottom/right.
    k_conv = keras().layers.Conv2D(C_OUT, 3, strides=2, padding="same")
    k_conv.build((BATCH, *size, C_IN))
    random_weights(k_conv, rng)
    conv = tb.Conv2d(C_IN, C_OUT, 3, 2, "valid")
    copy_conv(k_conv, conv)
    expected = run_keras_nchw(k_conv, x)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        right = conv(F.pad(xt, [0, 1, 0, 1])).numpy()
        left = conv(F.pad(xt, [1, 0, 1, 0])).numpy()
    assert_rel_close(right, expected)
    assert rel_error(left, expected) > 1e-2

    multiplier = 2
    k_dw = keras().layers.DepthwiseConv2D(3, depth_multiplier=multiplier)
    k_dw.build((BATCH, *size, C_IN))
    random_weights(k_dw, rng)
    dw = tb.DepthwiseConv2d(C_IN, 3, depth_multiplier=multiplier)
    copy_depthwise(k_dw, dw)
    expected = run_keras_nchw(k_dw, x)
    assert_rel_close(run_torch(dw, x), expected)
    wrong = dw.weight.detach().view(C_IN, multiplier, 1, 3, 3).transpose(0, 1).reshape(-1, 1, 3, 3)
    with torch.no_grad():
        swapped = F.conv2d(xt, wrong, dw.bias, groups=C_IN).numpy()
    assert rel_error(swapped, expected) > 1e-2


# --- parameter counts: exact ints against Keras count_params() and the closed-form formulas ----

COUNT_CASES = [(3, 8, 3, 1), (16, 32, 3, 2), (32, 64, 5, 3), (7, 5, 2, 1)]  # C_in, C_out, k, m


@pytest.mark.parametrize("c_in, c_out, kernel, multiplier", COUNT_CASES)
def test_parameter_counts_equal_keras(c_in, c_out, kernel, multiplier):
    layers = keras().layers
    shape = (1, 12, 12, c_in)
    pairs = [
        (layers.Conv2D(c_out, kernel), tb.Conv2d(c_in, c_out, kernel),
         kernel * kernel * c_in * c_out + c_out),
        (layers.DepthwiseConv2D(kernel, depth_multiplier=multiplier),
         tb.DepthwiseConv2d(c_in, kernel, depth_multiplier=multiplier),
         kernel * kernel * c_in * multiplier + c_in * multiplier),
        (layers.SeparableConv2D(c_out, kernel, depth_multiplier=multiplier),
         tb.SeparableConv2d(c_in, c_out, kernel, depth_multiplier=multiplier),
         kernel * kernel * c_in * multiplier + c_in * multiplier * c_out + c_out),
        (layers.SeparableConv2D(c_out, kernel, depth_multiplier=multiplier, use_bias=False),
         tb.SeparableConv2d(c_in, c_out, kernel, depth_multiplier=multiplier, bias=False),
         kernel * kernel * c_in * multiplier + c_in * multiplier * c_out),
    ]
    for k_layer, layer, formula in pairs:
        k_layer.build(shape)
        torch_count = sum(p.numel() for p in layer.parameters())
        assert torch_count == k_layer.count_params() == formula, type(layer).__name__


def test_separable_conv_has_no_depthwise_bias():
    layer = tb.SeparableConv2d(4, 6, 3, bias=True)
    assert layer.depthwise.bias is None
    assert tuple(layer.pointwise.bias.shape) == (6,)
    assert tuple(layer.depthwise.weight.shape) == (4, 1, 3, 3)
    assert tuple(layer.pointwise.weight.shape) == (6, 4, 1, 1)


# --- output shapes: a property test against the Keras formulas ---------------------------------


def _keras_size(n: int, k: int, s: int, d: int, padding: str) -> int:
    if padding == "same":
        return -(-n // s)
    return (n - (k - 1) * d - 1) // s + 1


@st.composite
def _conv_geometry(draw):
    k = draw(st.integers(1, 6))
    # Keras forbids stride > 1 with dilation > 1; the torch layers allow it, so it is covered too.
    s = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    padding = draw(st.sampled_from(PADDINGS))
    effective = (k - 1) * d + 1
    low = 1 if padding == "same" else effective
    h = draw(st.integers(low, low + 12))
    w = draw(st.integers(low, low + 12))
    return k, s, d, padding, h, w


@settings(max_examples=60, deadline=None)
@given(geometry=_conv_geometry(), multiplier=st.integers(1, 3))
def test_conv_output_shapes_follow_keras_formula(geometry, multiplier):
    k, s, d, padding, h, w = geometry
    expected_hw = (_keras_size(h, k, s, d, padding), _keras_size(w, k, s, d, padding))
    x = torch.zeros(1, 2, h, w)
    layers = [
        (tb.Conv2d(2, 3, k, s, padding, d), 3),
        (tb.DepthwiseConv2d(2, k, s, padding, d, multiplier), 2 * multiplier),
        (tb.SeparableConv2d(2, 3, k, s, padding, d, multiplier), 3),
    ]
    with torch.no_grad():
        for layer, channels in layers:
            assert tuple(layer(x).shape) == (1, channels, *expected_hw), layer
    assert layers[0][0].output_size(h, w) == expected_hw


# --- static 'same' costs nothing: structural checks, never timed -------------------------------


def _count_pad_calls(monkeypatch) -> list:
    calls = []
    real_pad = F.pad

    def counting_pad(*args, **kwargs):
        calls.append(1)
        return real_pad(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "pad", counting_pad)
    return calls


@pytest.mark.parametrize("kernel, dilation", [(1, 1), (3, 1), (5, 1), (3, 2), (4, 1), (2, 3)])
def test_static_same_is_a_plain_conv_without_f_pad(kernel, dilation, monkeypatch):
    # Stride 1 and an odd effective kernel (k - 1)·d + 1: symmetric pad ((k - 1)·d) / 2.
    effective = (kernel - 1) * dilation + 1
    layer = tb.Conv2d(3, 4, kernel, 1, "same", dilation)
    if effective % 2 == 0:
        assert layer.same_is_dynamic
        return
    assert not layer.same_is_dynamic
    assert layer.padding == ((effective - 1) // 2,) * 2
    calls = _count_pad_calls(monkeypatch)
    x = torch.randn(1, 3, 8, 7)
    with torch.no_grad():
        y = layer(x)
        pad = (effective - 1) // 2
        expected = F.conv2d(x, layer.weight, layer.bias, padding=pad, dilation=dilation)
    assert calls == []
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_strided_same_is_dynamic_and_pads_asymmetrically(monkeypatch):
    layer = tb.Conv2d(3, 4, 3, 2, "same")
    assert layer.same_is_dynamic
    assert layer.padding == (0, 0)
    calls = _count_pad_calls(monkeypatch)
    with torch.no_grad():
        layer(torch.randn(1, 3, 8, 8))  # total pad 1: asymmetric, needs F.pad
    assert len(calls) == 1
    with torch.no_grad():
        layer(torch.randn(1, 3, 7, 7))  # total pad 2: symmetric, handed to the conv itself
    assert len(calls) == 1


def test_same_is_decided_per_input_size():
    """A dynamic 'same' layer pads each input for its own size (timm's export variant freezes it)."""
    layer = tb.Conv2d(1, 1, 3, 2, "same", bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        for n in (8, 9, 5, 12):
            x = torch.ones(1, 1, n, n)
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)  # Keras: (ceil(n/s) - 1)·s + k - n
            top, bottom = total // 2, total - total // 2
            expected = F.conv2d(F.pad(x, [top, bottom, top, bottom]), layer.weight, stride=2)
            torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


# --- bad input: clear errors naming the argument and the value ---------------------------------

BAD_CONV_ARGS = [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(out_channels=-2), ValueError, "out_channels"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, 0)), ValueError, "stride"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=3.0), TypeError, "kernel_size"),
    (dict(kernel_size=(3, 3, 3)), TypeError, "kernel_size"),
    (dict(kernel_size=True), TypeError, "kernel_size"),
    (dict(in_channels=True), TypeError, "in_channels"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=1.5), TypeError, "padding"),
    (dict(in_channels=6, out_channels=4, groups=4), ValueError, "groups"),
    (dict(groups=0), ValueError, "groups"),
    (dict(bias="yes"), TypeError, "bias"),
    (dict(activation="relu7"), ValueError, "activation"),
    (dict(activation=3), TypeError, "activation"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_CONV_ARGS)
def test_conv2d_rejects_bad_arguments(kwargs, error, name):
    args = dict(in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(error, match=f"`{name}`.*Received"):
        tb.Conv2d(**args)


BAD_DEPTHWISE_ARGS = [
    (dict(depth_multiplier=0), ValueError, "depth_multiplier"),
    (dict(depth_multiplier=1.5), TypeError, "depth_multiplier"),
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding="SAME!"), ValueError, "padding"),
]


@pytest.mark.parametrize("cls", [tb.DepthwiseConv2d, tb.SeparableConv2d])
@pytest.mark.parametrize("kwargs, error, name", BAD_DEPTHWISE_ARGS)
def test_depthwise_and_separable_reject_bad_arguments(cls, kwargs, error, name):
    args = dict(in_channels=4, kernel_size=3)
    if cls is tb.SeparableConv2d:
        args["out_channels"] = 8
    args.update(kwargs)
    with pytest.raises(error, match=f"`{name}`.*Received"):
        cls(**args)


def test_separable_rejects_bad_out_channels():
    with pytest.raises(ValueError, match="`out_channels`.*Received out_channels=0"):
        tb.SeparableConv2d(4, 0, 3)


# (layer name, factory, output channels) for 3 input channels.
CONV_LAYERS = [
    ("Conv2d", lambda: tb.Conv2d(3, 4, 3, padding="same"), 4),
    ("DepthwiseConv2d", lambda: tb.DepthwiseConv2d(3, 3, depth_multiplier=2), 6),
    ("SeparableConv2d", lambda: tb.SeparableConv2d(3, 4, 3), 4),
]


@pytest.mark.parametrize("name, make, out_channels", CONV_LAYERS, ids=[c[0] for c in CONV_LAYERS])
def test_forward_rejects_wrong_rank_and_channels(name, make, out_channels):
    layer = make()
    with pytest.raises(ValueError, match=rf"{name} expects a 4-D \(N, C, H, W\) input with C=3.*3-D.*\[3, 8, 8\]"):
        layer(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"expects \(N, 3, H, W\).*\[2, 5, 8, 8\]"):
        layer(torch.randn(2, 5, 8, 8))


@pytest.mark.parametrize("name, make, out_channels", CONV_LAYERS, ids=[c[0] for c in CONV_LAYERS])
def test_channels_last_input_is_diagnosed(name, make, out_channels):
    x = torch.randn(2, 8, 8, 3)
    with pytest.raises(ValueError, match=rf"{name} expects.*channels-last.*permute\(0, 3, 1, 2\)"):
        make()(x)
    assert make()(x.permute(0, 3, 1, 2)).shape[1] == out_channels  # the suggested fix works


# --- TorchScript: scripted == eager, and again after save/load ---------------------------------

SCRIPTED_CONVS = [
    ("valid", lambda: tb.Conv2d(3, 4, 3)),
    ("static-same-relu", lambda: tb.Conv2d(3, 4, 3, padding="same", activation="relu")),
    ("dynamic-same", lambda: tb.Conv2d(3, 4, 4, 2, "same")),
    ("int-padding", lambda: tb.Conv2d(3, 4, 3, padding=(1, 2))),
    ("depthwise", lambda: tb.DepthwiseConv2d(3, 3, 2, "same", depth_multiplier=2, activation="tanh")),
    ("separable", lambda: tb.SeparableConv2d(3, 5, 3, 2, "same", depth_multiplier=3, activation="gelu")),
    ("separable-dilated", lambda: tb.SeparableConv2d(3, 5, 3, 1, "same", 2)),
]


@pytest.mark.parametrize("make", [c[1] for c in SCRIPTED_CONVS], ids=[c[0] for c in SCRIPTED_CONVS])
def test_conv_layers_script_and_round_trip(make):
    # Two input sizes: a dynamic 'same' pad must not be frozen at the first size.
    check_scripted(make(), (torch.randn(2, 3, 9, 10),))
    check_scripted(make(), (torch.randn(1, 3, 8, 7),))


# --- dtypes: a mismatch names the layer and both dtypes; torch.autocast still casts inside --------

DTYPE_CONVS = [
    pytest.param("Conv2d", lambda: tb.Conv2d(3, 4, 3, padding="same"), id="conv-static"),
    pytest.param("Conv2d", lambda: tb.Conv2d(3, 4, 3, 2, "same", activation="relu"), id="conv-dynamic"),
    pytest.param("DepthwiseConv2d", lambda: tb.DepthwiseConv2d(3, 3, depth_multiplier=2), id="depthwise"),
    pytest.param("SeparableConv2d", lambda: tb.SeparableConv2d(3, 4, 3, 2, "same"), id="separable"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name, make", DTYPE_CONVS)
def test_dtype_mismatch_names_the_layer_and_both_dtypes(name, make, dtype):
    message = rf"{name} received a {dtype} input but its parameters are torch.float32 \(torch: .*layer.to\({dtype}\)"
    with pytest.raises(TypeError, match=message):
        make()(torch.randn(2, 3, 8, 8, dtype=dtype))


@pytest.mark.parametrize("name, make", DTYPE_CONVS)
def test_integer_input_is_refused_with_a_cast_to_suggest(name, make):
    with pytest.raises(TypeError, match=rf"{name} received a torch.int64 input.*Cast the input with x.to\(torch.float32\)\.$"):
        make()(torch.ones(2, 3, 8, 8, dtype=torch.int64))


@pytest.mark.parametrize("name, make", DTYPE_CONVS)
def test_autocast_still_casts_inside_the_op(name, make):
    layer = make()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = [layer(x), layer(x.bfloat16())]
    for y in outputs:
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), expected, rtol=0.05, atol=0.05)
