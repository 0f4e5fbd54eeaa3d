"""BatchNormalization under gradient accumulation: windows follow the accumulator, NaN never lands.

* ``accumulation_steps=None`` (default) takes the ``k`` of the model's
  ``GradientAccumulator`` at the first train step of ``TrainStep`` or of
  ``fit`` after ``install``; an explicit value that disagrees raises there.
* A micro-batch with non-finite values (dropped by the accumulator) adds
  nothing to the window or the moving statistics, for tfkit's layer and for
  Keras' own under ``TrainStep``/``install``.

The reference is a NumPy formula: Keras' moving-average update for one batch
holding the window's finite micro-batches.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfkit
from tfkit.layers import BatchNormalization
from tfkit.training import TrainStep, install

MOMENTUM = 0.9
RNG = np.random.default_rng(7)


def model(layer):
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(layer(inputs))
    return keras.Model(inputs, outputs)


def micro_batches(n, size=4):
    return [RNG.normal(2.0, 3.0, size=(size, 3)).astype("float32") for _ in range(n)]


def reference(windows):
    """Keras' update once per window, from that window's finite rows (biased variance)."""
    mean, var = np.zeros(3), np.ones(3)
    for window in windows:
        rows = np.concatenate([b for b in window if np.all(np.isfinite(b))])
        mean = MOMENTUM * mean + (1 - MOMENTUM) * rows.mean(axis=0)
        var = MOMENTUM * var + (1 - MOMENTUM) * rows.var(axis=0)
    return mean, var


def statistics(layer):
    return np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)


def run_train_step(layer, batches, k, jit_compile=False):
    m = model(layer)
    optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(0.01), k)
    step = TrainStep(m, "mse", optimizer, jit_compile=jit_compile)
    for x in batches:
        step(x, np.zeros((len(x), 1), "float32"))
    return m, optimizer


@pytest.mark.parametrize("jit_compile", [False, True])
def test_unset_steps_follow_the_accumulator_in_train_step(jit_compile):
    batches = micro_batches(12)
    layer = BatchNormalization(momentum=MOMENTUM)
    run_train_step(layer, batches, k=4, jit_compile=jit_compile)
    assert layer.accumulation_steps is None and layer.window_steps == 4
    expected = reference([batches[i : i + 4] for i in range(0, 12, 4)])
    np.testing.assert_allclose(statistics(layer), expected, rtol=1e-5)


def test_unset_steps_follow_the_accumulator_in_fit_with_install():
    batches = micro_batches(8)
    layer = BatchNormalization(momentum=MOMENTUM)
    m = install(model(layer))
    m.compile(tfkit.GradientAccumulator(keras.optimizers.SGD(0.01), 2), "mse")
    x = np.concatenate(batches)
    m.fit(x, np.zeros((len(x), 1), "float32"), batch_size=4, shuffle=False, verbose=0)
    expected = reference([batches[i : i + 2] for i in range(0, 8, 2)])
    np.testing.assert_allclose(statistics(layer), expected, rtol=1e-5)


def test_explicit_steps_that_disagree_raise_at_the_first_step():
    batches = micro_batches(1)
    with pytest.raises(ValueError, match="`accumulation_steps` must be the model's"):
        run_train_step(BatchNormalization(accumulation_steps=2), batches, k=4)
    m = install(model(BatchNormalization(accumulation_steps=3)))
    m.compile(tfkit.GradientAccumulator(keras.optimizers.SGD(0.01), 2), "mse")
    with pytest.raises(ValueError, match=r"received accumulation_steps=3"):
        m.fit(batches[0], np.zeros((4, 1)), verbose=0)
    # The matching value works.
    run_train_step(BatchNormalization(accumulation_steps=4), batches, k=4)


def test_plain_fit_without_install_keeps_keras_behaviour_when_unset():
    batches = micro_batches(2)
    layer = BatchNormalization(momentum=MOMENTUM)
    m = model(layer)
    m.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.concatenate(batches)
    m.fit(x, np.zeros((8, 1)), batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(statistics(layer), reference([[b] for b in batches]), rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_nan_micro_batch_adds_no_statistics_tfkit_layer(jit_compile):
    batches = micro_batches(6)
    batches[1][2, 0] = np.nan  # one NaN row in the 2nd micro-batch of window 1
    batches[5][0, :] = np.inf  # and the last micro-batch of window 3 (closes it)
    layer = BatchNormalization(momentum=MOMENTUM)
    _, optimizer = run_train_step(layer, batches, k=2, jit_compile=jit_compile)
    assert int(optimizer.dropped_micro_batches) == 2
    mean, var = statistics(layer)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))
    expected = reference([batches[0:2], batches[2:4], batches[4:6]])
    np.testing.assert_allclose((mean, var), expected, rtol=1e-5)


def test_nan_micro_batch_adds_no_statistics_keras_layer_under_install():
    batches = micro_batches(4)
    batches[2][1, 1] = np.nan
    layer = keras.layers.BatchNormalization(momentum=MOMENTUM)
    m = install(model(layer))
    m.compile(tfkit.GradientAccumulator(keras.optimizers.SGD(0.01), 2), "mse")
    x = np.concatenate(batches)
    m.fit(x, np.zeros((16, 1), "float32"), batch_size=4, shuffle=False, verbose=0)
    mean, var = statistics(layer)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var))
    # Keras' layer updates per micro-batch: every finite one, the NaN one skipped.
    expected = reference([[b] for b in batches if np.all(np.isfinite(b))])
    np.testing.assert_allclose((mean, var), expected, rtol=1e-5)
    assert all(np.all(np.isfinite(w)) for w in m.get_weights())


def test_config_keeps_none_and_round_trips():
    layer = BatchNormalization()
    assert layer.get_config()["accumulation_steps"] is None
    clone = BatchNormalization.from_config(layer.get_config())
    assert clone.accumulation_steps is None
    for bad, exc in ((0, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)):
        with pytest.raises(exc, match="`accumulation_steps`"):
            BatchNormalization(accumulation_steps=bad)
