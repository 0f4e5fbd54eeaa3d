"""Schedules against their references: golden values and independent formulas.

Golden values (tests/golden/schedules.json, made by make_schedules_golden.py)
come from PyTorch, TF1 and Keras themselves. The formulas below are written
independently of tfkit, in plain Python/numpy, from the references' papers or
documentation.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from tfkit.schedules import (
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
    Warmup,
    WarmupStableDecay,
)

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "schedules.json").read_text())

# float32 result vs reference, relative to the schedule's peak rate.
RTOL_PEAK = 1e-6


def values(schedule, steps, dtype="int64"):
    """The schedule at each step: one graph call on the step vector (schedules are elementwise).

    Optimizers pass scalar steps: ``scalar_values`` checks that path too.
    """
    import tensorflow as tf

    steps = list(steps)
    out = tf.function(lambda step: schedule(step))(tf.constant(steps, dtype))
    return np.asarray(out, dtype=np.float64)


def scalar_values(schedule, steps, dtype="int64"):
    import tensorflow as tf

    fn = tf.function(lambda step: schedule(step))
    return np.array([float(fn(tf.constant(s, dtype))) for s in steps])


def assert_close_to_peak(actual, expected, peak, rtol=RTOL_PEAK):
    actual, expected = np.asarray(actual), np.asarray(expected)
    err = np.abs(actual - expected).max() / peak
    assert err <= rtol, (err, np.abs(actual - expected).argmax(), actual, expected)


# --- tfkit equivalents of every golden case, written from the reference's docs.


def _onecycle(kw):
    return OneCycle(
        max_learning_rate=kw["max_lr"],
        total_steps=kw["total_steps"],
        pct_start=kw["pct_start"],
        anneal_strategy=kw["anneal_strategy"],
        three_phase=kw["three_phase"],
        div_factor=kw.get("div_factor", 25.0),
        final_div_factor=kw.get("final_div_factor", 1e4),
        base_momentum=kw.get("base_momentum", 0.85),
        max_momentum=kw.get("max_momentum", 0.95),
    )


def _equivalent(case):
    ref, kw = case["reference"], case["kwargs"]
    if ref.endswith("OneCycleLR"):
        return _onecycle(kw)
    if ref.endswith("CosineAnnealingWarmRestarts"):
        base = case["base_lr"]
        return CosineDecayRestarts(
            base, first_decay_steps=kw["T_0"], t_mul=kw["T_mult"], alpha=kw["eta_min"] / base
        )
    if ref.endswith("CyclicLR"):
        return Cyclic(
            kw["base_lr"],
            kw["max_lr"],
            step_size=kw["step_size_up"],
            step_size_down=kw["step_size_down"],
            mode=kw["mode"],
            gamma=kw["gamma"],
        )
    if ref.endswith("MultiStepLR"):
        return MultiStepDecay(case["base_lr"], milestones=kw["milestones"], gamma=kw["gamma"])
    if ref.startswith("tf.compat.v1"):
        kw = dict(kw)
        kw["initial_learning_rate"] = kw.pop("learning_rate")
        cls = {
            "natural_exp_decay": NaturalExpDecay,
            "inverse_time_decay": InverseTimeDecay,
            "linear_cosine_decay": LinearCosineDecay,
        }[ref.rsplit(".", 1)[1]]
        return cls(**kw)
    cls = {
        "CosineDecayRestarts": CosineDecayRestarts,
        "PolynomialDecay": PolynomialDecay,
        "PiecewiseConstantDecay": PiecewiseConstantDecay,
        "ExponentialDecay": ExponentialDecay,
        "CosineDecay": CosineDecay,
        "InverseTimeDecay": InverseTimeDecay,
    }[ref.rsplit(".", 1)[1]]
    return cls(**kw)


def _families():
    """Golden cases grouped by reference (one test per reference keeps the suite fast)."""
    groups = {}
    for name, case in sorted(GOLDEN.items()):
        groups.setdefault(case["reference"], []).append(name)
    return groups


@pytest.mark.parametrize("reference", sorted(_families()))
def test_equals_reference_golden(reference):
    for name in _families()[reference]:
        case = GOLDEN[name]
        schedule = _equivalent(case)
        expected = np.array(case["values"])
        try:
            assert_close_to_peak(values(schedule, case["steps"]), expected, expected.max())
            few = case["steps"][:: max(1, len(case["steps"]) // 5)]
            assert_close_to_peak(
                scalar_values(schedule, few),
                [case["values"][case["steps"].index(k)] for k in few],
                expected.max(),
            )
            # float64 schedules reproduce the (float64) PyTorch values to rounding.
            if reference.startswith("torch"):
                config = schedule.get_config() | {"dtype": "float64"}
                exact = type(schedule).from_config(config)
                np.testing.assert_allclose(
                    values(exact, case["steps"]), expected, rtol=1e-12, atol=1e-15
                )
            if reference.endswith("OneCycleLR"):
                momentum = schedule.momentum_schedule
                assert isinstance(momentum, OneCycleMomentum)
                assert_close_to_peak(values(momentum, case["steps"]), case["momentum"], 1.0)
        except AssertionError as err:
            raise AssertionError(f"golden case {name}: {err}") from err


# --- Independent formulas at boundary steps.


def _onecycle_formula(step, max_lr, total, pct, strategy="cos", three=False, div=25.0, fdiv=1e4):
    init = max_lr / div
    final = init / fdiv
    up_end = pct * total - 1
    if three:
        knots = [(0, init), (up_end, max_lr), (2 * pct * total - 2, init), (total - 1, final)]
    else:
        knots = [(0, init), (up_end, max_lr), (total - 1, final)]
    step = min(step, total - 1)
    for (s0, v0), (s1, v1) in zip(knots[:-1], knots[1:], strict=False):
        if step <= s1:
            t = (step - s0) / (s1 - s0)
            if strategy == "cos":
                return v1 + (v0 - v1) * (1 + math.cos(math.pi * t)) / 2
            return v0 + (v1 - v0) * t
    raise AssertionError


@pytest.mark.parametrize("three", [False, True])
@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_onecycle_formula_and_boundaries(three, strategy):
    total, pct = 1000, 0.3
    s = OneCycle(0.1, total, pct_start=pct, anneal_strategy=strategy, three_phase=three)
    steps = [0, 1, 298, 299, 300, 597, 598, 599, 998, 999, 1000, 5000, 2**40]
    expected = [_onecycle_formula(t, 0.1, total, pct, strategy, three) for t in steps]
    assert_close_to_peak(values(s, steps), expected, 0.1)
    assert float(s(299)) == pytest.approx(0.1, rel=1e-6)  # the peak is at pct_start*total - 1
    assert float(s(2**40)) == pytest.approx(0.1 / 25 / 1e4, rel=1e-6)  # holds the end value


def test_sgdr_formula_restarts_and_large_steps():
    first, t_mul, m_mul, alpha, peak = 10, 2.0, 0.5, 0.1, 0.2

    def formula(step):
        i, start, length = 0, 0, first
        while step >= start + length:
            start += length
            length *= t_mul
            i += 1
        cos = 0.5 * (1 + math.cos(math.pi * (step - start) / length))
        return peak * ((1 - alpha) * m_mul**i * cos + alpha)

    s = CosineDecayRestarts(peak, first, t_mul=t_mul, m_mul=m_mul, alpha=alpha)
    # cycle starts: 0, 10, 30, 70, 150, ..., 10 * (2**k - 1)
    steps = [0, 9, 10, 29, 30, 69, 70, 71, 149, 150, 10 * (2**30 - 1), 10 * (2**30 - 1) - 1]
    assert_close_to_peak(values(s, steps), [formula(t) for t in steps], peak)
    # t_mul=1: cycles of 7 at step ~2**40 land exactly on their restart.
    s1 = CosineDecayRestarts(peak, 7, t_mul=1.0, alpha=alpha)
    n = (2**40 // 7) * 7
    np.testing.assert_allclose(
        values(s1, [n, n + 1, n - 1]),
        [
            peak,
            peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi / 7)) + alpha),
            peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * 6 / 7)) + alpha),
        ],
        rtol=1e-6,
    )


def test_cyclic_formula_at_large_steps():
    base, top, up, down = 0.001, 0.01, 4, 6
    s = Cyclic(base, top, step_size=up, step_size_down=down, mode="triangular")
    n = (2**40 // 10) * 10
    # n: cycle start (base), n + 4: peak, n + 7: half way down.
    np.testing.assert_allclose(
        values(s, [n, n + 4, n + 7]), [base, top, base + (top - base) * 3 / 6], rtol=1e-6
    )
    tri2 = Cyclic(base, top, step_size=up, step_size_down=down, mode="triangular2")
    assert float(tri2(24)) == pytest.approx(base + (top - base) / 4, rel=1e-6)  # 3rd cycle peak


def test_warmup_offsets_and_join_offsets():
    inner = CosineDecay(0.1, decay_steps=100)
    for kind in ("linear", "constant"):
        w = Warmup(inner, warmup_steps=10, initial_learning_rate=0.01, warmup_type=kind)
        during = [0.01 + (0.1 - 0.01) * t / 10 if kind == "linear" else 0.01 for t in range(10)]
        after = [0.1 * 0.5 * (1 + math.cos(math.pi * min(t, 100) / 100)) for t in range(0, 120)]
        assert_close_to_peak(values(w, range(130)), during + after, 0.1)
    j = Join(
        [PiecewiseConstantDecay([0], [0.5, 0.05]), inner, ExponentialDecay(0.2, 10, 0.5)],
        boundaries=[5, 25],
    )
    expected = [0.5] + [0.05] * 4
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * t / 100)) for t in range(20)]
    expected += [0.2 * 0.5 ** (t / 10) for t in range(30)]
    assert_close_to_peak(values(j, range(55)), expected, 0.5)


def test_warmup_zero_equals_keras_cosine_decay_restarts():
    import keras

    keras_s = keras.optimizers.schedules.CosineDecayRestarts(
        0.1, 8, t_mul=1.0, m_mul=0.7, alpha=0.2
    )
    ours = CosineDecayRestarts(0.1, 8, t_mul=1.0, m_mul=0.7, alpha=0.2, warmup_steps=0)
    steps = range(0, 100)
    assert_close_to_peak(values(ours, steps), values(keras_s, steps), 0.1)
    warm = CosineDecayRestarts(0.0, 8, t_mul=1.0, warmup_target=0.1, warmup_steps=4)
    np.testing.assert_allclose(values(warm, [0, 2, 4, 12]), [0.0, 0.05, 0.1, 0.1], atol=1e-8)


def test_natural_exp_and_inverse_time_formulas_at_long_range():
    steps = [0, 9, 10, 11, 10**6, 2**40]
    n = NaturalExpDecay(0.1, 10, 0.5, staircase=True)
    assert_close_to_peak(values(n, steps), [0.1 * math.exp(-0.5 * (t // 10)) for t in steps], 0.1)
    i = InverseTimeDecay(0.1, 10, 0.5)
    assert_close_to_peak(values(i, steps), [0.1 / (1 + 0.5 * t / 10) for t in steps], 0.1)


def test_polynomial_cycle_formula():
    s = PolynomialDecay(0.1, 10, end_learning_rate=0.01, power=2.0, cycle=True)

    def formula(t):
        d = 10 * max(1, math.ceil(t / 10))
        return (0.1 - 0.01) * (1 - t / d) ** 2 + 0.01

    steps = [0, 1, 10, 11, 20, 21, 2**40, 2**40 + 1]
    assert_close_to_peak(values(s, steps), [formula(t) for t in steps], 0.1)


def test_warmup_and_join_wrap_keras_schedules():
    import keras

    inner = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    w = Warmup(inner, warmup_steps=4)
    expected = [0.1 * t / 4 for t in range(4)] + [0.1 * 0.5 ** (t / 10) for t in range(20)]
    assert_close_to_peak(values(w, range(24)), expected, 0.1)
    j = Join([inner, CosineDecay(0.05, 10)], boundaries=[6])
    expected = [0.1 * 0.5 ** (t / 10) for t in range(6)]
    expected += [0.05 * 0.5 * (1 + math.cos(math.pi * min(t, 10) / 10)) for t in range(12)]
    assert_close_to_peak(values(j, range(18)), expected, 0.1)
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(Warmup(j, 3)), safe_mode=True
    )
    assert_close_to_peak(values(clone, range(18)), values(Warmup(j, 3), range(18)), 0.1)


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in (
        "piecewise",
        "exponential",
        "polynomial",
        "cosine",
        "linear_cosine",
        "one_cycle",
        "cyclic",
        "warmup",
        "join",
        "constant",
        "inverse_sqrt",
        "product",
        "warmup_stable_decay",
    ):
        module = importlib.import_module(f"tfkit.schedules.{name}")
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, (name, result)


# --- The schedules added for Hugging Face / PyTorch parity, by formula at far steps.


def _wsd_formula(step, lr, w, s, d, alpha, up, down, cycles):
    f = lambda x: (1 - alpha) * x + alpha  # noqa: E731
    if step < w:
        p = step / w
        x = {
            "linear": p,
            "cosine": 0.5 * (1 - math.cos(math.pi * p)),
            "1-sqrt": 1 - math.sqrt(1 - p),
        }
        return lr * f(x[up])
    if step < w + s:
        return lr
    if step < w + s + d:
        p = (step - w - s) / d
        x = {
            "linear": 1 - p,
            "cosine": 0.5 * (1 + math.cos(2 * math.pi * cycles * p)),
            "1-sqrt": 1 - math.sqrt(p),
        }
        return lr * f(x[down])
    return lr * alpha


@pytest.mark.parametrize("up", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("down", ["linear", "cosine", "1-sqrt"])
def test_warmup_stable_decay_formula_at_phase_edges_and_far_steps(up, down):
    w, s, d = 10**6, 5 * 10**8, 3 * 10**8 + 1
    args = (0.3, w, s, d, 0.02, up, down, 0.7)
    schedule = WarmupStableDecay(*args[:5], warmup_type=up, decay_type=down, num_cycles=0.7)
    steps = [0, 1, w // 2, w - 1, w, w + s - 1, w + s, w + s + 1, w + s + d // 3]
    steps += [w + s + d - 1, w + s + d, w + s + d + 1, 2**40, 2**50]
    expected = [_wsd_formula(k, *args) for k in steps]
    assert_close_to_peak(values(schedule, steps), expected, 0.3)


def test_inverse_sqrt_and_cosine_cycles_formulas_at_far_steps():
    steps = [0, 1, 3, 999, 10**6, 2**31 - 1, 2**40, 2**50]
    s = InverseSqrtDecay(0.2, timescale=1000)
    expected = [0.2 * math.sqrt(1000 / (k + 1000)) for k in steps]
    np.testing.assert_allclose(values(s, steps), expected, rtol=1e-6)
    c = CosineDecay(0.1, 10**9, alpha=0.1, num_cycles=2.5)
    steps = [0, 10**8, 2 * 10**8, 4 * 10**8, 10**9 - 1, 10**9, 2**40]
    expected = [
        0.1 * (0.9 * 0.5 * (1 + math.cos(2 * math.pi * 2.5 * min(k, 10**9) / 10**9)) + 0.1)
        for k in steps
    ]
    assert_close_to_peak(values(c, steps), expected, 0.1)


def test_product_of_warmup_join_and_keras_schedule_formula():
    keras_exp = __import__("keras").optimizers.schedules.ExponentialDecay(1.0, 10, 0.5)
    s = Product([Warmup(Constant(0.1), 4), MultiStepDecay(1.0, [6, 6, 0], 0.5), keras_exp])
    steps = list(range(20))
    expected = [(0.1 * min(k, 4) / 4) * 0.5 ** (1 + 2 * (k >= 6)) * 0.5 ** (k / 10) for k in steps]
    np.testing.assert_allclose(scalar_values(s, steps), expected, rtol=1e-6, atol=1e-12)
