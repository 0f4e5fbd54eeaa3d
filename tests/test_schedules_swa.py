"""SWALR against torch.optim.swa_utils.SWALR (goldens), an independent formula, Join and fit."""

from __future__ import annotations

import json
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.schedules import SWALR, CosineDecay, Join

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "swa.json").read_text())


@pytest.mark.parametrize(
    "case", GOLDEN["swalr"], ids=lambda c: f"{c['anneal_strategy']}-{c['anneal_epochs']}"
)
def test_matches_torch_swalr(case):
    s = SWALR(case["lr"], case["swa_lr"], case["anneal_epochs"], case["anneal_strategy"])
    got = [float(s(t)) for t in range(len(case["values"]))]
    np.testing.assert_allclose(got, case["values"], rtol=1e-6)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_independent_formula_float64(strategy):
    s = SWALR(0.3, 0.02, anneal_steps=37, anneal_strategy=strategy, dtype="float64")
    for t in (0, 1, 5, 18, 36, 37, 38, 10**6):
        f = min(t, 37) / 37
        alpha = (1 - math.cos(math.pi * f)) / 2 if strategy == "cos" else f
        assert float(s(t)) == pytest.approx(0.02 * alpha + 0.3 * (1 - alpha), rel=1e-12)


def test_join_after_a_decay_and_fit_use_it_per_real_update():
    schedule = Join([CosineDecay(0.1, 6, alpha=0.5), SWALR(0.05, 0.01, 4, "linear")], boundaries=[6])
    expected = [0.1 * (0.5 + 0.5 * (1 + math.cos(math.pi * t / 6)) / 2) for t in range(6)]
    expected += [0.05 + (0.01 - 0.05) * min(t, 4) / 4 for t in range(6)]
    np.testing.assert_allclose([float(schedule(t)) for t in range(12)], expected, rtol=1e-6)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(keras.optimizers.SGD(schedule), "mse", jit_compile=True)
    seen = []

    class Rate(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(schedule(self.model.optimizer.iterations)))

    model.fit(np.ones((12, 1)), np.ones((12, 1)), batch_size=1, verbose=0, callbacks=[Rate()])
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_xla_scalar_step_matches_eager():
    s = SWALR(0.1, 0.001, anneal_steps=1000)
    fn = tf.function(lambda t: s(t), jit_compile=True)
    for t in (0, 999, 2**40):
        assert float(fn(tf.constant(t, tf.int64))) == pytest.approx(float(s(t)), rel=1e-7)
