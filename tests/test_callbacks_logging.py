"""HyperparameterLogger: the rate and momentum actually used, loss scale and skips, in History/CSV."""

from __future__ import annotations

import csv
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkit
from tfkit.callbacks import HyperparameterLogger, MomentumScheduler, ReduceLROnPlateau
from tfkit.callbacks.hyperparameter_logger import ACCUMULATOR_ATTRIBUTES, DEFAULT_CHAIN_ATTRIBUTES

DECAY_STEPS, LR0 = 20, 0.1


def numpy_cosine(step):
    step = min(step, DECAY_STEPS)
    return LR0 * 0.5 * (1 + math.cos(math.pi * step / DECAY_STEPS))


def numpy_momentum(step):
    """PolynomialDecay(0.95 -> 0.85 over 10 steps, power 1), written independently."""
    return 0.95 + (0.85 - 0.95) * min(step, 10) / 10


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def test_history_and_csv_show_rate_and_momentum_used(tmp_path):
    x, y = _data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS), momentum=0.9),
                  "mse", jit_compile=True, steps_per_execution=2)
    momentum = keras.optimizers.schedules.PolynomialDecay(0.95, 10, end_learning_rate=0.85)
    csv_path = tmp_path / "log.csv"
    # Logger before CSVLogger: it writes into `logs` before CSVLogger reads them.
    history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[
        MomentumScheduler(momentum), HyperparameterLogger(), keras.callbacks.CSVLogger(str(csv_path))])
    last_steps = [4, 8, 12]  # the optimizer's step at each epoch end (4 updates per epoch)
    np.testing.assert_allclose(history.history["learning_rate"], [numpy_cosine(k) for k in last_steps], rtol=1e-6)
    np.testing.assert_allclose(history.history["momentum"], [numpy_momentum(k) for k in last_steps], rtol=1e-6)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], history.history["learning_rate"], rtol=1e-6)
    np.testing.assert_allclose([float(r["momentum"]) for r in rows], history.history["momentum"], rtol=1e-6)


def test_rate_includes_plateau_multiplier():
    x, y = _data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS)), "mse")
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[
        HyperparameterLogger(), ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)])
    # Epoch 0 sets `best`; epochs 1 and 2 reduce *after* the logger ran (logger first),
    # which reads the rate at the optimizer's step (2, 4, 6 updates done).
    expected = [numpy_cosine(2), 1.0 * numpy_cosine(4), 0.5 * numpy_cosine(6)]
    np.testing.assert_allclose(history.history["learning_rate"], expected, rtol=1e-6)
    np.testing.assert_allclose(history.history["beta_1"], [0.9] * 3, rtol=1e-7)


def test_loss_scale_and_per_batch_logs():
    x, y = _data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01), initial_scale=1024.0)
    model.compile(optimizer, "mse")
    batches = []

    class Collect(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batches.append(dict(logs))

    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                        callbacks=[HyperparameterLogger(per_batch=True), Collect()])
    assert history.history["dynamic_scale"] == [1024.0]  # Keras' LSO exposes `dynamic_scale`
    assert len(batches) == 4 and all(b["learning_rate"] == pytest.approx(0.01) for b in batches)
    assert all("dynamic_scale" in b for b in batches)


class _FakeScaler(keras.optimizers.LossScaleOptimizer):
    """Stand-in for tfkit.precision.LossScaleOptimizer's read-only attributes."""

    @property
    def loss_scale(self):
        return self.dynamic_scale

    @property
    def skipped_steps(self):
        return tf.constant(3, tf.int64)


def test_chain_attributes_found_through_wrappers_custom_loop():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    optimizer = _FakeScaler(keras.optimizers.RMSprop(0.02, momentum=0.5), initial_scale=64.0)
    model.compile(optimizer, "mse")
    optimizer.build(model.trainable_variables)
    logger, history = HyperparameterLogger(prefix="opt/"), keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList([logger, history], model=model)
    callbacks.on_train_begin()
    callbacks.on_epoch_end(0, {"loss": 1.0})
    logs = {key: values[-1] for key, values in history.history.items()}
    assert logs["opt/loss_scale"] == 64.0 and logs["opt/skipped_steps"] == 3.0
    assert "opt/dynamic_scale" not in logs  # same number as loss_scale, logged once
    assert logs["opt/learning_rate"] == pytest.approx(0.02) and logs["opt/momentum"] == pytest.approx(0.5)


def test_bad_input_and_config():
    with pytest.raises(TypeError, match="per_batch"):
        HyperparameterLogger(per_batch="yes")
    with pytest.raises(TypeError, match="chain_attributes"):
        HyperparameterLogger(chain_attributes="loss_scale")
    cb = HyperparameterLogger(per_batch=True, chain_attributes=["loss_scale"], prefix="x/")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cb), safe_mode=True)
    assert restored.get_config() == cb.get_config()


def test_gradient_accumulator_state_logged():
    from tfkit.optimizers import GradientAccumulator

    x, y = _data(12)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    optimizer = GradientAccumulator(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS),
                                                         momentum=0.9), accumulation_steps=4)
    model.compile(optimizer, "mse")
    # The window's counters are bookkeeping, not metrics: logged only when asked for.
    assert "micro_step" not in tfkit.callbacks.hyperparameter_logger.DEFAULT_CHAIN_ATTRIBUTES
    logger = HyperparameterLogger(chain_attributes=DEFAULT_CHAIN_ATTRIBUTES + ACCUMULATOR_ATTRIBUTES)
    callbacks = keras.callbacks.CallbackList([logger], model=model)
    callbacks.on_train_begin()
    assert "micro_step" not in logger.values()  # unbuilt accumulator: skipped, no error
    # 3 micro-batches per epoch, 4 per update: epoch ends at micro-steps 3, 2 (after 1 update), 1 (2 updates).
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[logger])
    assert history.history["micro_step"] == [3.0, 2.0, 1.0]
    assert history.history["accumulation_steps"] == [4.0] * 3
    assert history.history["dropped_micro_batches"] == [0.0] * 3
    # Real updates so far: 0, 1, 2 -> the rate at that step of the inner optimizer.
    np.testing.assert_allclose(history.history["learning_rate"],
                               [numpy_cosine(0), numpy_cosine(1), numpy_cosine(2)], rtol=1e-6)
