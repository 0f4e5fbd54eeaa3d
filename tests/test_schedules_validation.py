"""Constructor validation: bad arguments raise errors naming the argument and the value.

Plus hypothesis fuzzing: any argument combination either raises a clear
ValueError/TypeError or builds a schedule that is finite and >= 0 everywhere.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfkit.schedules import (
    SWALR,
    Constant,
    CosineDecay,
    CosineDecayRestarts,
    Cyclic,
    ExponentialDecay,
    InverseSqrtDecay,
    InverseTimeDecay,
    Join,
    LinearCosineDecay,
    MultiStepDecay,
    NaturalExpDecay,
    OneCycle,
    OneCycleMomentum,
    PiecewiseConstantDecay,
    PolynomialDecay,
    Product,
    ScaledSchedule,
    Warmup,
    WarmupStableDecay,
)

BAD = [
    # (constructor, kwargs, exception, argument named in the message)
    (PiecewiseConstantDecay, dict(boundaries=[10, 5], values=[1, 2, 3]), ValueError, "boundaries"),
    (PiecewiseConstantDecay, dict(boundaries=[5, 5], values=[1, 2, 3]), ValueError, "boundaries"),
    (PiecewiseConstantDecay, dict(boundaries=[5, 10], values=[1, 2]), ValueError, "values"),
    (PiecewiseConstantDecay, dict(boundaries=[-1], values=[1, 2]), ValueError, "boundaries[0]"),
    (PiecewiseConstantDecay, dict(boundaries=[], values=[1]), ValueError, "boundaries"),
    (PiecewiseConstantDecay, dict(boundaries=5, values=[1, 2]), TypeError, "boundaries"),
    (PiecewiseConstantDecay, dict(boundaries=[5], values=[1, -2]), ValueError, "values[1]"),
    (
        MultiStepDecay,
        dict(initial_learning_rate=0.1, milestones=[3, -1]),
        ValueError,
        "milestones[1]",
    ),
    (MultiStepDecay, dict(initial_learning_rate=0.1, milestones=[]), ValueError, "milestones"),
    (MultiStepDecay, dict(initial_learning_rate=0.1, milestones=[2.5]), TypeError, "milestones[0]"),
    (
        MultiStepDecay,
        dict(initial_learning_rate=0.1, milestones=[2] * 3, gamma=1e150),
        ValueError,
        "gamma",
    ),
    (
        MultiStepDecay,
        dict(initial_learning_rate=0.1, milestones=[2], gamma=-0.5),
        ValueError,
        "gamma",
    ),
    (Constant, dict(learning_rate=-1.0), ValueError, "learning_rate"),
    (SWALR, dict(initial_learning_rate=0.1, swa_lr=-1.0), ValueError, "swa_lr"),
    (SWALR, dict(initial_learning_rate=0.1, swa_lr=0.1, anneal_steps=1.5), TypeError, "anneal_steps"),
    (SWALR, dict(initial_learning_rate=0.1, swa_lr=0.1, anneal_steps=-1), ValueError, "anneal_steps"),
    (SWALR, dict(initial_learning_rate=0.1, swa_lr=0.1, anneal_strategy="exp"), ValueError, "anneal_strategy"),
    (Constant, dict(learning_rate=1e39), ValueError, "learning_rate"),
    (InverseSqrtDecay, dict(initial_learning_rate=0.1, timescale=0.5), ValueError, "timescale"),
    (
        InverseSqrtDecay,
        dict(initial_learning_rate=0.1, timescale=float("inf")),
        ValueError,
        "timescale",
    ),
    (
        WarmupStableDecay,
        dict(learning_rate=0.1, warmup_steps=-1, stable_steps=5, decay_steps=5),
        ValueError,
        "warmup_steps",
    ),
    (
        WarmupStableDecay,
        dict(learning_rate=0.1, warmup_steps=1, stable_steps=5.5, decay_steps=5),
        TypeError,
        "stable_steps",
    ),
    (
        WarmupStableDecay,
        dict(learning_rate=0.1, warmup_steps=1, stable_steps=5, decay_steps=5, alpha=1.5),
        ValueError,
        "alpha",
    ),
    (
        WarmupStableDecay,
        dict(learning_rate=0.1, warmup_steps=1, stable_steps=5, decay_steps=5, decay_type="exp"),
        ValueError,
        "decay_type",
    ),
    (
        WarmupStableDecay,
        dict(learning_rate=0.1, warmup_steps=1, stable_steps=5, decay_steps=5, warmup_type="x"),
        ValueError,
        "warmup_type",
    ),
    (
        WarmupStableDecay,
        dict(learning_rate=0.1, warmup_steps=1, stable_steps=5, decay_steps=5, num_cycles=1e301),
        ValueError,
        "num_cycles",
    ),
    (
        CosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, num_cycles=-1),
        ValueError,
        "num_cycles",
    ),
    (Product, dict(schedules=[Constant(0.1)]), ValueError, "schedules"),
    (Product, dict(schedules=[Constant(0.1), 2.0]), TypeError, "schedules[1]"),
    (Product, dict(schedules=[Constant(3e38), Constant(2.0)]), ValueError, "schedules"),
    (
        Product,
        dict(schedules=[Constant(3e38), Constant(3e38), Constant(0.0)]),
        ValueError,
        "schedules",
    ),
    (
        LinearCosineDecay,
        dict(initial_learning_rate=0.0, decay_steps=10, beta=1e300),
        ValueError,
        "beta",
    ),
    (
        LinearCosineDecay,
        dict(initial_learning_rate=1e30, decay_steps=10, alpha=1e10),
        ValueError,
        "alpha",
    ),
    (
        LinearCosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, num_periods=1e308),
        ValueError,
        "num_periods",
    ),
    (
        Cyclic,
        dict(
            initial_learning_rate=0.0,
            maximal_learning_rate=1.0,
            step_size=1e308,
            step_size_down=1e308,
        ),
        ValueError,
        "step_size_down",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=-0.1, decay_steps=10, decay_rate=0.5),
        ValueError,
        "initial_learning_rate",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.5),
        ValueError,
        "decay_steps",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=-5, decay_rate=0.5),
        ValueError,
        "decay_steps",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=1.5),
        ValueError,
        "decay_rate",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.5, staircase="yes"),
        TypeError,
        "staircase",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate=float("nan"), decay_steps=10, decay_rate=0.5),
        ValueError,
        "initial_learning_rate",
    ),
    (
        ExponentialDecay,
        dict(initial_learning_rate="0.1", decay_steps=10, decay_rate=0.5),
        TypeError,
        "initial_learning_rate",
    ),
    (
        NaturalExpDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-1.0),
        ValueError,
        "decay_rate",
    ),
    (
        InverseTimeDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-0.5),
        ValueError,
        "decay_rate",
    ),
    (
        InverseTimeDecay,
        dict(initial_learning_rate=0.1, decay_steps=float("inf"), decay_rate=0.5),
        ValueError,
        "decay_steps",
    ),
    (
        PolynomialDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, power=0.0),
        ValueError,
        "power",
    ),
    (
        PolynomialDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, end_learning_rate=-1.0),
        ValueError,
        "end_learning_rate",
    ),
    (PolynomialDecay, dict(initial_learning_rate=0.1, decay_steps=10, cycle=1), TypeError, "cycle"),
    (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, alpha=1.5), ValueError, "alpha"),
    (
        CosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, warmup_steps=5),
        ValueError,
        "warmup_steps",
    ),
    (
        CosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, warmup_target=1.0, warmup_steps=-1),
        ValueError,
        "warmup_steps",
    ),
    (
        CosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, dtype="float16"),
        ValueError,
        "dtype",
    ),
    (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, name=3), TypeError, "name"),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=0.5),
        ValueError,
        "t_mul",
    ),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=10, m_mul=1.5),
        ValueError,
        "m_mul",
    ),
    (
        CosineDecayRestarts,
        dict(initial_learning_rate=0.1, first_decay_steps=0),
        ValueError,
        "first_decay_steps",
    ),
    (
        LinearCosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, beta=-0.1),
        ValueError,
        "beta",
    ),
    (
        LinearCosineDecay,
        dict(initial_learning_rate=0.1, decay_steps=10, num_periods=-1),
        ValueError,
        "num_periods",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, pct_start=1.0),
        ValueError,
        "pct_start",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, pct_start=0.0),
        ValueError,
        "pct_start",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, pct_start=1.5),
        ValueError,
        "pct_start",
    ),
    (OneCycle, dict(max_learning_rate=0.1, total_steps=10, pct_start=0.1), ValueError, "pct_start"),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=10, pct_start=0.6, three_phase=True),
        ValueError,
        "pct_start",
    ),
    (OneCycle, dict(max_learning_rate=0.1, total_steps=-100), ValueError, "total_steps"),
    (OneCycle, dict(max_learning_rate=0.1, total_steps=100.5), TypeError, "total_steps"),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, anneal_strategy="cosine"),
        ValueError,
        "anneal_strategy",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, div_factor=0),
        ValueError,
        "div_factor",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, final_div_factor=-1),
        ValueError,
        "final_div_factor",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, base_momentum=1.2),
        ValueError,
        "base_momentum",
    ),
    (
        OneCycle,
        dict(max_learning_rate=0.1, total_steps=100, max_momentum=-0.1),
        ValueError,
        "max_momentum",
    ),
    (OneCycle, dict(max_learning_rate=True, total_steps=100), TypeError, "max_learning_rate"),
    (OneCycleMomentum, dict(total_steps=1), ValueError, "total_steps"),
    (
        Cyclic,
        dict(initial_learning_rate=0.1, maximal_learning_rate=1.0, step_size=0),
        ValueError,
        "step_size",
    ),
    (
        Cyclic,
        dict(initial_learning_rate=0.1, maximal_learning_rate=1.0, step_size=5, step_size_down=-2),
        ValueError,
        "step_size_down",
    ),
    (
        Cyclic,
        dict(initial_learning_rate=0.1, maximal_learning_rate=1.0, step_size=5, mode="sawtooth"),
        ValueError,
        "mode",
    ),
    (
        Cyclic,
        dict(initial_learning_rate=0.1, maximal_learning_rate=1.0, step_size=5, gamma=0.0),
        ValueError,
        "gamma",
    ),
    (
        Cyclic,
        dict(initial_learning_rate=0.1, maximal_learning_rate=-1.0, step_size=5),
        ValueError,
        "maximal_learning_rate",
    ),
    (Warmup, dict(schedule=0.1, warmup_steps=5), TypeError, "schedule"),
    (Warmup, dict(schedule=CosineDecay(0.1, 10), warmup_steps=-5), ValueError, "warmup_steps"),
    (
        Warmup,
        dict(schedule=CosineDecay(0.1, 10), warmup_steps=5, warmup_type="cosine"),
        ValueError,
        "warmup_type",
    ),
    (
        Warmup,
        dict(schedule=CosineDecay(0.1, 10), warmup_steps=5, initial_learning_rate=-1),
        ValueError,
        "initial_learning_rate",
    ),
    (Join, dict(schedules=[CosineDecay(0.1, 10)], boundaries=[]), ValueError, "schedules"),
    (Join, dict(schedules=[CosineDecay(0.1, 10), 0.5], boundaries=[5]), TypeError, "schedules[1]"),
    (Join, dict(schedules=[CosineDecay(0.1, 10)] * 3, boundaries=[5]), ValueError, "boundaries"),
    (Join, dict(schedules=[CosineDecay(0.1, 10)] * 3, boundaries=[5, 5]), ValueError, "boundaries"),
    (Join, dict(schedules=[CosineDecay(0.1, 10)] * 2, boundaries=[0]), ValueError, "boundaries[0]"),
]


def test_bad_arguments_are_named_with_their_value():
    # One test over the whole table (each case is cheap; per-test teardown is not).
    for cls, kwargs, exc, argument in BAD:
        with pytest.raises(exc) as info:
            cls(**kwargs)
        message = str(info.value)
        case = f"{cls.__name__}({kwargs}): {message}"
        assert message.startswith(f"{cls.__name__}: "), case
        assert f"`{argument}`" in message or f"{argument}=" in message, case
        assert "received" in message or "gives" in message, case


# --- Fuzzing: either a clear error or a sound schedule.

# Extremes that the constructors accept: the known overflow offenders lived here.
EXTREMES = [0.0, 5e-324, 1e-300, 1e30, 3.4e38, 1e300, 1.7e308]
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=0, max_value=2, width=64),
    st.integers(min_value=-5, max_value=10**6),
    st.sampled_from(EXTREMES),
    st.sampled_from([None, "x", True, [1]]),
)
counts = st.one_of(st.integers(min_value=-3, max_value=5000), numbers)

FUZZ = {
    ExponentialDecay: dict(
        initial_learning_rate=numbers,
        decay_steps=counts,
        decay_rate=numbers,
        staircase=st.booleans(),
    ),
    NaturalExpDecay: dict(initial_learning_rate=numbers, decay_steps=counts, decay_rate=numbers),
    InverseTimeDecay: dict(initial_learning_rate=numbers, decay_steps=counts, decay_rate=numbers),
    PolynomialDecay: dict(
        initial_learning_rate=numbers,
        decay_steps=counts,
        end_learning_rate=numbers,
        power=numbers,
        cycle=st.booleans(),
    ),
    CosineDecay: dict(
        initial_learning_rate=numbers,
        decay_steps=counts,
        alpha=numbers,
        warmup_target=st.one_of(st.none(), numbers),
        warmup_steps=counts,
        num_cycles=numbers,
    ),
    CosineDecayRestarts: dict(
        initial_learning_rate=numbers,
        first_decay_steps=counts,
        t_mul=numbers,
        m_mul=numbers,
        alpha=numbers,
    ),
    LinearCosineDecay: dict(
        initial_learning_rate=numbers,
        decay_steps=counts,
        num_periods=numbers,
        alpha=numbers,
        beta=numbers,
    ),
    OneCycle: dict(
        max_learning_rate=numbers,
        total_steps=counts,
        pct_start=numbers,
        div_factor=numbers,
        final_div_factor=numbers,
        three_phase=st.booleans(),
        anneal_strategy=st.sampled_from(["cos", "linear", "exp"]),
    ),
    Cyclic: dict(
        initial_learning_rate=numbers,
        maximal_learning_rate=numbers,
        step_size=counts,
        step_size_down=st.one_of(st.none(), counts),
        gamma=numbers,
        mode=st.sampled_from(["triangular", "triangular2", "exp_range", "x"]),
    ),
    MultiStepDecay: dict(
        initial_learning_rate=numbers, milestones=st.lists(counts, max_size=4), gamma=numbers
    ),
    PiecewiseConstantDecay: dict(
        boundaries=st.lists(counts, max_size=4), values=st.lists(numbers, max_size=5)
    ),
    Constant: dict(learning_rate=numbers),
    SWALR: dict(
        initial_learning_rate=numbers,
        swa_lr=numbers,
        anneal_steps=counts,
        anneal_strategy=st.sampled_from(["cos", "linear", "exp"]),
    ),
    InverseSqrtDecay: dict(initial_learning_rate=numbers, timescale=numbers),
    WarmupStableDecay: dict(
        learning_rate=numbers,
        warmup_steps=counts,
        stable_steps=counts,
        decay_steps=counts,
        alpha=numbers,
        warmup_type=st.sampled_from(["linear", "cosine", "1-sqrt", "exp"]),
        decay_type=st.sampled_from(["linear", "cosine", "1-sqrt", "exp"]),
        num_cycles=numbers,
    ),
    Product: dict(
        schedules=st.lists(
            st.sampled_from(
                [
                    Constant(3.4e38),
                    Constant(0.0),
                    ExponentialDecay(1e20, 1, 0.5),
                    CosineDecay(1e30, 10, warmup_target=1e19, warmup_steps=3),
                    Cyclic(0.0, 1e10, step_size=3),
                    0.5,
                ]
            ),
            max_size=4,
        )
    ),
    Join: dict(
        schedules=st.lists(
            st.sampled_from([Constant(3.4e38), MultiStepDecay(1.0, [0, 3, 3], gamma=1e12)]),
            min_size=2,
            max_size=3,
        ),
        boundaries=st.lists(counts, min_size=1, max_size=2),
    ),
    ScaledSchedule: dict(
        schedule=st.sampled_from([Constant(3.4e38), InverseSqrtDecay(1.0, 1), 0.5]),
        multiplier=numbers,
    ),
    Warmup: dict(
        schedule=st.sampled_from([Constant(3.4e38), InverseSqrtDecay(1.0, 1)]),
        warmup_steps=counts,
        initial_learning_rate=numbers,
        warmup_type=st.sampled_from(["linear", "constant", "cosine"]),
    ),
}

# More examples in `make test-full`.
FUZZ_EXAMPLES = 100 if os.environ.get("TFKIT_FULL") == "1" else 12
FUZZ_STEPS = [0, 1, 17, 999, 2**31 - 1, 2**40]


@pytest.mark.parametrize("cls", list(FUZZ), ids=lambda c: c.__name__)
def test_every_schedule_class_is_fuzzed(cls):
    import tfkit.schedules

    classes = {getattr(tfkit.schedules, n) for n in tfkit.schedules.__all__}
    classes = {c for c in classes if isinstance(c, type)} - {OneCycleMomentum}
    assert classes <= set(FUZZ), classes - set(FUZZ)


@pytest.mark.parametrize("cls", list(FUZZ), ids=lambda c: c.__name__)
def test_fuzzed_arguments_error_clearly_or_work(cls):
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.fixed_dictionaries(FUZZ[cls]))
    def check(kwargs):
        try:
            schedule = cls(**kwargs)
        except (ValueError, TypeError) as err:
            assert str(err).startswith(f"{cls.__name__}: "), err
            assert "`" in str(err), err  # names the argument
            return
        out = np.array([float(schedule(t)) for t in FUZZ_STEPS])
        assert np.all(np.isfinite(out)) and np.all(out >= 0), (kwargs, out)
        clone = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(schedule), safe_mode=True
        )
        assert clone.get_config() == schedule.get_config()
        assert math.isclose(float(clone(17)), out[2], rel_tol=1e-7, abs_tol=1e-30)

    check()


# --- Extremes the constructors accept: every accepted combination stays finite and >= 0.

accepted = st.one_of(
    st.sampled_from(EXTREMES), st.floats(0, 2), st.floats(0, 1.7e308), st.integers(0, 10**6)
)
long_counts = st.one_of(st.integers(0, 2**50), st.sampled_from([1, 2, 1e300]))
EXTREME_FUZZ = {
    cls: {
        k: accepted if v is numbers else long_counts if v is counts else v
        for k, v in strategies.items()
    }
    for cls, strategies in FUZZ.items()
}
EXTREME_STEPS = [0, 1, 2, 17, 2**24 + 1, 2**31 - 1, 2**40, 2**50]


@pytest.mark.parametrize("cls", list(EXTREME_FUZZ), ids=lambda c: c.__name__)
def test_extreme_accepted_arguments_stay_finite_and_non_negative(cls):
    @settings(
        max_examples=3 * FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.fixed_dictionaries(EXTREME_FUZZ[cls]))
    def check(kwargs):
        try:
            schedule = cls(**kwargs)
        except (ValueError, TypeError) as err:
            assert str(err).startswith(f"{cls.__name__}: ") and "`" in str(err), err
            return
        import tensorflow as tf

        out = np.asarray(schedule(tf.constant(EXTREME_STEPS, tf.int64)), np.float64)
        assert np.all(np.isfinite(out)) and np.all(out >= 0), (kwargs, out)

    check()
