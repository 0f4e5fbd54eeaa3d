"""Momentum / beta_1 scheduling: in-graph at every real update, no retrace, PyTorch OneCycle parity."""

from __future__ import annotations

import copy
import math
import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.callbacks import (
    MomentumScheduler,
    schedule_hyperparameter,
    unschedule_hyperparameter,
)

# tests/golden/make_callbacks_golden.py: torch OneCycleLR(total_steps=12, pct_start=0.3,
# base_momentum=0.85, max_momentum=0.95, cycle_momentum=True); value used by update k.
ONE_CYCLE_SGD_COS = [0.95, 0.9177302443521267, 0.8625744625914449, 0.8505584586887436, 0.856698729810778,
                     0.8688255099070633, 0.8852622412794547, 0.9037365046793212, 0.9216941869558779,
                     0.9366525935914912, 0.9465436874322102, 0.95]
ONE_CYCLE_ADAM_COS = ONE_CYCLE_SGD_COS  # torch prints the identical list for Adam's betas[0]
ONE_CYCLE_SGD_LINEAR = [0.95, 0.9115384615384615, 0.8730769230769231, 0.8547619047619047, 0.8666666666666667,
                        0.8785714285714286, 0.8904761904761904, 0.9023809523809524, 0.9142857142857143,
                        0.9261904761904761, 0.9380952380952381, 0.95]
TOTAL, PCT, BASE_M, MAX_M = 12, 0.3, 0.85, 0.95


def numpy_one_cycle_momentum(step: int, anneal: str = "cos") -> float:
    """PyTorch OneCycleLR momentum (two phases), written independently of tfkit."""
    end1 = PCT * TOTAL - 1
    end2 = TOTAL - 1

    def interp(start, end, pct):
        if anneal == "cos":
            return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    if step <= end1:
        return interp(MAX_M, BASE_M, step / end1)
    return interp(BASE_M, MAX_M, (step - end1) / (end2 - end1))


@keras.saving.register_keras_serializable(package="tfkit_tests")
class OneCycleMomentum(keras.optimizers.schedules.LearningRateSchedule):
    """Test-local in-graph OneCycle momentum (the real one lives in tfkit.schedules)."""

    def __init__(self, anneal: str = "cos"):
        self.anneal = anneal

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        end1, end2 = PCT * TOTAL - 1, TOTAL - 1.0
        in_first = step <= end1
        start = tf.where(in_first, MAX_M, BASE_M)
        end = tf.where(in_first, BASE_M, MAX_M)
        pct = tf.where(in_first, step / end1, (step - end1) / (end2 - end1))
        pct = tf.clip_by_value(pct, 0.0, 1.0)
        if self.anneal == "cos":
            return end + (start - end) / 2 * (tf.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_config(self):
        return {"anneal": self.anneal}


def test_numpy_formula_matches_torch_golden():
    for anneal, golden in (("cos", ONE_CYCLE_SGD_COS), ("linear", ONE_CYCLE_SGD_LINEAR)):
        np.testing.assert_allclose([numpy_one_cycle_momentum(k, anneal) for k in range(TOTAL)], golden, rtol=1e-12)
        got = [float(OneCycleMomentum(anneal)(k)) for k in range(TOTAL)]
        np.testing.assert_allclose(got, golden, rtol=1e-6)


def _linear_problem(n=8, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def numpy_sgd_momentum(x, y, w0, lr, momenta, batch_size):
    """Keras SGD: v <- mu_k v - lr g; w <- w + v, for a bias-free linear model under MSE."""
    w, v = w0.astype("float64").copy(), np.zeros_like(w0, dtype="float64")
    k = 0
    for _ in range(len(momenta) * batch_size // len(x)):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].astype("float64"), y[i:i + batch_size].astype("float64")
            g = 2.0 / len(xb) * xb.T @ (xb @ w - yb)
            v = momenta[k] * v - lr * g
            w = w + v
            k += 1
    return w


def _counting_train_step(model, counter):
    original = model.train_step

    def train_step(data):
        counter.append(1)  # Python side effect: runs once per trace
        return original(data)

    model.train_step = train_step


@pytest.mark.parametrize("steps_per_execution", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_fit_sgd_momentum_matches_torch_onecycle_every_step(steps_per_execution):
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", jit_compile=True,
                  steps_per_execution=steps_per_execution)
    traces = []
    _counting_train_step(model, traces)
    cb = MomentumScheduler(OneCycleMomentum("cos"))
    # 12 updates: 3 epochs x 4 batches of 2 -> one full cycle.
    model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[cb])
    expected = numpy_sgd_momentum(x, y, w0, 0.05, ONE_CYCLE_SGD_COS, batch_size=2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)
    # Same weights with the constant 0.9 would differ: the schedule really acted.
    constant = numpy_sgd_momentum(x, y, w0, 0.05, [0.9] * 12, batch_size=2)
    assert np.max(np.abs(expected - constant)) > 1e-3
    assert len(traces) == _baseline_traces(steps_per_execution), f"train step traced {len(traces)} times"
    assert model.optimizer.momentum == 0.9 and model.optimizer.get_config()["momentum"] == 0.9


def _baseline_traces(steps_per_execution):
    """Traces of the same fit without any callback (Keras itself traces twice: exact, then relaxed shapes)."""
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", jit_compile=True,
                  steps_per_execution=steps_per_execution)
    traces = []
    _counting_train_step(model, traces)
    model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0)
    assert traces
    return len(traces)


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01),
    "adamax": lambda: keras.optimizers.Adamax(0.01),
    "nadam": lambda: keras.optimizers.Nadam(0.01),
    "lion": lambda: keras.optimizers.Lion(0.001),
}
FAST_OPTIMIZERS = {"sgd", "rmsprop", "nadam", "lion"}  # the rest run in `make test-full`


@pytest.mark.parametrize("name", [
    name if name in FAST_OPTIMIZERS else pytest.param(name, marks=pytest.mark.slow) for name in sorted(OPTIMIZERS)
])
def test_custom_loop_jit_matches_per_step_eager_reference(name):
    """Compiled step with the scheduled value == eager Keras with the float set before each update."""
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(4,)).astype("float32") for _ in range(TOTAL)]
    reference_var = keras.Variable(np.ones(4, "float32"))
    reference = OPTIMIZERS[name]()
    reference.build([reference_var])
    attr = "momentum" if hasattr(reference, "momentum") else "beta_1"
    for k, g in enumerate(grads):
        setattr(reference, attr, ONE_CYCLE_ADAM_COS[k])
        reference.apply([tf.constant(g)], [reference_var])

    var = keras.Variable(np.ones(4, "float32"))
    optimizer = OPTIMIZERS[name]()
    optimizer.build([var])
    value = schedule_hyperparameter(optimizer, OneCycleMomentum("cos"))
    # A float for config, the scheduled value for TensorFlow.
    assert isinstance(getattr(optimizer, attr), float) and type(getattr(optimizer, attr)) is not float
    assert value == 0.9
    traces = []

    @tf.function(jit_compile=True)
    def step(g):
        traces.append(1)
        optimizer.apply([g], [var])

    for g in grads:
        step(tf.constant(g))
    np.testing.assert_allclose(var.numpy(), reference_var.numpy(), rtol=1e-5, atol=1e-6)
    assert len(traces) == 1
    # get_config sees the plain nominal float (JSON-able); unschedule restores the float.
    assert optimizer.get_config()[attr] == 0.9
    unschedule_hyperparameter(optimizer)
    assert type(getattr(optimizer, attr)) is float


def test_through_loss_scale_optimizer_in_fit():
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    inner = keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(keras.optimizers.LossScaleOptimizer(inner, initial_scale=8.0), "mse",
                  jit_compile=True, steps_per_execution=2)
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["type"] = type(inner.momentum)

    model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
              callbacks=[MomentumScheduler(OneCycleMomentum("linear")), Probe()])
    assert seen["type"] is not float and issubclass(seen["type"], float)  # set on the innermost optimizer
    expected = numpy_sgd_momentum(x, y, w0, 0.05, ONE_CYCLE_SGD_LINEAR, batch_size=2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)


def test_custom_loop_through_callback_list():
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(optimizer, "mse")
    optimizer.build(model.trainable_variables)
    callbacks = keras.callbacks.CallbackList([MomentumScheduler(OneCycleMomentum("cos"))], model=model)

    @tf.function(jit_compile=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    callbacks.on_train_begin()  # before the first trace
    for epoch in range(3):
        callbacks.on_epoch_begin(epoch)
        for b, i in enumerate(range(0, 8, 2)):
            callbacks.on_train_batch_begin(b)
            loss = train_step(x[i:i + 2], y[i:i + 2])
            callbacks.on_train_batch_end(b, {"loss": loss})
        callbacks.on_epoch_end(epoch, {})
    callbacks.on_train_end()
    expected = numpy_sgd_momentum(x, y, w0, 0.05, ONE_CYCLE_SGD_COS, batch_size=2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)
    assert train_step.experimental_get_tracing_count() == 1


def test_later_fits_without_and_with_callback_no_retrace():
    """After fit(callbacks=[MomentumScheduler]) a plain fit uses the float again, and vice versa."""
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    traces = []
    _counting_train_step(model, traces)
    cb = MomentumScheduler(OneCycleMomentum())
    model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0, callbacks=[cb])
    first = len(traces)
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)  # constant 0.9 now
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0, callbacks=[cb])  # schedule again
    assert len(traces) == first  # neither later fit retraced
    # Updates 12..15 use the float 0.9; updates 16..19 the schedule again (0.95 past the cycle's end).
    momenta = ONE_CYCLE_SGD_COS + [0.9] * 4 + [0.95] * 4
    expected = numpy_sgd_momentum(x, y, w0, 0.05, momenta, batch_size=2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)


def test_bad_input():
    with pytest.raises(TypeError, match="schedule"):
        MomentumScheduler(0.9)
    with pytest.raises(ValueError, match="hyperparameter"):
        MomentumScheduler(OneCycleMomentum(), hyperparameter="beta_2")
    sgd = keras.optimizers.SGD(0.1, momentum=0.0)
    sgd.build([keras.Variable(np.ones(2, "float32"))])
    with pytest.raises(ValueError, match="momentum=0.0"):
        schedule_hyperparameter(sgd, OneCycleMomentum())
    unbuilt = keras.optimizers.SGD(0.1, momentum=0.0)
    assert schedule_hyperparameter(unbuilt, OneCycleMomentum()) == pytest.approx(MAX_M)
    unbuilt.build([keras.Variable(np.ones(2, "float32"))])
    assert len(unbuilt.momentums) == 1  # slots exist, so the schedule acts
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        schedule_hyperparameter(keras.optimizers.Adam(), keras.optimizers.schedules.ExponentialDecay(2.0, 1, 0.5))
    with pytest.raises(ValueError, match="must have `momentum` or `beta_1`"):
        schedule_hyperparameter(keras.optimizers.Adagrad(), OneCycleMomentum())


def test_callback_serializes():
    cb = MomentumScheduler(OneCycleMomentum("linear"), hyperparameter="beta_1")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cb), safe_mode=True)
    assert restored.hyperparameter == "beta_1" and restored.schedule.anneal == "linear"


def test_through_gradient_accumulator_counts_real_updates():
    """Momentum follows real updates (micro-batches do not advance it): keras-defects.md#schedule-at-micro-step for momentum."""
    from tfkit.optimizers import GradientAccumulator

    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    optimizer = GradientAccumulator(keras.optimizers.SGD(0.05, momentum=0.9), accumulation_steps=2)
    model.compile(optimizer, "mse", jit_compile=True, steps_per_execution=2)
    # 6 epochs x 4 micro-batches of 2 = 12 real updates on batches of 4 (mean of 2 equal micro-batches).
    model.fit(x, y, batch_size=2, epochs=6, shuffle=False, verbose=0,
              callbacks=[MomentumScheduler(OneCycleMomentum("cos"))])
    assert int(optimizer.iterations) == 12
    expected = numpy_sgd_momentum(x, y, w0, 0.05, ONE_CYCLE_SGD_COS, batch_size=4)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)


def test_with_tfkit_one_cycle_momentum_schedule():
    from tfkit.schedules import OneCycle

    one_cycle = OneCycle(max_learning_rate=0.05, total_steps=TOTAL, pct_start=PCT,
                         base_momentum=BASE_M, max_momentum=MAX_M)
    np.testing.assert_allclose([float(one_cycle.momentum_schedule(k)) for k in range(TOTAL)],
                               ONE_CYCLE_SGD_COS, rtol=1e-6)
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", jit_compile=True)
    model.fit(x, y, batch_size=2, epochs=3, shuffle=False, verbose=0,
              callbacks=[MomentumScheduler(one_cycle.momentum_schedule)])
    expected = numpy_sgd_momentum(x, y, w0, 0.05, ONE_CYCLE_SGD_COS, batch_size=2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)
    cb = MomentumScheduler(one_cycle.momentum_schedule)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cb), safe_mode=True)
    assert float(restored.schedule(3)) == pytest.approx(ONE_CYCLE_SGD_COS[3], rel=1e-6)


@pytest.mark.slow
def test_fit_under_mirrored_strategy(mirrored_strategy):
    x, y = _linear_problem()
    with mirrored_strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
        # steps_per_execution > 1 fails under MirroredStrategy in Keras 3.15 itself, callback or not
        # ("You must feed a value for placeholder tensor while/cond/Placeholder"), so 1 here.
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    w0 = model.get_weights()[0]
    # Global batch 4 split over 2 replicas: the mean-reduced gradient equals the batch-of-4 gradient.
    model.fit(x, y, batch_size=4, epochs=6, shuffle=False, verbose=0,
              callbacks=[MomentumScheduler(OneCycleMomentum("cos"))])
    expected = numpy_sgd_momentum(x, y, w0, 0.05, ONE_CYCLE_SGD_COS, batch_size=4)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)


def test_model_saves_and_loads_while_scheduled(tmp_path):
    """A checkpoint written mid-training (schedule attached) stores the plain float, loads in safe mode."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01, beta_1=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    schedule_hyperparameter(model.optimizer, OneCycleMomentum())
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.optimizer.beta_1) is float and loaded.optimizer.beta_1 == 0.9
    assert type(copy.deepcopy(model.optimizer.beta_1)) is float
    assert pickle.loads(pickle.dumps(model.optimizer.beta_1)) == 0.9


@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=pytest.mark.slow), "float64"])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_variable_dtypes(name, dtype):
    """The scheduled value adopts the variable dtype wherever Keras combines it (weak float typing)."""
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=(3,)) for _ in range(4)]
    reference_var, var = keras.Variable(np.ones(3), dtype=dtype), keras.Variable(np.ones(3), dtype=dtype)
    reference, optimizer = OPTIMIZERS[name](), OPTIMIZERS[name]()
    reference.build([reference_var])
    optimizer.build([var])
    attr = "momentum" if name == "sgd" else "beta_1"
    schedule_hyperparameter(optimizer, OneCycleMomentum())

    @tf.function(jit_compile=True)
    def step(g):
        optimizer.apply([g], [var])

    for k, g in enumerate(grads):
        # float32 schedule values, as the in-graph schedule computes them
        setattr(reference, attr, float(np.float32(ONE_CYCLE_SGD_COS[k])))
        reference.apply([tf.constant(g, dtype)], [reference_var])
        step(tf.constant(g, dtype))
    assert var.dtype == dtype
    # float64 checks the values; the 16-bit cases check dtype handling (to their resolution).
    rtol = {"float16": 1e-3, "bfloat16": 1e-2, "float64": 1e-6}[dtype]
    np.testing.assert_allclose(np.asarray(var.numpy(), "float64"), np.asarray(reference_var.numpy(), "float64"),
                               rtol=rtol)


def test_callback_after_a_plain_fit_retraces_once():
    """A step traced before the callback baked the float in: on_train_begin must replace it."""
    x, y = _linear_problem()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    w0 = model.get_weights()[0]
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", jit_compile=True)
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)  # updates 0..3 at 0.9
    model.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0,
              callbacks=[MomentumScheduler(OneCycleMomentum())])  # updates 4..11 scheduled
    momenta = [0.9] * 4 + ONE_CYCLE_SGD_COS[4:]
    expected = numpy_sgd_momentum(x, y, w0, 0.05, momenta, batch_size=2)
    np.testing.assert_allclose(model.get_weights()[0], expected, rtol=2e-5, atol=1e-6)
