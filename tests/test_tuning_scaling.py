"""Batch-size learning-rate scaling rules against their formulas."""

from __future__ import annotations

import math

import pytest

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
    "args, kwargs, match",
    [
        ((0.0, 32, 64), {}, "lr.*> 0.*0.0"),
        ((-0.1, 32, 64), {}, "lr.*> 0"),
        ((float("nan"), 32, 64), {}, "lr.*finite"),
        ((True, 32, 64), {}, "lr"),
        ((0.1, 0, 64), {}, "base_batch.*>= 1.*0"),
        ((0.1, 32, -1), {}, "new_batch.*>= 1"),
        ((0.1, 32.0, 64), {}, "base_batch.*int"),
        ((0.1, 32, 64), {"rule": "cubic"}, "rule.*linear.*sqrt.*cubic"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_learning_rate(*args, **kwargs)
