"""NaNGuard names the layer that produced the non-finite value; UpdateRatioMonitor measures ||dw||/||w||."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.callbacks import NaNGuard, UpdateRatioMonitor

# Outside the model on purpose: restoring the model's weights must not turn it off.
_SWITCH = tf.Variable(0.0, trainable=False)


@keras.saving.register_keras_serializable(package="tfkit_tests")
class Switchable(keras.layers.Layer):
    """Identity until the switch is on, then multiplies its input by +inf (a layer made to produce inf)."""

    def call(self, x):
        factor = tf.where(_SWITCH > 0, tf.constant(np.inf, x.dtype), tf.constant(1.0, x.dtype))
        return x * factor


@keras.saving.register_keras_serializable(package="tfkit_tests")
class SqrtLayer(keras.layers.Layer):
    """Finite forward (sqrt(|0|) = 0), NaN backward at 0 (inf * sign(0)): a gradient-only origin."""

    def call(self, x):
        return tf.sqrt(tf.abs(x))


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def _switch_model(functional=False):
    if functional:
        inputs = keras.Input((3,))
        h = keras.layers.Dense(4, name="dense_in")(inputs)
        h = Switchable(name="switch")(h)
        outputs = keras.layers.Dense(1, name="dense_out")(h)
        return keras.Model(inputs, outputs)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense_in"),
                             Switchable(name="switch"), keras.layers.Dense(1, name="dense_out")])


class _BlowUpAt(keras.callbacks.Callback):
    """Turns the switch on before global batch ``at``; records weights after every batch."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen, self.weights = at, 0, []

    def on_train_batch_begin(self, batch, logs=None):
        if self.seen == self.at:
            _SWITCH.assign(1.0)

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        self.weights.append([w.copy() for w in self.model.get_weights()])


@pytest.mark.parametrize("functional", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fit_names_forward_origin_stops_and_restores(functional):
    x, y = _data()
    _SWITCH.assign(0.0)
    model = _switch_model(functional)
    model.compile(keras.optimizers.Adam(0.01), "mse", jit_compile=True)
    blow = _BlowUpAt(at=5)  # epoch 1, batch 1 (4 batches per epoch)
    guard = NaNGuard(diagnosis_data=(x[:4], y[:4]))
    with pytest.warns(UserWarning, match="First layer with a non-finite output: 'switch'"):
        history = model.fit(x, y, batch_size=4, epochs=5, verbose=0, callbacks=[blow, guard])
    report = guard.report
    assert report["epoch"] == 1 and report["batch"] == 1
    assert report["forward_origin"] == "switch" and report["input_finite"]
    assert "dense_in" in report["gradient_layers"] and report["restored"]
    assert len(history.history["loss"]) == 2  # stopped cleanly in epoch 1
    # Weights now equal those after the last good batch (global batch 4), before the switch.
    _SWITCH.assign(0.0)
    for got, want in zip(model.get_weights(), blow.weights[4], strict=True):
        np.testing.assert_array_equal(got, want)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # Optimizer state rolled back too: one update per good batch.
    assert int(model.optimizer.iterations) == 5


def test_gradient_only_origin_custom_loop():
    x = np.abs(_data()[0])
    y = np.ones((16, 1), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="dense_in", kernel_initializer="zeros"),
                              SqrtLayer(name="sqrt"), keras.layers.Dense(1, name="dense_out")])
    optimizer = keras.optimizers.SGD(0.1)
    model.compile(optimizer, "mse")
    optimizer.build(model.trainable_variables)
    guard = NaNGuard(diagnosis_data=(x[:4], y[:4]))
    callbacks = keras.callbacks.CallbackList([guard], model=model)

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    before = [w.copy() for w in model.get_weights()]
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    with pytest.warns(UserWarning, match="backprop origin: 'sqrt'"):
        for b in range(4):
            callbacks.on_train_batch_begin(b)
            loss = step(x[4 * b:4 * b + 4], y[4 * b:4 * b + 4])
            callbacks.on_train_batch_end(b, {"loss": loss})
            if model.stop_training:
                break
    report = guard.report
    # The loss was finite; the zero pre-activation made sqrt's backward infinite -> NaN in dense_in.
    assert report["batch"] == 0 and np.isfinite(report["loss"])
    assert report["forward_origin"] is None and report["gradient_origin"] == "sqrt"
    assert report["weight_layers"] == ["dense_in"] and report["gradient_layers"] == ["dense_in"]
    # Failure at the very first batch: the state at on_train_begin is restored.
    assert report["restored"] and report["diagnosed_at"] == "last good weights"
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_no_false_alarm_and_bad_input():
    x, y = _data()
    _SWITCH.assign(0.0)
    model = _switch_model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    guard = NaNGuard()
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[guard])
    assert guard.report is None and len(history.history["loss"]) == 2
    with pytest.raises(TypeError, match="diagnosis_data"):
        NaNGuard(diagnosis_data=x)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(guard), safe_mode=True)
    assert restored.get_config() == guard.get_config()


def numpy_update_ratios(x, y, w0, b0, lr):
    """One SGD step on Dense(1) under MSE: ||dW||/||W|| with kernel and bias as one vector."""
    xb, yb = x.astype("float64"), y.astype("float64")
    err = xb @ w0 + b0 - yb
    gw, gb = 2.0 / len(xb) * xb.T @ err, 2.0 / len(xb) * err.sum(0)
    delta = np.sqrt(np.sum((lr * gw) ** 2) + np.sum((lr * gb) ** 2))
    return delta / np.sqrt(np.sum(w0 ** 2) + np.sum(b0 ** 2))


def test_update_ratio_matches_formula_in_fit_and_warns():
    x, y = _data(8)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="out", bias_initializer="ones")])
    model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=True)
    w0, b0 = (w.astype("float64") for w in model.get_weights())
    monitor = UpdateRatioMonitor(frequency=1, low=1e-5, high=1e-2)
    with pytest.warns(UserWarning, match="layer 'out'.*large"):
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    expected = numpy_update_ratios(x, y, w0, b0, 0.5)
    assert expected > 1e-2
    np.testing.assert_allclose(history.history["update_ratio/out"], [expected], rtol=1e-5)
    assert monitor.history[0]["out"] == pytest.approx(expected, rel=1e-5)


def test_update_ratio_custom_loop_frequency():
    x, y = _data(16)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(1, name="b")])
    optimizer = keras.optimizers.SGD(1e-3)
    model.compile(optimizer, "mse")
    monitor = UpdateRatioMonitor(frequency=2, per_batch=True)
    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList([monitor, history], model=model)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb) - yb))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    for b in range(4):
        callbacks.on_train_batch_begin(b)
        callbacks.on_train_batch_end(b, {"loss": step(x[4 * b:4 * b + 4], y[4 * b:4 * b + 4])})
    callbacks.on_epoch_end(0, {})
    assert [h["batch"] for h in monitor.history] == [0, 2]
    ratios = np.array([[h["a"], h["b"]] for h in monitor.history])
    assert np.all((ratios > 1e-6) & (ratios < 1e-2))  # lr 1e-3: small but non-zero updates
    np.testing.assert_allclose(history.history["update_ratio/a"], [ratios[:, 0].mean()], rtol=1e-6)


def test_update_ratio_bad_input_and_config():
    with pytest.raises(ValueError, match="frequency"):
        UpdateRatioMonitor(frequency=0)
    with pytest.raises(ValueError, match="high"):
        UpdateRatioMonitor(low=1e-2, high=1e-3)
    with pytest.raises(TypeError, match="frequency"):
        UpdateRatioMonitor(frequency=2.5)
    m = UpdateRatioMonitor(frequency=3, low=1e-6, high=1.0, per_batch=True)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m), safe_mode=True)
    assert restored.get_config() == m.get_config()
