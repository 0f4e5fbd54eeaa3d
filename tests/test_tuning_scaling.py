"""Batch-size learning-rate scaling rules against their formulas."""

from __future__ import annotations

import math
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfkit.tuning.scaling import scale_learning_rate


@pytest.mark.parametrize(
    "lr, base, new", [(0.1, 256, 1024), (1e-3, 32, 8), (0.5, 7, 7), (3e-4, 1, 4096)]
)
def test_rules_match_formulas(lr, base, new):
    assert scale_learning_rate(lr, base, new) == pytest.approx(lr * new / base, rel=1e-15)
    assert scale_learning_rate(lr, base, new, rule="linear") == pytest.approx(lr * new / base)
    assert scale_learning_rate(lr, base, new, rule="sqrt") == pytest.approx(
        lr * math.sqrt(new / base), rel=1e-15
    )


def test_goyal_example():
    # Goyal et al. 2017: 0.1 for batch 256 -> 3.2 for batch 8192 (linear rule).
    assert scale_learning_rate(0.1, 256, 8192) == pytest.approx(3.2)


def test_round_trip():
    up = scale_learning_rate(2e-3, 64, 512, rule="sqrt")
    assert scale_learning_rate(up, 512, 64, rule="sqrt") == pytest.approx(2e-3)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((0.0, 32, 64), {}, ValueError, r"`lr` must be in \(0, inf\); received lr=0.0"),
        ((-0.1, 32, 64), {}, ValueError, "`lr` must be in"),
        ((float("nan"), 32, 64), {}, ValueError, "`lr`.*finite"),
        ((True, 32, 64), {}, TypeError, "`lr`"),
        ((0.1, 0, 64), {}, ValueError, r"`base_batch` must be an integer >= 1; received base_batch=0"),
        ((0.1, 32, -1), {}, ValueError, "`new_batch` must be an integer >= 1"),
        ((0.1, 32.0, 64), {}, TypeError, "`base_batch` must be an integer"),
        ((0.1, 32, 64), {"rule": "cubic"}, ValueError, "`rule`.*linear.*sqrt.*cubic"),
        # The two: inf and a bare OverflowError before.
        ((1e300, 1, 10**10), {}, ValueError, "`lr`.*finite rate > 0.*received lr=1e"),
        ((0.1, 10**400, 1), {}, ValueError, "`base_batch`.*<an integer of 401 digits>"),
        ((5e-324, 2, 1), {}, ValueError, "`lr`.*finite rate > 0"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        scale_learning_rate(*args, **kwargs)


@settings(max_examples=50 if os.environ.get("TFKIT_FULL") == "1" else 15, deadline=None)
@given(
    lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**6)),
    base=st.one_of(st.integers(-3, 10**30), st.floats(0.5, 100.0), st.booleans()),
    new=st.one_of(st.integers(-3, 10**30), st.floats(0.5, 100.0)),
    rule=st.sampled_from(["linear", "sqrt", "LINEAR"]),
)
def test_any_call_time_input_errors_clearly_or_gives_a_finite_rate(lr, base, new, rule):
    try:
        got = scale_learning_rate(lr, base, new, rule=rule)
    except (TypeError, ValueError) as e:
        assert re.search(r"^scale_learning_rate: `(lr|base_batch|new_batch|rule)` must be ", str(e))
        assert "; received " in str(e)
        return
    assert math.isfinite(got) and got > 0
    expected = lr * new / base if rule == "linear" else lr * math.sqrt(new / base)
    assert got == pytest.approx(expected, rel=1e-12)
