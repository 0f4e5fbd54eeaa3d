"""The hyperparameter control plane, read back from the weights.

A linear model ``y = a(x) + b(x)`` (two bias-free Dense(1) layers, x = 1) with
the loss ``mean(y_pred)`` has gradient exactly 1 for each kernel, so one SGD
update moves each kernel by exactly ``-lr``: the rates actually applied are
read from the weights, per update and per parameter group, and compared with
an independent formula and with what the logger, History and TensorBoard say.
"""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfkit
from tfkit.callbacks import (
    EpochScheduler,
    HyperparameterLogger,
    MomentumScheduler,
    ReduceLROnPlateau,
)
from tfkit.optimizers import control, layerwise_decay, parameter_groups
from tfkit.tuning.lr_find import lr_find

RTOL = 1e-6
N, BATCH = 8, 2  # 4 batches per epoch


def linear_loss(y_true, y_pred):
    return y_pred[:, 0]


class TraceCounter(keras.layers.Layer):
    """Identity layer counting how many times its ``call`` is traced."""

    traces = 0

    def call(self, x):
        TraceCounter.traces += 1
        return x


def linear_model():
    inp = keras.Input((1,))
    h = TraceCounter()(inp)
    a = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="a")(h)
    b = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="b")(h)
    return keras.Model(inp, keras.layers.Add()([a, b]))


def data():
    return np.ones((N, 1), "float32"), np.zeros((N, 1), "float32")


class KernelRecorder(keras.callbacks.Callback):
    """Zero the kernels of `a` and `b` before every batch, read them after: ``-lr`` exactly.

    The gradient does not depend on the kernels, so zeroing them changes
    nothing else (and keeps the float32 subtraction exact).
    """

    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_begin(self, batch, logs=None):
        for n in ("a", "b"):
            self.model.get_layer(n).kernel.assign(np.zeros((1, 1), "float32"))

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(
            [-float(self.model.get_layer(n).kernel.numpy()[0, 0]) for n in ("a", "b")]
        )

    def applied(self):
        """Per micro-batch, the rate each group applied (0 where no update happened)."""
        return np.asarray(self.values)


def needs_multi_optimizer():
    if not hasattr(keras.optimizers, "MultiOptimizer"):
        pytest.skip(f"keras.optimizers.MultiOptimizer is not in Keras {keras.__version__}")


def make_optimizer(groups: str, wrapper: str, base_a, base_b=0.01):
    if groups != "single":
        needs_multi_optimizer()
    if groups == "single":
        leaf = keras.optimizers.SGD(base_a, name="sgd_a")
    else:
        sgd_a = keras.optimizers.SGD(base_a, name="sgd_a")
        sgd_b = keras.optimizers.SGD(base_b, name="sgd_b")
        leaf = keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(sgd_b, {"a/.*": sgd_a})
        )
    if wrapper == "ga2":
        return tfkit.GradientAccumulator(leaf, 2)
    if wrapper == "lso":
        return tfkit.precision.LossScaleOptimizer(leaf, initial_scale=2.0**8)
    return leaf


ACCUMULATION = {"plain": 1, "lso": 1, "ga2": 2}
EPOCH_RATES = [0.2, 0.2, 0.05, 0.05]


def epoch_schedule():
    return keras.optimizers.schedules.PiecewiseConstantDecay([1.5], [0.2, 0.05])  # 0.2 for e < 2


@pytest.mark.parametrize("wrapper", ["plain", "lso", "ga2"])
@pytest.mark.parametrize("groups", ["single", "multi"])
def test_epoch_plateau_logger_applied_rates_per_group(groups, wrapper):
    model = linear_model()
    model.compile(make_optimizer(groups, wrapper, 0.1), linear_loss, jit_compile=True)
    recorder = KernelRecorder()
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    logger = HyperparameterLogger()
    history = model.fit(
        *data(),
        batch_size=BATCH,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, EpochScheduler(epoch_schedule()), logger, plateau],
    )
    k = ACCUMULATION[wrapper]
    applied = recorder.applied()
    reductions = [0, 0, 1, 2]  # first epoch sets `best`; every later epoch end reduces
    for e in range(4):
        for i in range(4):
            batch = applied[4 * e + i]
            real = (i + 1) % k == 0
            if groups == "single":
                want_a = 0.1 * EPOCH_RATES[e] * 0.5 ** reductions[e] if real else 0.0
                np.testing.assert_allclose(batch[0], want_a, rtol=RTOL, atol=0)
            else:
                scale = EPOCH_RATES[e] * 0.5 ** reductions[e] if real else 0.0
                np.testing.assert_allclose(batch, [0.1 * scale, 0.01 * scale], rtol=RTOL, atol=0)
    last = applied[3::4]  # last micro-batch of each epoch is a real update
    if groups == "single":
        np.testing.assert_allclose(history.history["learning_rate"], last[:, 0], rtol=RTOL)
    else:
        np.testing.assert_allclose(history.history["learning_rate/sgd_a"], last[:, 0], rtol=RTOL)
        np.testing.assert_allclose(history.history["learning_rate/sgd_b"], last[:, 1], rtol=RTOL)
        assert "learning_rate" not in history.history
    if wrapper == "lso":
        assert history.history["loss_scale"][-1] == 2.0**8


def test_epoch_scheduler_multiplies_a_step_schedule_and_resumes():
    model = linear_model()
    step_schedule = keras.optimizers.schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    model.compile(keras.optimizers.SGD(step_schedule), linear_loss)
    recorder = KernelRecorder()
    scheduler = EpochScheduler(epoch_schedule())
    model.fit(
        *data(),
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, scheduler],
    )
    # Resume at epoch 2 in a new fit: the epoch rate is schedule(2), the step schedule continues.
    model.fit(
        *data(),
        batch_size=BATCH,
        epochs=4,
        initial_epoch=2,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, scheduler],
    )
    applied = recorder.applied()[:, 0]
    want = [EPOCH_RATES[s // 4] * 0.5**s for s in range(16)]
    np.testing.assert_allclose(applied, want, rtol=RTOL)


def test_epoch_scheduler_under_accumulation_uses_the_epoch_of_the_applied_update():
    # 3 micro-batches per update, 4 per epoch: updates straddle epochs.
    model = linear_model()
    model.compile(tfkit.GradientAccumulator(keras.optimizers.SGD(0.1), 3), linear_loss)
    recorder = KernelRecorder()
    model.fit(
        *data(),
        batch_size=BATCH,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, EpochScheduler(epoch_schedule())],
    )
    applied = recorder.applied()[:, 0]
    micro = np.arange(16)
    want = np.where((micro + 1) % 3 == 0, [0.1 * EPOCH_RATES[m // 4] for m in micro], 0.0)
    np.testing.assert_allclose(applied, want, rtol=RTOL, atol=0)


@pytest.mark.parametrize("order", ["tensorboard_first", "tensorboard_last"])
@pytest.mark.parametrize("groups", ["single", "multi"])
def test_tensorboard_and_history_agree_in_both_orders(tmp_path, order, groups):
    pytest.importorskip("tensorboard")  # tf.summary needs it; not a tfkit dependency
    model = linear_model()
    if groups == "single":
        optimizer = keras.optimizers.SGD(
            keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.9), name="sgd_a"
        )
    else:
        optimizer = make_optimizer(
            "multi", "plain", keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.9)
        )
    model.compile(optimizer, linear_loss)
    board = keras.callbacks.TensorBoard(str(tmp_path))
    ours = [
        HyperparameterLogger(),
        ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
    ]
    callbacks = [board, *ours] if order == "tensorboard_first" else [*ours, board]
    history = model.fit(
        *data(), batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=callbacks
    )
    scalars = {}
    for path in glob.glob(os.path.join(str(tmp_path), "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "scalars":
                    continue  # the model-config text summary
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    if groups == "single":
        pairs = [("epoch_learning_rate", "learning_rate")]
    else:  # Keras' TensorBoard names them learning_rate_<name>, tfkit learning_rate/<name>
        pairs = [
            ("epoch_learning_rate_sgd_a", "learning_rate/sgd_a"),
            ("epoch_learning_rate_sgd_b", "learning_rate/sgd_b"),
        ]
    # Every reader evaluates the rate the optimizer applies at its current step
    # (after 4, 8, 12 updates) with the knobs of that moment: TensorBoard placed
    # after ReduceLROnPlateau sees that epoch's reduction, as with Keras' own.
    expected = 0.1 * 0.9 ** np.array([4, 8, 12]) * 0.5 ** np.array([0, 0, 1])
    after_plateau = expected * 0.5 ** np.array([0, 1, 1])
    for tag, key in pairs:
        board_values = [scalars[tag][e] for e in range(3)]
        np.testing.assert_allclose(
            np.asarray(board_values) / np.asarray(history.history[key]),
            1.0 if order == "tensorboard_first" else after_plateau / expected,
            rtol=1e-5,
        )
    np.testing.assert_allclose(history.history[pairs[0][1]], expected, rtol=1e-5)


def test_callbacks_add_no_trace_and_later_fits_do_not_retrace():
    model = linear_model()
    model.compile(make_optimizer("multi", "ga2", 0.1), linear_loss, jit_compile=True)
    TraceCounter.traces = 0
    callbacks = [
        MomentumScheduler(keras.optimizers.schedules.PolynomialDecay(0.9, 8, 0.8)),
        EpochScheduler(epoch_schedule()),
        HyperparameterLogger(),
        ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
    ]
    model.optimizer.inner_optimizer.optimizers[0].momentum = 0.9
    model.optimizer.inner_optimizer.optimizers[1].momentum = 0.9
    model.fit(*data(), batch_size=BATCH, epochs=3, verbose=0, callbacks=callbacks)
    after_first = TraceCounter.traces
    model.fit(*data(), batch_size=BATCH, epochs=3, verbose=0, callbacks=callbacks)
    assert TraceCounter.traces == after_first  # no retrace although every knob changed
    plain = linear_model()
    TraceCounter.traces = 0
    plain.compile(make_optimizer("multi", "ga2", 0.1), linear_loss, jit_compile=True)
    plain.fit(*data(), batch_size=BATCH, epochs=3, verbose=0)
    assert after_first == TraceCounter.traces  # as many traces as without any callback


def test_momentum_per_group_dict_and_logged():
    model = linear_model()
    opt = make_optimizer("multi", "plain", 0.1)
    for sub in opt.optimizers:
        sub.momentum = 0.5
    model.compile(opt, linear_loss)
    schedule_a = keras.optimizers.schedules.PolynomialDecay(0.9, 8, end_learning_rate=0.1)
    history = model.fit(
        *data(),
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[MomentumScheduler({"sgd_a": schedule_a}), HyperparameterLogger()],
    )
    np.testing.assert_allclose(
        history.history["momentum/sgd_a"], [0.9 - 0.8 * 4 / 8, 0.9 - 0.8 * 8 / 8], rtol=1e-5
    )
    assert history.history["momentum/sgd_b"] == [0.5, 0.5]
    with pytest.raises(ValueError, match="unknown parameter group"):
        model.fit(*data(), verbose=0, callbacks=[MomentumScheduler({"nope": schedule_a})])


@pytest.mark.parametrize("wrapper", ["plain", "lso", "ga2"])
@pytest.mark.parametrize("groups", ["single", "multi"])
def test_lr_find_sweeps_every_group_keeping_ratios_and_restores(groups, wrapper):
    model = linear_model()
    base_a = keras.optimizers.schedules.CosineDecay(0.1, 50)
    model.compile(make_optimizer(groups, wrapper, base_a), linear_loss)
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[HyperparameterLogger()])
    before = [v.numpy().copy() for v in model.weights]
    groups_state = control(model.optimizer)
    applied_before = {n: s.learning_rate() for n, s in groups_state.items()}
    kernels = []

    orig = model.train_on_batch

    def spying(*args, **kwargs):
        # Zeroed before each micro-batch (the gradient does not depend on them): -lr exactly after.
        for n in ("a", "b"):
            model.get_layer(n).kernel.assign(np.zeros((1, 1), "float32"))
        out = orig(*args, **kwargs)
        kernels.append([-float(model.get_layer(n).kernel.numpy()[0, 0]) for n in ("a", "b")])
        return out

    model.train_on_batch = spying
    result = lr_find(
        model,
        (x, y),
        min_lr=1e-3,
        max_lr=1.0,
        steps=6,
        batch_size=BATCH,
        verbose=0,
        divergence_threshold=1e9,
    )
    del model.train_on_batch
    k = ACCUMULATION[wrapper]
    applied = np.asarray(kernels)[k - 1 :: k]  # one real update per k micro-batches
    np.testing.assert_allclose(applied[:, 0], result.lrs, rtol=RTOL)
    if groups == "multi":
        ratio = applied_before["sgd_b"] / applied_before["sgd_a"]
        np.testing.assert_allclose(applied[:, 1], result.lrs * ratio, rtol=1e-5)
    for v, b in zip(model.weights, before, strict=True):
        assert v.numpy().tobytes() == b.tobytes()
    assert {n: s.learning_rate() for n, s in groups_state.items()} == applied_before
    assert all(np.isnan(s.learning_rate_override.numpy()) for s in groups_state.values())


def test_custom_loop_on_an_uncompiled_model():
    model = linear_model()
    optimizer = make_optimizer("multi", "ga2", 0.1)
    step = tfkit.TrainStep(model, linear_loss, optimizer, jit_compile=True)
    history = keras.callbacks.History()
    callbacks = keras.callbacks.CallbackList(
        [
            EpochScheduler(epoch_schedule()),
            HyperparameterLogger(),
            ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
            history,
        ],
        model=model,
    )
    x, y = data()
    callbacks.on_train_begin()
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        for i in range(0, N, BATCH):
            loss = step(x[i : i + BATCH], y[i : i + BATCH])["loss"]
        callbacks.on_epoch_end(epoch, {"loss": float(loss)})
    callbacks.on_train_end()
    np.testing.assert_allclose(
        history.history["learning_rate/sgd_a"], [0.02, 0.02, 0.1 * 0.05 * 0.5], rtol=RTOL
    )
    np.testing.assert_allclose(
        history.history["learning_rate/sgd_b"], [0.002, 0.002, 0.01 * 0.05 * 0.5], rtol=RTOL
    )
    assert step.trace_count == 1


def test_wrong_setup_gets_a_one_line_error():
    model = linear_model()
    callbacks = keras.callbacks.CallbackList([HyperparameterLogger()], model=model)
    with pytest.raises(ValueError, match=r"must be compiled with an optimizer, or trained by a tfkit.TrainStep") as info:
        callbacks.on_train_begin()
    assert "\n" not in str(info.value)


def test_checkpoint_carries_the_state_of_every_group(tmp_path):
    model = linear_model()
    model.compile(make_optimizer("multi", "lso", 0.1), linear_loss)
    model.fit(
        *data(),
        batch_size=BATCH,
        epochs=3,
        verbose=0,
        callbacks=[ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)],
    )
    states = control(model.optimizer)
    path = tf.train.Checkpoint(optimizer=model.optimizer).write(str(tmp_path / "ckpt"))
    saved = {
        n: (float(s.learning_rate_multiplier.numpy()), s.learning_rate()) for n, s in states.items()
    }
    assert saved["sgd_a"][0] == 0.25
    for s in states.values():
        s.learning_rate_multiplier.assign(1.0)
    tf.train.Checkpoint(optimizer=model.optimizer).read(path).assert_existing_objects_matched()
    assert {
        n: (float(s.learning_rate_multiplier.numpy()), s.learning_rate()) for n, s in states.items()
    } == saved
    # A fresh optimizer restores it too, once its state exists.
    fresh = linear_model()
    fresh.compile(make_optimizer("multi", "lso", 0.1), linear_loss)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh_states = control(fresh.optimizer)
    tf.train.Checkpoint(optimizer=fresh.optimizer).read(path).expect_partial()
    assert float(fresh_states["sgd_a"].learning_rate_multiplier.numpy()) == 0.25


def test_multi_optimizer_round_trips_through_keras_saving_safe_mode(tmp_path):
    needs_multi_optimizer()
    inp = keras.Input((4,))
    h = keras.layers.Dense(3, name="embed")(inp)
    h = keras.layers.Dense(3, name="block_0")(h)
    out = keras.layers.Dense(1, name="head")(h)
    model = keras.Model(inp, out)
    optimizer = layerwise_decay(
        keras.optimizers.AdamW(1e-3, name="adamw"), ["embed/.*", "block_0/.*"], 0.5
    )
    model.compile(optimizer, "mse")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    model.fit(
        x,
        x[:, :1],
        epochs=2,
        verbose=0,
        callbacks=[
            HyperparameterLogger(),
            ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
        ],
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    groups = parameter_groups(loaded.optimizer)
    assert list(groups) == ["adamw_layer_0", "adamw_layer_1", "adamw"]
    rates = {
        n: float(keras.ops.convert_to_numpy(keras.optimizers.SGD.learning_rate.fget(o)))
        for n, o in groups.items()
    }
    assert rates == pytest.approx(
        {"adamw_layer_0": 2.5e-4, "adamw_layer_1": 5e-4, "adamw": 1e-3}, rel=1e-6
    )
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The loaded optimizer takes the control plane again, and trains.
    loaded.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[HyperparameterLogger()])


def test_layerwise_decay_routes_variables_and_applies_rates():
    needs_multi_optimizer()
    inp = keras.Input((1,))
    a = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="a")(inp)
    b = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="b")(inp)
    model = keras.Model(inp, keras.layers.Add()([a, b]))
    model.compile(
        layerwise_decay(keras.optimizers.SGD(0.1, name="sgd"), ["a/.*"], 0.25), linear_loss
    )
    model.fit(np.ones((2, 1)), np.zeros((2, 1)), batch_size=2, epochs=1, verbose=0)
    assert float(model.get_layer("a").kernel.numpy()[0, 0]) == pytest.approx(-0.025, rel=RTOL)
    assert float(model.get_layer("b").kernel.numpy()[0, 0]) == pytest.approx(-0.1, rel=RTOL)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": "a/.*", "decay": 0.5}, TypeError, "layers"),
        ({"layers": [], "decay": 0.5}, TypeError, "layers"),
        ({"layers": ["a", "a"], "decay": 0.5}, ValueError, "twice"),
        ({"layers": ["a"], "decay": 0.0}, ValueError, "decay"),
        ({"layers": ["a"], "decay": float("nan")}, ValueError, "decay"),
        ({"layers": ["a"], "decay": True}, TypeError, "decay"),  # a bool is not a number
    ],
)
def test_layerwise_decay_bad_input(kwargs, error, match):
    needs_multi_optimizer()
    with pytest.raises(error, match=match):
        layerwise_decay(keras.optimizers.SGD(0.1), **kwargs)


def test_layerwise_decay_says_which_keras_it_needs(monkeypatch):
    monkeypatch.delattr(keras.optimizers, "MultiOptimizer", raising=False)
    with pytest.raises(RuntimeError, match="MultiOptimizer"):
        layerwise_decay(keras.optimizers.SGD(0.1), ["a/.*"], 0.5)


def test_epoch_scheduler_bad_input_and_config():
    with pytest.raises(TypeError, match="schedule"):
        EpochScheduler(0.1)
    model = linear_model()
    model.compile(keras.optimizers.SGD(0.1), linear_loss)

    def bad(epoch):
        return [0.1, float("nan")][epoch]

    with pytest.raises(ValueError, match=r"`schedule\(1\)` must be finite"):
        model.fit(*data(), epochs=2, verbose=0, callbacks=[EpochScheduler(bad)])
    cb = EpochScheduler(epoch_schedule())
    restored = EpochScheduler.from_config(cb.get_config())
    assert float(restored.schedule(3)) == pytest.approx(0.05)


@pytest.mark.parametrize(
    "module",
    [
        "tfkit.optimizers.tree",
        "tfkit.optimizers.hyperparameters",
        "tfkit.optimizers.layerwise_decay",
        "tfkit.callbacks.epoch_scheduler",
        "tfkit.callbacks.momentum",
        "tfkit.callbacks.reduce_lr_on_plateau",
        "tfkit.callbacks.hyperparameter_logger",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    if module.endswith("layerwise_decay"):
        needs_multi_optimizer()
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_under_mirrored_strategy_every_replica_applies_the_controlled_rate(mirrored_strategy):
    with mirrored_strategy.scope():
        model = linear_model()
        model.compile(make_optimizer("multi", "plain", 0.1), linear_loss)
    recorder = KernelRecorder()
    history = model.fit(
        *data(),
        batch_size=4,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[
            recorder,
            EpochScheduler(epoch_schedule()),
            HyperparameterLogger(),
            ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
        ],
    )
    scale = np.repeat([0.2, 0.2, 0.05 * 0.5], 2)  # 2 batches per epoch
    np.testing.assert_allclose(recorder.applied(), np.outer(scale, [0.1, 0.01]), rtol=RTOL)
    np.testing.assert_allclose(
        history.history["learning_rate/sgd_b"], 0.01 * scale[1::2], rtol=RTOL
    )


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(1, 6),
    decay=st.floats(1e-3, 1.0, allow_nan=False),
    lr=st.floats(1e-6, 1.0, allow_nan=False),
)
def test_layerwise_decay_rates_follow_the_formula(n, decay, lr):
    needs_multi_optimizer()
    opt = layerwise_decay(
        keras.optimizers.SGD(lr, name="g"), [f"block_{i}/.*" for i in range(n)], decay
    )
    groups = parameter_groups(opt)
    assert list(groups) == [f"g_layer_{i}" for i in range(n)] + ["g"]
    for i in range(n):
        rate = float(keras.ops.convert_to_numpy(groups[f"g_layer_{i}"].learning_rate))
        np.testing.assert_allclose(rate, lr * decay ** (n - i), rtol=1e-6)
    assert float(keras.ops.convert_to_numpy(groups["g"].learning_rate)) == pytest.approx(
        lr, rel=1e-6
    )
    config = keras.saving.serialize_keras_object(opt)
    again = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert keras.saving.serialize_keras_object(again) == config


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3)
    )
)
def test_layerwise_decay_rejects_every_bad_decay(value):
    needs_multi_optimizer()
    if isinstance(value, float) and 0 < value <= 1:
        return
    # A wrong type is a TypeError, a number out of (0, 1] a ValueError (tfkit._validation's rule).
    number = isinstance(value, int | float) and not isinstance(value, bool)
    with pytest.raises(ValueError if number else TypeError, match="^layerwise_decay: `decay` must be"):
        layerwise_decay(keras.optimizers.SGD(0.1), ["a/.*"], value)
