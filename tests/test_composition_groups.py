"""Parameter groups composed with every other tfkit piece, in fit and in a custom loop.

One recipe: Keras ``MultiOptimizer`` (backbone Adam on a OneCycle schedule,
head SGD at a fixed rate) inside ``LossScaleOptimizer(GradientAccumulator(.,
k=2))``, a ``Recompute`` block, the momentum and plateau callbacks of the
control plane, XLA. Each variant must equal its reference (float32, rtol 2e-5):

* recompute on == recompute off;
* 2 micro-batches of ``b`` (ragged last window included) == 1 batch of ``2b``
  with ``k=1`` (weighted windows through the loss scaler);
* ``model.fit`` after ``tfkit.training.install`` == a ``TrainStep`` loop.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfkit
from tfkit.callbacks import HyperparameterLogger, MomentumScheduler, ReduceLROnPlateau

if not hasattr(keras.optimizers, "MultiOptimizer"):
    pytest.skip(
        f"keras.optimizers.MultiOptimizer is not in Keras {keras.__version__}",
        allow_module_level=True,
    )

N, D = 44, 6  # 44 = 5 batches of 8 + a ragged 4: the last window is ragged
RTOL, ATOL = 2e-5, 1e-6


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, D)).astype("float32"), rng.normal(size=(N, 1)).astype("float32")


def _model(recompute: bool) -> keras.Model:
    keras.utils.set_random_seed(7)
    block = keras.Sequential(
        [keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(16)], name="backbone_block"
    )
    inputs = keras.Input((D,))
    h = keras.layers.Dense(16, name="backbone_in")(inputs)
    h = (tfkit.Recompute(block) if recompute else block)(h)
    outputs = keras.layers.Dense(1, name="head")(h)
    return keras.Model(inputs, outputs)


def _optimizer(k: int):
    schedule = tfkit.schedules.OneCycle(0.02, total_steps=40)
    backbone = keras.optimizers.Adam(schedule, name="backbone")
    head = keras.optimizers.SGD(0.05, momentum=0.9, name="head")
    groups = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(backbone, {"head/.*": head})
    )
    return tfkit.precision.LossScaleOptimizer(
        tfkit.GradientAccumulator(groups, k), initial_scale=2.0**10
    ), schedule


def _callbacks(schedule):
    return [
        MomentumScheduler({"backbone": schedule.momentum_schedule}),
        # The logger reads the rates before this epoch's reduction (the ones the
        # epoch's updates applied); after ReduceLROnPlateau it would read the next ones.
        HyperparameterLogger(),
        ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
    ]


def _fit(recompute: bool, k: int, batch: int):
    model = _model(recompute)
    optimizer, schedule = _optimizer(k)
    model.compile(optimizer, "mse", jit_compile=True)
    tfkit.training.install(model)
    history = model.fit(
        *_data(), batch_size=batch, epochs=3, shuffle=False, verbose=0,
        callbacks=_callbacks(schedule),
    )
    return model, history.history


def _loop(recompute: bool, k: int, batch: int):
    model = _model(recompute)
    optimizer, schedule = _optimizer(k)
    step = tfkit.TrainStep(model, "mse", optimizer, jit_compile=True)
    callbacks = keras.callbacks.CallbackList(_callbacks(schedule), model=model)
    x, y = _data()
    callbacks.on_train_begin()
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        losses = []
        for start in range(0, N, batch):
            logs = step(x[start : start + batch], y[start : start + batch])
            losses.append(float(logs["loss"]))
        callbacks.on_epoch_end(epoch, {"loss": float(np.mean(losses))})
    callbacks.on_train_end()
    return model


def _assert_same(a: keras.Model, b: keras.Model):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=RTOL, atol=ATOL)


def test_fit_recompute_equals_no_recompute_and_logs_every_group():
    with_recompute, history = _fit(True, 2, 4)
    without, _ = _fit(False, 2, 4)
    _assert_same(with_recompute, without)
    for key in ("learning_rate/backbone", "learning_rate/head", "beta_1/backbone", "loss_scale"):
        assert key in history, sorted(history)
    # The plateau (min_delta=1e9: every epoch after the first is a plateau)
    # halves the head's fixed rate from epoch 2 on; the logs show applied rates.
    ratio = np.asarray(history["learning_rate/head"]) / 0.05
    np.testing.assert_allclose(ratio, [1.0, 1.0, 0.5], rtol=1e-6)


def test_accumulated_micro_batches_equal_one_big_batch():
    # b=4, k=2 (the last window is 4 alone, then it joins the next epoch's
    # first micro-batch) against b=8, k=1 with the same windows: both see
    # the same samples per update only where windows do not straddle epochs,
    # so compare one epoch of the 40 samples that fill whole windows.
    x, y = _data()
    small, big = _model(True), _model(True)
    opt_small, _ = _optimizer(2)
    opt_big, _ = _optimizer(1)
    step_small = tfkit.TrainStep(small, "mse", opt_small, jit_compile=True)
    step_big = tfkit.TrainStep(big, "mse", opt_big, jit_compile=True)
    for start in range(0, 40, 8):
        step_small(x[start : start + 4], y[start : start + 4])
        step_small(x[start + 4 : start + 8], y[start + 4 : start + 8])
        step_big(x[start : start + 8], y[start : start + 8])
    # ragged: 3 + 1 samples against one batch of 4
    step_small(x[40:43], y[40:43])
    step_small(x[43:44], y[43:44])
    step_big(x[40:44], y[40:44])
    _assert_same(small, big)


def test_fit_with_install_equals_train_step_loop():
    fitted, _ = _fit(True, 2, 4)
    looped = _loop(True, 2, 4)
    _assert_same(fitted, looped)
