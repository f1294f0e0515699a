"""Keras padding arithmetic (pure functions), checked against the definition of 'same'."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from torchblocks.padding import (
    is_static_same,
    normalize_padding,
    output_size,
    pad_same,
    same_pad_table,
    same_padding,
    same_pool_padding,
    same_pool_plan,
    to_pair,
)

GEOMETRY = dict(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), d=st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(**GEOMETRY)
def test_same_padding_is_the_smallest_pad_giving_ceil_n_over_s(n, k, s, d):
    before, after = same_padding(n, k, s, d)
    total, effective = before + after, (k - 1) * d + 1
    assert after - before in (0, 1)  # the extra pixel goes to the bottom/right
    assert (n + total - effective) // s + 1 == math.ceil(n / s)
    # No smaller total pad reaches ceil(n / s) with the last window inside the padded input.
    if total > 0:
        assert (n + total - 1 - effective) // s + 1 < math.ceil(n / s) or n + total - 1 < effective


@settings(max_examples=60, deadline=None)
@given(**GEOMETRY)
def test_output_size_matches_the_keras_formulas(n, k, s, d):
    effective = (k - 1) * d + 1
    assert output_size(n, k, s, "same", d) == math.ceil(n / s)
    assert output_size(n, k, s, "valid", d) == (n - effective) // s + 1
    assert output_size(n, k, s, 2, d) == (n + 4 - effective) // s + 1


@pytest.mark.parametrize("k", range(1, 7))
@pytest.mark.parametrize("s", range(1, 4))
@pytest.mark.parametrize("d", range(1, 3))
def test_is_static_same_iff_one_symmetric_pad_for_every_size(k, s, d):
    pads = {same_padding(n, k, s, d) for n in range(1, 30)}
    # Sizes below the kernel pad differently under any rule; only sizes >= the kernel count here.
    pads_large = {same_padding(n, k, s, d) for n in range((k - 1) * d + 1, 40)}
    static = len(pads_large) == 1 and all(b == a for b, a in pads_large)
    assert is_static_same(k, s, d) == static
    if is_static_same(k, s, d):
        assert pads == pads_large


def test_same_padding_known_values():
    # TensorFlow's documented examples: n=5, k=3, s=2 -> total 2 (1, 1); n=6 -> total 1 (0, 1).
    assert same_padding(5, 3, 2) == (1, 1)
    assert same_padding(6, 3, 2) == (0, 1)
    assert same_padding(6, 4, 1) == (1, 2)
    assert same_padding(7, 3, 1, 2) == (2, 2)
    assert same_padding(2, 5, 3) == (1, 2)


@settings(max_examples=60, deadline=None)
@given(**GEOMETRY)
def test_same_pad_table_holds_the_pad_of_every_size(n, k, s, d):
    assert same_pad_table(k, s, d)[n % s] == list(same_padding(n, k, s, d))


def _torch_pool_windows(n: int, k: int, s: int, pad: int) -> list:
    """Window starts of torch pooling with ceil_mode=True (its documented output-size rule)."""
    out = -(-(n + 2 * pad - k) // s) + 1
    if (out - 1) * s >= n + pad:  # the last window must start inside the input or the left pad
        out -= 1
    return [i * s - pad for i in range(out)]


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("s", range(1, 5))
def test_same_pool_plan_gives_the_keras_windows(k, s):
    # Keras 'same': ceil(n / s) windows starting at i * s - before; windows clip to the input.
    befores, trim = same_pool_plan(k, s)
    for n in range(1, 40):
        pad = befores[n % len(befores)]
        assert pad <= k // 2  # torch's limit on implicit pooling padding
        before = same_padding(n, k, s)[0]
        keras = [i * s - before for i in range(math.ceil(n / s))]
        assert _torch_pool_windows(n, k, s, pad)[trim:] == keras, n


@pytest.mark.parametrize("h, w", [(6, 5), (7, 8), (9, 9), (10, 4)])
def test_pad_same_reads_the_pad_of_each_size(h, w):
    # k=3, s=2 on H; k=4, s=1 on W: the extra pixel bottom/right whenever the total is odd.
    tables = same_pad_table(3, 2), same_pad_table(4, 1)
    x = torch.randn(1, 2, h, w)
    (top, bottom), (left, right) = same_padding(h, 3, 2), same_padding(w, 4, 1)
    padded, conv_pad = pad_same(x, *tables)
    assert torch.equal(F.pad(padded, [conv_pad[1]] * 2 + [conv_pad[0]] * 2), F.pad(x, [left, right, top, bottom]))


def test_same_runtimes_stay_dynamic_under_jit_trace():
    # A trace at one size must pad every other size by its own Keras pad, not freeze the first.
    tables = same_pad_table(3, 2), same_pad_table(3, 3)
    befores = same_pool_plan(3, 2)[0], same_pool_plan(3, 3)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated on 2.14
        padded = torch.jit.trace(lambda x: pad_same(x, *tables)[0], torch.randn(1, 1, 6, 6))
        pooled = torch.jit.trace(
            lambda x: F.max_pool2d(x, 3, (2, 3), same_pool_padding(x.shape[-2], x.shape[-1], *befores), ceil_mode=True),
            torch.randn(1, 1, 6, 6),
        )
    for h, w in [(6, 6), (7, 7), (8, 10), (9, 11)]:
        x = torch.randn(1, 1, h, w)
        (top, bottom), (left, right) = same_padding(h, 3, 2), same_padding(w, 3, 3)
        assert torch.equal(padded(x), F.pad(x, [left, right, top, bottom]))
        expected = F.max_pool2d(x, 3, (2, 3), same_pool_padding(x.shape[-2], x.shape[-1], *befores), ceil_mode=True)
        assert torch.equal(pooled(x), expected)


def test_to_pair_and_normalize_padding():
    assert to_pair(3, "kernel_size") == (3, 3)
    assert to_pair((2, 5), "stride") == (2, 5)
    assert to_pair([0, 1], "padding", minimum=0) == (0, 1)
    assert normalize_padding("SAME") == "same"
    assert normalize_padding("Valid") == "valid"
    assert normalize_padding(2) == (2, 2)
    assert normalize_padding((0, 1)) == (0, 1)


BAD_PAIRS = [
    (0, ValueError, r"Invalid value for argument `stride`. Expected strictly positive values. Received stride=0."),
    ((1, -1), ValueError, r"Received stride=\(1, -1\)"),
    (2.0, TypeError, r"Invalid type for argument `stride`.*Received stride=2.0 of type float"),
    (True, TypeError, r"`stride`.*Received stride=True"),
    ((1, 2, 3), TypeError, r"`stride`.*Received stride=\(1, 2, 3\)"),
    ((1, 2.5), TypeError, r"`stride`.*Received stride=\(1, 2.5\)"),
    ("2", TypeError, r"`stride`.*Received stride='2'"),
]


@pytest.mark.parametrize("value, error, message", BAD_PAIRS)
def test_to_pair_errors_follow_keras_format(value, error, message):
    with pytest.raises(error, match=message):
        to_pair(value, "stride")


@pytest.mark.parametrize("value, error", [("full", ValueError), ("", ValueError), (-1, ValueError), (1.0, TypeError)])
def test_normalize_padding_rejects_bad_values(value, error):
    with pytest.raises(error, match=r"`padding`.*Received padding="):
        normalize_padding(value)
