"""MultiStepDecay and Product against PyTorch's MultiStepLR and ChainedScheduler.

Golden values (tests/golden/hf_torch.json, made by make_hf_torch_golden.py
with torch 2.13.0) are PyTorch's learning rate after k calls of
``scheduler.step()``; the formulas below restate PyTorch's documentation.
"""

from __future__ import annotations

import bisect
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.schedules import (
    Constant,
    CosineDecay,
    Cyclic,
    ExponentialDecay,
    Join,
    MultiStepDecay,
    PolynomialDecay,
    Product,
)

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "hf_torch.json").read_text())
RTOL = 1e-6


def values(schedule, steps):
    fn = tf.function(lambda step: schedule(step))
    return np.asarray(fn(tf.constant(list(steps), tf.int64)), np.float64)


def multistep_formula(lr, milestones, gamma, step):
    """lr * gamma ** (milestones <= step, counted with repetition)."""
    return lr * gamma ** bisect.bisect_right(sorted(milestones), step)


@pytest.mark.parametrize("key", sorted(k for k in GOLDEN if k.startswith("torch_multistep_")))
def test_multistep_matches_torch(key):
    case = GOLDEN[key]
    kw = case["kwargs"]
    s = MultiStepDecay(case["base_lr"], kw["milestones"], gamma=kw["gamma"])
    got = values(s, case["steps"])
    np.testing.assert_allclose(got, case["values"], rtol=RTOL)
    expected = [
        multistep_formula(case["base_lr"], kw["milestones"], kw["gamma"], k) for k in case["steps"]
    ]
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    # float64 reproduces PyTorch's float64 to rounding.
    s64 = MultiStepDecay(case["base_lr"], kw["milestones"], gamma=kw["gamma"], dtype="float64")
    np.testing.assert_allclose(values(s64, case["steps"]), case["values"], rtol=1e-12)


def test_multistep_repeated_unsorted_and_zero_milestones():
    s = MultiStepDecay(1.0, [10, 0, 10, 50], gamma=0.5)
    np.testing.assert_allclose(
        values(s, [0, 9, 10, 49, 50, 10**12]), [0.5, 0.5, 0.125, 0.125, 0.0625, 0.0625]
    )
    assert s.get_config()["milestones"] == [10, 0, 10, 50]  # as given
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(s), safe_mode=True
    )
    assert clone.get_config() == s.get_config()


def _factor(cls, kw, lr):
    """tfkit's equivalent of one of PyTorch's multiplicative schedulers (README rows)."""
    if cls == "ConstantLR":
        return Join([Constant(kw["factor"]), Constant(1.0)], [kw["total_iters"]])
    if cls == "ExponentialLR":
        return ExponentialDecay(1.0, 1, kw["gamma"])
    if cls == "LinearLR":
        return PolynomialDecay(
            kw["start_factor"], kw["total_iters"], end_learning_rate=kw["end_factor"]
        )
    if cls == "MultiStepLR":
        return MultiStepDecay(1.0, kw["milestones"], kw["gamma"])
    raise AssertionError(cls)


def _factor_formula(cls, kw, k):
    if cls == "ConstantLR":
        return kw["factor"] if k < kw["total_iters"] else 1.0
    if cls == "ExponentialLR":
        return kw["gamma"] ** k
    if cls == "LinearLR":
        f = min(k, kw["total_iters"]) / kw["total_iters"]
        return kw["start_factor"] + (kw["end_factor"] - kw["start_factor"]) * f
    if cls == "MultiStepLR":
        return multistep_formula(1.0, kw["milestones"], kw["gamma"], k)
    raise AssertionError(cls)


@pytest.mark.parametrize("key", sorted(k for k in GOLDEN if k.startswith("torch_chained_")))
def test_product_matches_chained_scheduler(key):
    case = GOLDEN[key]
    lr = case["base_lr"]
    parts = case["schedulers"]
    s = Product([Constant(lr)] + [_factor(cls, kw, lr) for cls, kw in parts])
    got = values(s, case["steps"])
    np.testing.assert_allclose(got, case["values"], rtol=RTOL)
    expected = [lr * np.prod([_factor_formula(c, kw, k) for c, kw in parts]) for k in case["steps"]]
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_product_is_pointwise_and_keeps_the_first_dtype():
    a = ExponentialDecay(0.1, 10, 0.5, dtype="float64")
    b = Join([Constant(0.5), Constant(1.0)], [3])
    s = Product([a, b])
    steps = range(25)
    np.testing.assert_allclose(values(s, steps), values(a, steps) * values(b, steps), rtol=1e-12)
    assert s(0).dtype == tf.float64
    # A Keras schedule is a valid factor (its peak is unknown, so it is not bounded).
    k = keras.optimizers.schedules.ExponentialDecay(1.0, 5, 0.5)
    np.testing.assert_allclose(float(Product([Constant(0.2), k])(10)), 0.2 * 0.25, rtol=1e-6)


@pytest.mark.parametrize("key", sorted(k for k in GOLDEN if k.startswith("torch_cyclic_momentum_")))
def test_cyclic_momentum_matches_cyclic_lr_cycle_momentum(key):
    """CyclicLR(cycle_momentum=True) == MomentumScheduler(Cyclic(max_momentum, base_momentum, ...))."""
    case = GOLDEN[key]
    kw = case["kwargs"]
    momentum = Cyclic(
        kw["max_momentum"],  # at the cycle's start, where the rate is lowest
        kw["base_momentum"],  # at the rate's peak
        step_size=kw["step_size_up"],
        step_size_down=kw["step_size_down"],
        mode=kw["mode"],
        gamma=kw["gamma"],
    )
    np.testing.assert_allclose(values(momentum, case["steps"]), case["momentum"], rtol=RTOL)


def _readme_row(cls, kw, lr):
    """The tfkit side of README's "Coming from PyTorch" row for ``cls``."""
    if cls == "ConstantLR":
        return Join([Constant(lr * kw["factor"]), Constant(lr)], [kw["total_iters"]])
    if cls == "LinearLR":
        return PolynomialDecay(
            lr * kw["start_factor"], kw["total_iters"], end_learning_rate=lr * kw["end_factor"]
        )
    if cls == "PolynomialLR":
        return PolynomialDecay(lr, kw["total_iters"], end_learning_rate=0.0, power=kw["power"])
    if cls == "CosineAnnealingLR":
        return CosineDecay(lr, kw["T_max"], alpha=kw["eta_min"] / lr)
    raise AssertionError(cls)


@pytest.mark.parametrize("key", sorted(k for k in GOLDEN if k.startswith("torch_row_")))
def test_readme_rows_match_torch(key):
    case = GOLDEN[key]
    cls = case["reference"].rsplit(".", 1)[1]
    lr, kw = case["base_lr"], case["kwargs"]
    got = values(_readme_row(cls, kw, lr), case["steps"])
    expected = np.array(case["values"])
    if cls == "CosineAnnealingLR":
        # Equal up to T_max; then torch's cosine rises again while tfkit holds eta_min.
        n = kw["T_max"] + 1
        np.testing.assert_allclose(got[:n], expected[:n], rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(got[n:], kw["eta_min"], rtol=RTOL)
        assert expected[-1] > kw["eta_min"] + 0.01
        return
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-9)
    if cls == "PolynomialLR":  # the README's point: the default end rate is not 0
        default = PolynomialDecay(lr, kw["total_iters"], power=kw["power"])
        assert float(default(100)) == pytest.approx(1e-4)
