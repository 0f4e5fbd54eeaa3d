"""The step contract of every tfkit schedule (``tfkit.schedules._base.step_as_float64``).

* Python/NumPy ints and floats and int/float tensors are evaluated in float64:
  a Python float never passes through float32.
* bool, complex, str, bytes and None are a TypeError naming ``step``.
* A negative or non-finite Python/NumPy step is a ValueError naming ``step``; a
  tensor one raises when the graph runs (InvalidArgumentError naming ``step``),
  and under XLA (where assertions compile to nothing) gives NaN: never clamped.
* Exactly 0 past the end where the formula says 0, under XLA too.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_schedules_contract import CASES, NAMES
from tfkit.schedules import (
    Cyclic,
    MultiStepDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
    get_scheduler,
)

EXAMPLES = 60 if os.environ.get("TFKIT_FULL") == "1" else 6

# Steps a training run can reach, beyond 2**24 (float32's last exact integer).
python_ints = st.integers(min_value=0, max_value=2**53)
python_floats = st.floats(min_value=0.0, max_value=2.0**53, allow_nan=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_step_kind_is_evaluated_in_float64(name):
    s = CASES[name]()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ints=st.lists(python_ints, min_size=1, max_size=4), floats=st.lists(python_floats, min_size=1, max_size=4))
    def check(ints, floats):
        for steps in (ints, floats):
            reference = s(tf.constant(steps, tf.float64)).numpy()
            assert np.all(np.isfinite(reference)) and np.all(reference >= 0)
            for i, step in enumerate(steps):
                # A Python number, its NumPy scalar and a float64 tensor agree exactly.
                assert s(step).numpy() == reference[i], (step, "python")
                assert s(np.float64(step)).numpy() == reference[i], (step, "numpy")
            if steps is ints and max(steps) < 2**31:
                np.testing.assert_array_equal(s(np.asarray(steps, np.int32)).numpy(), reference)

    check()


def test_python_float_steps_never_pass_through_float32():
    # 16777217 is the first integer float32 cannot hold: it rounds to 16777216.
    boundary = 16777216
    assert float(PiecewiseConstantDecay([boundary], [1.0, 0.5])(16777217.0)) == 0.5
    assert float(MultiStepDecay(1.0, [16777217], gamma=0.1)(16777217.0)) == pytest.approx(0.1)
    # Cyclic with a period of 2**24 + 2: step 2**24 + 1 sits at the top, not one step off.
    s = Cyclic(0.0, 1.0, step_size=boundary + 1)
    assert float(s(16777217.0)) == 1.0
    assert float(s(np.float32(16777216.0))) == pytest.approx(1.0 - 1.0 / (boundary + 1), rel=1e-6)


BAD_TYPES = [True, False, np.bool_(True), 1 + 2j, np.complex64(1), "3", b"3", None, ["a"]]


@pytest.mark.parametrize("name", NAMES)
def test_refused_step_types_and_values_name_the_step(name):
    s = CASES[name]()
    for bad in BAD_TYPES:
        with pytest.raises(TypeError, match="`step`"):
            s(bad)
    for bad in (tf.constant(True), tf.constant("3"), tf.constant(1 + 2j)):
        with pytest.raises(TypeError, match="`step`"):
            s(bad)
    for bad in (-1, -0.5, math.nan, math.inf, -math.inf, 10**400, np.float32("nan"), [3, -1]):
        with pytest.raises(ValueError, match="`step`"):
            s(bad)


def test_huge_python_ints_are_float64_steps():
    s = PolynomialDecay(0.1, 10, end_learning_rate=0.01)
    assert float(s(10**30)) == pytest.approx(0.01)
    assert float(s(2**70)) == pytest.approx(0.01)


@pytest.mark.parametrize("name", NAMES)
def test_bad_tensor_steps_raise_when_run_and_are_nan_under_xla(name):
    s = CASES[name]()
    graph = tf.function(lambda step: s(step))
    jit = tf.function(lambda step: s(step), jit_compile=True)
    for bad in (tf.constant(-1, tf.int64), tf.constant(np.nan, tf.float64)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="`step` must be a finite"):
            graph(bad)
    # XLA drops assertions; the value is NaN, never a clamped rate (one trace).
    for bad in (-0.5, np.nan, -np.inf):
        assert np.isnan(float(jit(tf.constant(bad, tf.float64))))
    assert np.isfinite(float(jit(tf.constant(3.0, tf.float64))))
    with pytest.raises(tf.errors.InvalidArgumentError, match="`step`"):
        s(tf.constant([1.0, np.inf]))  # eager tensors are checked too


# (schedule, steps where the formula gives exactly 0)
ZERO_AT = [
    (lambda: get_scheduler("linear", 0.1, 100, 1000), [1000, 1001, 5000, 2**40]),
    (lambda: get_scheduler("linear", 0.1, 0, 3), [3, 4, 2**40]),
    (lambda: get_scheduler("cosine", 0.1, 7, 907), [907, 2**40]),
    (lambda: get_scheduler("cosine_with_restarts", 0.1, 9, 909, num_cycles=3), [909, 2**40]),
    (lambda: PolynomialDecay(0.1, 900, end_learning_rate=0.0), [900, 901, 2**40]),
    (lambda: PolynomialDecay(0.1, 7, end_learning_rate=0.0, cycle=True), [7, 14, 700]),
]


@pytest.mark.parametrize("make,zero_steps", ZERO_AT)
def test_exactly_zero_past_the_end_under_xla(make, zero_steps):
    s = make()
    jit = tf.function(lambda step: s(step), jit_compile=True)
    for step in zero_steps:
        assert float(s(step)) == 0.0, step
        assert float(jit(tf.constant(step, tf.int64))) == 0.0, step
