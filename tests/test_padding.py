"""Keras padding arithmetic (pure functions), checked against the definition of 'same'."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchblocks.padding import (
    is_static_same,
    normalize_padding,
    output_size,
    same_pad_list,
    same_padding,
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


def test_same_pad_list_is_left_right_top_bottom():
    # H=6 (k=3, s=2: (0, 1)) and W=5 (k=4, s=1: (1, 2)).
    assert same_pad_list(6, 5, (3, 4), (2, 1), (1, 1)) == [1, 2, 0, 1]


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
