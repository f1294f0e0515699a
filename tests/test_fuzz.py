"""Bad input, fuzzed: every constructor call and forward either works as Keras says or fails clearly.

Each argument is drawn as an ``Arg(value, ok)``: ``ok`` says whether Keras' rules accept it (small
positive sizes, known padding modes and activation names) or not (zero, negative, huge, wrong type).
A module that builds must have had only acceptable arguments, and its output shape must follow the
Keras formula; otherwise construction raises ``ValueError``/``TypeError`` naming a bad argument, and a
bad input raises ``ValueError`` naming the expected and the received shape. A ``RuntimeError`` from
inside torch, a silent acceptance or a hang fails the test.
"""
import math
from typing import Any, NamedTuple, Optional, Tuple

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import torchblocks as tb

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# Sizes must fit torch's 32-bit fields; larger ones must be refused before anything is allocated.
HUGE = st.integers(2**31, 2**80)
NEGATIVE = st.integers(-(2**40), -1)


class Arg(NamedTuple):
    value: Any
    ok: bool


class Spec(NamedTuple):
    """Strategies for the acceptable and the unacceptable values of one argument."""

    good: st.SearchStrategy
    bad: st.SearchStrategy


# Wrong types for an int-or-pair argument (a bool is not an int here, as in Keras).
BAD_SIZE_TYPES = st.sampled_from(
    [1.5, "3", None, b"3", True, False, [1, 2, 3], (2,), (2, 2.5), {"k": 3}, float("nan")]
)


def size(high: int, minimum: int = 1, pair: bool = True) -> Spec:
    """An int (or a 2-tuple/list of ints) argument: good in [minimum, high]; bad below, huge or mistyped."""
    good = st.integers(minimum, high)
    bad = st.one_of(st.integers(-(2**40), minimum - 1), HUGE, BAD_SIZE_TYPES)
    if not pair:
        return Spec(good, bad)
    container = st.sampled_from([tuple, list])
    good_pair = st.builds(lambda a, b, c: c((a, b)), good, good, container)
    bad_pair = st.one_of(
        st.builds(lambda a, b, c: c((a, b)), bad, st.one_of(good, bad), container),
        st.builds(lambda a, b, c: c((a, b)), good, bad, container),
    )
    return Spec(st.one_of(good, good_pair), st.one_of(bad, bad_pair))


def padding_arg(high: int = 3) -> Spec:
    ints = size(high, minimum=0)
    return Spec(
        st.one_of(st.sampled_from(["valid", "same", "SAME", "Valid"]), ints.good),
        st.one_of(st.sampled_from(["full", "causal", "", "same "]), ints.bad),
    )


ACTIVATION = Spec(
    st.sampled_from([None, "relu", "linear", "tanh", "Swish", torch.nn.GELU()]),
    st.sampled_from(["nope", "", 3, 1.0, torch.relu]),
)
BOOL = Spec(st.booleans(), st.sampled_from([1, 0, "yes", None, 1.0]))


def draw_args(data, specs: dict) -> dict:
    """Draw every argument: all acceptable in 2 cases of 5, else one (or two) of them bad."""
    n_bad = data.draw(st.sampled_from([0, 0, 1, 1, 2]), label="number of bad arguments")
    bad = set(data.draw(st.permutations(sorted(specs)))[:n_bad])
    return {
        name: Arg(data.draw(spec.bad if name in bad else spec.good, label=name), name not in bad)
        for name, spec in specs.items()
    }


def pair(value) -> Tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def keras_length(n: int, k: int, s: int, d: int, padding) -> Optional[int]:
    """Keras output length along one axis, or None where the input does not fit (or n == 0)."""
    if n < 1:
        return None
    if padding == "same":
        return math.ceil(n / s)
    extent = (k - 1) * d + 1
    padded = n + 2 * (0 if padding == "valid" else padding)
    return (padded - extent) // s + 1 if padded >= extent else None


def keras_hw(hw, kernel, stride, dilation, padding) -> Optional[Tuple[int, int]]:
    padding = padding.lower() if isinstance(padding, str) else pair(padding)
    pads = (padding, padding) if isinstance(padding, str) else padding
    axes = zip(hw, pair(kernel), pair(stride), pair(dilation), pads)
    out = [keras_length(n, k, s, d, p) for n, k, s, d, p in axes]
    return None if None in out else tuple(out)


def build(factory, args: dict, also_bad: Tuple[str, ...] = ()):
    """Build ``factory(**values)``; if any argument is bad, expect an error naming one of them."""
    bad = [name for name, arg in args.items() if not arg.ok] + list(also_bad)
    values = {name: arg.value for name, arg in args.items()}
    if not bad:
        event("built")
        return factory(**values)
    event("constructor refused")
    with pytest.raises((ValueError, TypeError)) as info:
        factory(**values)
    message = str(info.value)
    assert any(f"`{name}`" in message for name in bad), f"error names none of {bad}: {message}"
    return None


def check_forward(module, x: torch.Tensor, expected: Optional[Tuple[int, ...]]) -> None:
    """Output of shape ``expected``, or (expected None) a ValueError naming the received shape."""
    if expected is not None:
        event("forward ran")
        assert tuple(module(x).shape) == expected
        return
    event("input refused")
    with pytest.raises(ValueError) as info:
        module(x)
    message = str(info.value)
    assert "expect" in message.lower() and str(list(x.shape)) in message, message


def image(data, channels: int, rank_weights=(4, 4, 4, 4, 3, 5, 2)) -> torch.Tensor:
    """A tensor, mostly (N, C, H, W) with the layer's C, sometimes another C or rank, sizes 0..12."""
    rank = data.draw(st.sampled_from(rank_weights))
    shape = [data.draw(st.integers(0, 12)) for _ in range(rank)]
    if rank >= 2:
        shape[0] = data.draw(st.integers(0, 3))
        shape[1] = data.draw(st.one_of(st.just(channels), st.just(channels), st.integers(0, 8)))
    return torch.randn(shape)


def conv_expected(x, channels_in, channels_out, kernel, stride, dilation, padding):
    if x.dim() != 4 or x.shape[1] != channels_in:
        return None
    hw = keras_hw(x.shape[2:], kernel, stride, dilation, padding)
    return None if hw is None else (x.shape[0], channels_out) + hw


CONV_SPECS = dict(
    in_channels=size(6, pair=False), out_channels=size(6, pair=False), kernel_size=size(5), stride=size(3),
    padding=padding_arg(), dilation=size(3), bias=BOOL, activation=ACTIVATION,
    # Mostly 1, so that most draws build; 2 and 3 often fail to divide the channels (a named error).
    groups=Spec(st.sampled_from([1, 1, 1, 2, 3]), size(3, pair=False).bad),
)
DEPTHWISE_SPECS = dict(
    in_channels=size(4, pair=False), kernel_size=size(5), stride=size(3), padding=padding_arg(),
    dilation=size(3),
    depth_multiplier=size(3, pair=False), bias=BOOL, activation=ACTIVATION,
)
SEPARABLE_SPECS = dict(DEPTHWISE_SPECS, out_channels=size(5, pair=False))
POOL_SPECS = dict(
    kernel_size=size(4), stride=Spec(st.one_of(st.none(), size(3).good), size(3).bad), padding=padding_arg(2)
)
DENSE_SPECS = dict(
    in_features=size(6, pair=False), out_features=size(6, pair=False), bias=BOOL, activation=ACTIVATION
)
BATCHNORM_SPECS = dict(
    num_features=size(5, pair=False),
    axis=Spec(st.sampled_from([1, -1]), st.sampled_from([0, 2, -2, 3, "1", True, None, 1.0])),
    eps=Spec(st.floats(1e-8, 1.0), st.sampled_from([0.0, -1e-3, float("nan"), float("inf"), "1e-3", None])),
    momentum=Spec(
        st.one_of(st.floats(0.0, 1.0), st.none()), st.sampled_from([-0.1, 1.5, float("nan"), "0.1"])
    ),
)


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.data())
def test_fuzz_conv2d(data):
    args = draw_args(data, CONV_SPECS)
    values = {name: arg.value for name, arg in args.items()}
    channels_ok = all(args[name].ok for name in ("in_channels", "out_channels", "groups"))
    groups = values["groups"]
    mismatched = channels_ok and (values["in_channels"] % groups or values["out_channels"] % groups)
    conv = build(tb.Conv2d, args, ("groups",) if mismatched else ())
    if conv is None:
        return
    x = image(data, values["in_channels"])
    expected = conv_expected(
        x, values["in_channels"], values["out_channels"], values["kernel_size"], values["stride"],
        values["dilation"], values["padding"],
    )
    check_forward(conv, x, expected)


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.data(), layer=st.sampled_from([tb.DepthwiseConv2d, tb.SeparableConv2d]))
def test_fuzz_depthwise_and_separable_conv2d(data, layer):
    args = draw_args(data, DEPTHWISE_SPECS if layer is tb.DepthwiseConv2d else SEPARABLE_SPECS)
    conv = build(layer, args)
    if conv is None:
        return
    values = {name: arg.value for name, arg in args.items()}
    x = image(data, values["in_channels"])
    out_channels = values.get("out_channels", values["in_channels"] * values["depth_multiplier"])
    expected = conv_expected(
        x, values["in_channels"], out_channels, values["kernel_size"], values["stride"], values["dilation"],
        values["padding"],
    )
    check_forward(conv, x, expected)


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.data(), layer=st.sampled_from([tb.MaxPool2d, tb.AvgPool2d]))
def test_fuzz_pooling(data, layer):
    args = draw_args(data, POOL_SPECS)
    kernel, stride, padding = (args[name].value for name in ("kernel_size", "stride", "padding"))
    # torch (and so torchblocks) allows an int padding of at most half the pool size.
    too_much_padding = (
        args["kernel_size"].ok and args["padding"].ok and not isinstance(padding, str)
        and any(p > k // 2 for p, k in zip(pair(padding), pair(kernel)))
    )
    pool = build(layer, args, ("padding",) if too_much_padding else ())
    if pool is None:
        return
    x = image(data, data.draw(st.integers(1, 4)))
    expected = None
    if x.dim() == 4 and x.shape[1] >= 1:
        hw = keras_hw(x.shape[2:], kernel, kernel if stride is None else stride, 1, padding)
        expected = None if hw is None else tuple(x.shape[:2]) + hw
    check_forward(pool, x, expected)


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.data())
def test_fuzz_dense(data):
    args = draw_args(data, DENSE_SPECS)
    dense = build(tb.Dense, args)
    if dense is None:
        return
    in_features, out_features = args["in_features"].value, args["out_features"].value
    rank = data.draw(st.integers(0, 3))
    shape = [data.draw(st.integers(0, 4)) for _ in range(rank)]
    if rank and data.draw(st.booleans()):
        shape[-1] = in_features
    expected = tuple(shape[:-1]) + (out_features,) if rank and shape[-1] == in_features else None
    check_forward(dense, torch.randn(shape), expected)


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.data(), training=st.booleans())
def test_fuzz_batchnorm(data, training):
    args = draw_args(data, BATCHNORM_SPECS)
    bn = build(tb.BatchNorm, args)
    if bn is None:
        return
    bn.train(training)
    channels, axis = args["num_features"].value, args["axis"].value
    x = image(data, channels, rank_weights=(4, 4, 2, 2, 3, 1, 0))
    if axis == -1 and x.dim() >= 2 and data.draw(st.booleans()):
        x = x.movedim(1, -1)
    fits = x.dim() >= 2 and x.shape[1 if axis == 1 else -1] == channels
    # Batch statistics need two values per channel (Keras would divide by zero instead).
    one_value_per_channel = training and x.numel() == channels
    check_forward(bn, x, tuple(x.shape) if fits and not one_value_per_channel else None)


# Arguments that are fine one by one but describe a weight too big to allocate: refused at
# construction, before torch asks the allocator for (giga|tera)bytes.
OVERSIZED = [
    pytest.param(lambda: tb.Conv2d(1, 1, 10**6), "kernel_size", id="conv-kernel"),
    pytest.param(lambda: tb.Conv2d(2**16, 2**16, 3), "out_channels", id="conv-channels"),
    pytest.param(
        lambda: tb.DepthwiseConv2d(3, 3, depth_multiplier=2**30), "depth_multiplier", id="depthwise"
    ),
    pytest.param(lambda: tb.SeparableConv2d(2**20, 2**20, 1), "out_channels", id="separable-pointwise"),
    pytest.param(lambda: tb.Dense(2**20, 2**20), "in_features", id="dense"),
]


@pytest.mark.parametrize("factory, name", OVERSIZED)
def test_oversized_weight_refused_at_construction(factory, name):
    with pytest.raises(ValueError, match=rf"`{name}`.*would hold \d+ elements"):
        factory()


# Inputs smaller than the window under 'valid' (or an int padding): torch would fail inside F.conv2d.
SMALL_INPUTS = [
    pytest.param(
        lambda: tb.Conv2d(2, 3, 5), (1, 2, 4, 9),
        r"kernel_size=\(5, 5\).*padding='valid'.*\(5, 5\).*\(4, 9\)", id="conv-valid",
    ),
    pytest.param(
        lambda: tb.Conv2d(2, 3, 3, dilation=(1, 3)), (1, 2, 6, 6),
        r"dilation=\(1, 3\).*\(3, 7\).*\(6, 6\)", id="conv-dilated",
    ),
    pytest.param(
        lambda: tb.Conv2d(2, 3, 5, padding=1), (1, 2, 2, 2),
        r"padding=\(1, 1\).*\(3, 3\).*\(2, 2\)", id="conv-int-padding",
    ),
    pytest.param(
        lambda: tb.SeparableConv2d(2, 3, (3, 1)), (1, 2, 2, 5),
        r"SeparableConv2d.*\(3, 1\).*\(2, 5\)", id="separable",
    ),
    pytest.param(
        lambda: tb.MaxPool2d(3), (1, 2, 2, 8),
        r"MaxPool2d.*kernel_size=\(3, 3\).*\(3, 3\).*\(2, 8\)", id="maxpool",
    ),
    pytest.param(
        lambda: tb.AvgPool2d(4, padding=1), (1, 2, 1, 8),
        r"AvgPool2d.*padding=\(1, 1\).*\(2, 2\).*\(1, 8\)", id="avgpool-int-padding",
    ),
    pytest.param(
        lambda: tb.Conv2d(2, 3, 3, padding="same"), (1, 2, 0, 4),
        r"'same'.*\(1, 1\).*\(0, 4\)", id="conv-same-empty",
    ),
]


@pytest.mark.parametrize("factory, shape, pattern", SMALL_INPUTS)
def test_input_smaller_than_window_names_kernel_padding_and_size(factory, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()(torch.zeros(shape))
