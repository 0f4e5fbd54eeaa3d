"""ReduceLROnPlateau on floats and on any LearningRateSchedule (docs/keras-defects.md#reduce-lr-on-schedule), Keras and PyTorch parity."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.callbacks import ReduceLROnPlateau, ScaledSchedule
from tfkit.optimizers import control, is_controlled

# tests/golden/make_callbacks_golden.py: torch ReduceLROnPlateau(mode="min", factor=0.5,
# patience=1, threshold=0.1, cooldown=0), lr after each step(loss), starting at lr=1.0.
PLATEAU_LOSSES = [10.0, 9.5, 9.2, 8.0, 7.9, 7.8, 7.7, 7.0, 7.0, 6.99, 6.0, 6.0, 6.0, 6.0]
PLATEAU_TORCH_REL = [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.0625, 0.0625]
PLATEAU_TORCH_ABS = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]

DECAY_STEPS, LR0 = 40, 0.1


def numpy_cosine(step):
    """Keras CosineDecay(LR0, DECAY_STEPS, alpha=0) written independently."""
    step = min(step, DECAY_STEPS)
    return LR0 * 0.5 * (1 + math.cos(math.pi * step / DECAY_STEPS))


def _model(lr):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(keras.optimizers.SGD(lr), "mse", jit_compile=True)
    return model


class _Scripted(keras.callbacks.Callback):
    def __init__(self, values, key="val_loss"):
        super().__init__()
        self.values, self.key = values, key

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


def _next_rate(model):
    """The rate the next update would use (tfkit: schedule x multiplier; Keras: the variable)."""
    if is_controlled(model.optimizer):
        (state,) = control(model.optimizer).values()
        return state.learning_rate()
    return float(np.asarray(model.optimizer.learning_rate))


def _drive(callback, model, values):
    """Custom loop: drive ``callback`` through a CallbackList; return the rate after each epoch."""
    callbacks = keras.callbacks.CallbackList([_Scripted(values), callback], model=model)
    callbacks.on_train_begin()
    rates = []
    for epoch in range(len(values)):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {})
        rates.append(_next_rate(model))
    callbacks.on_train_end()
    return rates


@pytest.mark.keras_defect("reduce-lr-on-schedule")
def test_keras_reduce_lr_on_plateau_fails_on_schedule_k4():
    model = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    x, y = np.ones((4, 3), "float32"), np.ones((4, 1), "float32")
    keras_cb = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=0, min_delta=1e9)
    with pytest.raises(TypeError, match="not settable"):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[keras_cb])


@pytest.mark.parametrize("config", [
    pytest.param(dict(patience=0), marks=pytest.mark.slow),
    dict(patience=1, cooldown=2),
    dict(patience=2, min_lr=0.02),
    pytest.param(dict(patience=1, factor=0.5, min_delta=0.05), marks=pytest.mark.slow),
    pytest.param(dict(patience=0, mode="max"), marks=pytest.mark.slow),
], ids=str)
def test_float_rate_same_decisions_as_keras(config):
    values = [1.0, 0.9, 0.95, 0.96, 0.97, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9]
    ours = _drive(ReduceLROnPlateau(**config), _model(0.1), values)
    reference = _drive(keras.callbacks.ReduceLROnPlateau(**config), _model(0.1), values)
    np.testing.assert_allclose(ours, reference, rtol=1e-6)
    assert min(ours) < 0.1 or config.get("mode") == "max"


@pytest.mark.parametrize("mode,golden", [("rel", PLATEAU_TORCH_REL), ("abs", PLATEAU_TORCH_ABS)])
def test_threshold_modes_match_pytorch(mode, golden):
    # PyTorch reduces when bad epochs > patience; Keras (and we) when wait >= patience.
    model = _model(1.0)
    cb = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.1, threshold_mode=mode, mode="min")
    np.testing.assert_allclose(_drive(cb, model, PLATEAU_LOSSES), golden, rtol=1e-6)


def test_on_cosine_schedule_in_fit_scales_effective_rate_every_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    w = model.get_weights()[0].astype("float64")
    # Scripted monitor: improves at epoch 0 only -> with patience=1 reductions at epochs 2, 4.
    values = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    cb = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0)
    model.fit(x, y, batch_size=4, epochs=6, shuffle=False, verbose=0, callbacks=[_Scripted(values), cb])
    assert cb.multiplier == 0.25

    multipliers, m, wait = [], 1.0, 0
    for epoch in range(6):  # Keras' rule written out: wait>=patience -> reduce
        multipliers.append(m)
        wait = 0 if epoch == 0 else wait + 1
        if wait >= 2:
            m, wait = m * 0.5, 0
    assert multipliers == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    k = 0
    for epoch in range(6):
        for i in (0, 4):
            xb, yb = x[i:i + 4].astype("float64"), y[i:i + 4].astype("float64")
            w = w - multipliers[epoch] * numpy_cosine(k) * (2.0 / 4 * xb.T @ (xb @ w - yb))
            k += 1
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-5, atol=1e-6)
    # optimizer.learning_rate is the rate the optimizer applies at its step (12), knobs included.
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.25 * numpy_cosine(12), rtol=1e-6)
    np.testing.assert_allclose(_next_rate(model), 0.25 * numpy_cosine(12), rtol=1e-6)


def test_min_lr_bounds_the_reduction_on_a_schedule():
    model = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    model.optimizer.build(model.trainable_variables)
    cb = ReduceLROnPlateau(factor=0.1, patience=0, min_delta=0.0, min_lr=0.05)
    _drive(cb, model, [1.0, 1.0, 1.0])
    assert cb.multiplier == pytest.approx(0.5)  # 0.1 * 0.5 = 0.05 = min_lr at step 0
    assert _next_rate(model) == pytest.approx(0.05)


def test_multiplier_saved_and_restored(tmp_path):
    model = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    model.optimizer.build(model.trainable_variables)
    cb = ReduceLROnPlateau(factor=0.5, patience=0, min_delta=0.0)
    callbacks = keras.callbacks.CallbackList([_Scripted([1.0, 1.0, 1.0, 1.0]), cb], model=model)
    callbacks.on_train_begin()
    for epoch in range(3):
        callbacks.on_epoch_end(epoch, {})
    assert cb.multiplier == 0.25
    # 1) A .keras file: the config wraps the optimizer's own schedule, and loads back (in
    #    safe mode) as that plain schedule; the multiplier is state, not configuration.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.optimizer.get_config()["learning_rate"]["class_name"] == "CosineDecay"
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    # 2) tf.train.Checkpoint of the optimizer carries the multiplier.
    opt_ckpt = tf.train.Checkpoint(optimizer=model.optimizer).write(str(tmp_path / "opt"))
    (state,) = control(loaded.optimizer).values()
    tf.train.Checkpoint(optimizer=loaded.optimizer).read(opt_ckpt).expect_partial()
    assert float(state.learning_rate_multiplier.numpy()) == 0.25
    # 3) The callback state resumes the counters; the multiplier has one home, the
    #    optimizer's state (BackupAndRestore carries both).
    ckpt = tf.train.Checkpoint(plateau=cb.state).save(str(tmp_path / "ckpt"))
    model2 = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    model2.optimizer.build(model2.trainable_variables)
    control(model2.optimizer)
    tf.train.Checkpoint(optimizer=model2.optimizer).read(opt_ckpt).expect_partial()
    cb2 = ReduceLROnPlateau(factor=0.5, patience=0, min_delta=0.0)
    tf.train.Checkpoint(plateau=cb2.state).restore(ckpt).assert_consumed()
    keras.callbacks.CallbackList([cb2], model=model2).on_train_begin()
    assert cb2.multiplier == 0.25 and cb2.best == 1.0
    assert _next_rate(model2) == pytest.approx(0.25 * LR0)


def test_scaled_schedule_contract():
    base = keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS)
    s = ScaledSchedule(base, 0.5)
    for step in (0, 7, 40, 2**40):
        np.testing.assert_allclose(float(s(step)), 0.5 * numpy_cosine(step), rtol=1e-6, atol=1e-12)
    restored = ScaledSchedule.from_config(s.get_config())
    assert float(restored(3)) == pytest.approx(float(s(3)))
    with pytest.raises(ValueError, match="multiplier"):
        ScaledSchedule(base, 0.0)
    with pytest.raises(TypeError, match="schedule"):
        ScaledSchedule(0.1)

    @tf.function(jit_compile=True)
    def read(step):
        return s(step)

    a = float(read(tf.constant(5)))
    s.multiplier.assign(0.25)
    assert float(read(tf.constant(5))) == pytest.approx(a / 2)
    assert read.experimental_get_tracing_count() == 1


def test_bad_input():
    for factor in (1.0, 1.5, 0.0, -0.5):
        with pytest.raises(ValueError, match=f"factor={factor}"):
            ReduceLROnPlateau(factor=factor)
    with pytest.raises(ValueError, match="patience"):
        ReduceLROnPlateau(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        ReduceLROnPlateau(mode="down")
    with pytest.raises(ValueError, match="threshold_mode"):
        ReduceLROnPlateau(threshold_mode="percent")
    with pytest.raises(ValueError, match="cooldown"):
        ReduceLROnPlateau(cooldown=-2)
    with pytest.raises(ValueError, match="min_lr"):
        ReduceLROnPlateau(min_lr=-1.0)
    cb = ReduceLROnPlateau(monitor="val_los")
    with pytest.warns(UserWarning, match="val_los.*Available keys"):
        _drive(cb, _model(0.1), [1.0])


def test_config_round_trip():
    cb = ReduceLROnPlateau(monitor="loss", factor=0.3, threshold_mode="rel", cooldown=2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cb), safe_mode=True)
    assert restored.get_config() == cb.get_config()


def test_on_schedule_in_custom_jit_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    w = model.get_weights()[0].astype("float64")
    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=0.0)
    callbacks = keras.callbacks.CallbackList([cb], model=model)

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    callbacks.on_train_begin()  # installs the control plane before the first trace
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        for i in (0, 4):
            step(x[i:i + 4], y[i:i + 4])
        callbacks.on_epoch_end(epoch, {"loss": 1.0})  # flat: reduce at epochs 1 and 2
    callbacks.on_train_end()
    assert step.experimental_get_tracing_count() == 1 and cb.multiplier == 0.25
    k = 0
    for multiplier in (1.0, 1.0, 0.5):
        for i in (0, 4):
            xb, yb = x[i:i + 4].astype("float64"), y[i:i + 4].astype("float64")
            w = w - multiplier * numpy_cosine(k) * (2.0 / 4 * xb.T @ (xb @ w - yb))
            k += 1
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-5, atol=1e-6)


def test_callback_after_a_plain_fit_uses_the_wrapper():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model = _model(keras.optimizers.schedules.CosineDecay(LR0, DECAY_STEPS))
    w = model.get_weights()[0].astype("float64")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # traced with the bare schedule
    cb = ReduceLROnPlateau(factor=0.5, patience=0, min_delta=0.0)
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[_Scripted([1.0] * 3), cb])
    k = 0
    # Plain epoch; then epoch 0 sets `best`, epochs 1 and 2 reduce after their steps ran.
    for multiplier in (1.0, 1.0, 1.0, 0.5):
        for i in (0, 4):
            xb, yb = x[i:i + 4].astype("float64"), y[i:i + 4].astype("float64")
            w = w - multiplier * numpy_cosine(k) * (2.0 / 4 * xb.T @ (xb @ w - yb))
            k += 1
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-5, atol=1e-6)


def numpy_one_cycle(step, max_lr=0.1, total=12, pct_start=0.3, div=25.0, final_div=1e4):
    """PyTorch OneCycleLR (two phases, cos) written independently."""
    initial, minimum = max_lr / div, max_lr / div / final_div
    end1 = pct_start * total - 1
    step = min(step, total - 1)

    def cos_anneal(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    if step <= end1:
        return cos_anneal(initial, max_lr, step / end1)
    return cos_anneal(max_lr, minimum, (step - end1) / (total - 1 - end1))


def test_on_one_cycle_through_gradient_accumulator_in_fit():
    """Plateau multiplier on OneCycle, with the schedule stepped by real updates (k=2)."""
    from tfkit.optimizers import GradientAccumulator
    from tfkit.schedules import OneCycle

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(GradientAccumulator(keras.optimizers.SGD(OneCycle(0.1, 12)), 2), "mse")
    w = model.get_weights()[0].astype("float64")
    cb = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0)
    model.fit(x, y, batch_size=2, epochs=6, shuffle=False, verbose=0,
              callbacks=[_Scripted([1.0] * 6), cb])
    assert cb.multiplier == 0.25
    multipliers = [1.0, 1.0, 1.0, 0.5, 0.5, 0.25]  # as in the cosine test above
    k = 0
    for epoch in range(6):
        for i in (0, 4):  # two real updates an epoch, each the mean over 2 micro-batches of 2
            xb, yb = x[i:i + 4].astype("float64"), y[i:i + 4].astype("float64")
            w = w - multipliers[epoch] * numpy_one_cycle(k) * (2.0 / 4 * xb.T @ (xb @ w - yb))
            k += 1
    np.testing.assert_allclose(model.get_weights()[0], w, rtol=1e-5, atol=1e-6)
