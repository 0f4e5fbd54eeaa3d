"""EarlyStopping takes keras.callbacks.EarlyStopping's decisions on every scripted sequence.

Hypothesis writes the sequences: float32 losses (as ``fit`` logs them) that
sit at ``min_delta`` steps from each other give or take a few float32 ulps
(the near-ties on which a float64 comparison and Keras' float32 one part),
with baselines, ``start_from_epoch``, patience and both modes. Keras' own
callback is the reference: same stop epoch, best, best epoch and restored
weights. The one deliberate difference (stop on a non-finite value) is
switched off here with ``stop_on_nonfinite=False``, and tested apart.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfkit.callbacks import EarlyStopping

EXAMPLES = 200 if os.environ.get("TFKIT_FULL") == "1" else 25

_MODEL = None


def model():
    global _MODEL
    if _MODEL is None:
        _MODEL = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        _MODEL.compile(keras.optimizers.SGD(0.01), "mse")
    return _MODEL


def drive(callback, values):
    """A custom loop through a CallbackList; the kernel marks the epoch (kernel == epoch + 1)."""
    m = model()
    m.stop_training = False
    callbacks = keras.callbacks.CallbackList([callback], model=m)
    callbacks.on_train_begin()
    epochs = 0
    for epoch, value in enumerate(values):
        callbacks.on_epoch_begin(epoch)
        m.layers[0].kernel.assign(np.full((2, 1), epoch + 1.0, "float32"))
        callbacks.on_epoch_end(epoch, {"val_loss": value})
        epochs += 1
        if m.stop_training:
            break
    callbacks.on_train_end()
    return epochs, float(m.layers[0].kernel.numpy()[0, 0])


def near_ties(min_delta):
    """float32 values k * min_delta apart, each nudged by a few float32 ulps."""

    def build(parts):
        start, steps = parts
        values, x = [], np.float32(start)
        for k, ulps in steps:
            x = np.float32(x - np.float32(k * min_delta))
            y = x
            for _ in range(abs(ulps)):
                y = np.nextafter(y, np.float32(np.inf if ulps > 0 else -np.inf))
            values.append(float(y))  # fit logs Python floats of float32 values
        return values

    step = st.tuples(st.integers(-1, 2), st.integers(-3, 3))
    return st.tuples(
        st.floats(0.5, 4.0, width=32), st.lists(step, min_size=2, max_size=9)
    ).map(build)


CONFIG = st.fixed_dictionaries(
    {
        "min_delta": st.sampled_from([0.0, 0.01, 0.1, 1e-7, 0.25]),
        "patience": st.integers(0, 3),
        "mode": st.sampled_from(["min", "max", "auto"]),
        "start_from_epoch": st.integers(0, 2),
        "restore_best_weights": st.booleans(),
        "baseline": st.one_of(st.none(), st.floats(0.5, 4.0, width=32)),
    }
)


def assert_same(config, values):
    ours = EarlyStopping(**config, stop_on_nonfinite=False)
    ref = keras.callbacks.EarlyStopping(**config)
    got, expected = drive(ours, values), drive(ref, values)
    assert got == expected, (config, values)
    assert ours.stopped_epoch == ref.stopped_epoch, (config, values)
    assert ours.best_epoch == ref.best_epoch, (config, values)
    assert ours.wait == ref.wait, (config, values)
    assert (ours.best is None) == (ref.best is None)
    if ref.best is not None:
        assert ours.best == float(ref.best), (config, values)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_same_decisions_as_keras_on_near_ties(data):
    config = data.draw(CONFIG)
    values = data.draw(near_ties(config["min_delta"] or 0.01))
    if config["mode"] == "max":
        values = [-v for v in values]
        if config["baseline"] is not None:
            config["baseline"] = -config["baseline"]
    assert_same(config, values)


def test_known_near_tie_falls_as_in_keras():
    # 1.0 then float32(0.9) = 0.89999998: in float64 that beats 1.0 - 0.1 = 0.9;
    # Keras' float32 sum 0.89999998 + 0.1 rounds to 1.0, which is not < 1.0.
    values = [1.0, float(np.float32(0.9)), 1.0, 1.0]
    for patience in (0, 1):
        config = dict(min_delta=0.1, patience=patience, mode="min", start_from_epoch=0,
                      restore_best_weights=True, baseline=None)
        assert_same(config, values)
        es = EarlyStopping(**config)
        drive(es, values)
        assert es.best == 1.0 and es.best_epoch == 0


def test_numpy_and_infinite_values_as_in_keras():
    config = dict(min_delta=0.01, patience=1, mode="min", start_from_epoch=0,
                  restore_best_weights=True, baseline=None)
    assert_same(config, [np.float64(1.0), np.float64(0.99), np.float64(0.98)])
    assert_same(config, [np.float32(1.0), np.float32(0.99), np.float32(0.98)])
    assert_same(config, [1.0, -math.inf, 0.5, 0.5])  # Keras takes -inf as the best
    assert_same(config, [1.0, math.nan, 0.5, 0.5, 0.5])


def test_deliberate_difference_stop_on_nonfinite():
    ours = EarlyStopping(patience=5, restore_best_weights=True)  # stop_on_nonfinite=True
    ref = keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    values = [1.0, 0.5, math.nan, 0.4, 0.3]
    assert drive(ours, values) == (3, 2.0)  # stopped at the NaN, best (epoch 1) restored
    assert drive(ref, values) == (5, 5.0)  # Keras runs on


@pytest.mark.parametrize("start_from_epoch", [0, 2])
def test_baseline_and_start_from_epoch_rules(start_from_epoch):
    for baseline in (0.5, 2.0):
        assert_same(
            dict(min_delta=0.0, patience=1, mode="min", start_from_epoch=start_from_epoch,
                 restore_best_weights=True, baseline=baseline),
            [3.0, 1.0, 0.9, 0.8, 0.7, 0.45, 0.45, 0.45],
        )
