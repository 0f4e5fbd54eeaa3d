"""GradientAccumulator: k micro-batches of b must equal one batch of k*b, and nothing else moves.

The reference for every equivalence test is independent of the wrapper: a
fresh copy of the same inner optimizer applied to the gradient of the big
batch (and, for plain SGD, the update formula written out in numpy).
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_defects import keras_defect

from tfkit.optimizers import GradientAccumulator, innermost, optimizer_chain

RTOL = 1e-5  # float32, sums of 4 micro-batch means vs one big-batch mean
ATOL = 1e-6
K = 4
B = 4  # micro-batch


# --------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
    """Give every test's MirroredStrategy its own collective group keys.

    Each new MirroredStrategy starts its collective instance keys at the same
    numbers; the collective runtime is per process and remembers the shapes a
    key was used with, so a second strategy in the same process whose
    all-reduces come in a different order aborts with "Shape mismatch in the
    collective instance". TensorFlow's own tests bump this base per test.
    Autouse fixtures run before ``mirrored_strategy`` creates the strategy.
    """
    _fresh_collective_keys.base = getattr(_fresh_collective_keys, "base", 0) + 1000
    tf.distribute.MirroredStrategy._collective_key_base = _fresh_collective_keys.base
    yield


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def _model(dtype=None, seed=7):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", dtype=dtype),
            keras.layers.Dense(2, dtype=dtype),
        ]
    )


def _grads(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    return tape.gradient(loss, model.trainable_variables)


def _clone(optimizer):
    return optimizer.__class__.from_config(optimizer.get_config())


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def _assert_all_close(actual, expected, rtol=RTOL, atol=ATOL):
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


INNERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.01, momentum=0.5),
    "lion": lambda: keras.optimizers.Lion(0.001),
    # Clip thresholds below the gradient norms of this problem, so they bite.
    "sgd_clipnorm": lambda: keras.optimizers.SGD(0.1, clipnorm=0.05),
    "adam_global_clipnorm": lambda: keras.optimizers.Adam(0.01, global_clipnorm=0.05),
    "sgd_clipvalue": lambda: keras.optimizers.SGD(0.1, momentum=0.9, clipvalue=0.01),
}


def _run_custom_loop(make_inner, updates=3, compiled=None):
    """Accumulated micro-batches vs the inner optimizer on the big batch.

    Returns (accumulated weights, reference weights, accumulator, reference optimizer).
    Asserts along the way that micro-steps that close no window change nothing
    but the accumulator's own state.
    """
    x, y = _data(K * B * updates)
    model, ref_model = _model(), _model()
    acc = GradientAccumulator(make_inner(), K)
    ref = make_inner()
    acc.build(model.trainable_variables)
    ref.build(ref_model.trainable_variables)

    def acc_step(xb, yb):
        acc.apply(_grads(model, xb, yb), model.trainable_variables)

    def ref_step(xb, yb):
        ref.apply(_grads(ref_model, xb, yb), ref_model.trainable_variables)

    if compiled is not None:
        acc_step = tf.function(acc_step, jit_compile=compiled)
        ref_step = tf.function(ref_step, jit_compile=compiled)

    watched = model.trainable_variables + acc.inner_optimizer.variables
    for u in range(updates):
        for i in range(K):
            lo = (u * K + i) * B
            before = _values(watched)
            acc_step(x[lo : lo + B], y[lo : lo + B])
            if i < K - 1:
                # Not a real update: model and inner optimizer untouched.
                for a, b in zip(_values(watched), before, strict=True):
                    np.testing.assert_array_equal(a, b)
                assert int(acc.micro_step) == i + 1
                assert not bool(acc.last_step_updated)
        assert bool(acc.last_step_updated) and int(acc.micro_step) == 0
        lo = u * K * B
        ref_step(x[lo : lo + K * B], y[lo : lo + K * B])
    return model, ref_model, acc, ref


# ------------------------------------------------------------------ semantics


@pytest.mark.parametrize("name", sorted(INNERS))
def test_micro_batches_equal_big_batch_custom_loop(name):
    model, ref_model, acc, ref = _run_custom_loop(INNERS[name])
    _assert_all_close(_values(model.trainable_variables), _values(ref_model.trainable_variables))
    # The inner optimizer saw exactly the reference's steps: iterations and every moment.
    assert int(acc.iterations) == int(acc.inner_optimizer.iterations) == int(ref.iterations) == 3
    _assert_all_close(_values(acc.inner_optimizer.variables), _values(ref.variables))


@pytest.mark.parametrize(
    "name",
    ["adamw"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ["sgd_nesterov", "adam_global_clipnorm"]],
)
def test_micro_batches_equal_big_batch_xla(name):
    model, ref_model, acc, _ = _run_custom_loop(INNERS[name], compiled=True)
    _assert_all_close(_values(model.trainable_variables), _values(ref_model.trainable_variables))
    assert int(acc.iterations) == 3


def test_sparse_embedding_gradients():
    """Embedding gradients arrive as tf.IndexedSlices; they accumulate like dense ones."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 10, size=(K * B * 2, 3))
    y = rng.normal(size=(K * B * 2, 2)).astype("float32")

    def embedding_model():
        keras.utils.set_random_seed(3)
        return keras.Sequential(
            [keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 2), keras.layers.Flatten(),
             keras.layers.Dense(2)]
        )  # fmt: skip

    model, ref_model = embedding_model(), embedding_model()
    assert isinstance(_grads(model, ids[:B], y[:B])[0], tf.IndexedSlices)
    acc = GradientAccumulator(keras.optimizers.SGD(0.5, momentum=0.9), K)
    ref = keras.optimizers.SGD(0.5, momentum=0.9)
    step = tf.function(lambda xb, yb: acc.apply(_grads(model, xb, yb), model.trainable_variables))
    for u in range(2):
        for i in range(K):
            lo = (u * K + i) * B
            step(ids[lo : lo + B], y[lo : lo + B])
        lo = u * K * B
        ref.apply(_grads(ref_model, ids[lo : lo + K * B], y[lo : lo + K * B]),
                  ref_model.trainable_variables)  # fmt: skip
    _assert_all_close(_values(model.trainable_variables), _values(ref_model.trainable_variables))


def test_clipping_sees_the_mean_gradient_once():
    """Guard that the clip test can fail: clipping each micro-batch would differ."""
    x, y = _data(K * B)
    model = _model()
    micro = [_grads(model, x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]) for i in range(K)]
    mean = [sum(gs) / K for gs in zip(*micro, strict=True)]
    norm = math.sqrt(sum(float(tf.reduce_sum(g * g)) for g in mean))
    assert norm > 0.05  # the global_clipnorm used above is active
    clip_each = [
        sum(tf.clip_by_global_norm(gs, 0.05)[0][j] for gs in micro) / K for j in range(len(mean))
    ]
    clip_mean = tf.clip_by_global_norm(mean, 0.05)[0]
    assert (
        max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(clip_each, clip_mean, strict=True))
        > 1e-4
    )


def test_sgd_matches_numpy_formula():
    """w_{t+1} = w_t - lr * mean_i g_i, written out independently."""
    x, y = _data(K * B)
    model = _model()
    w0 = _values(model.trainable_variables)
    micro = [
        [g.numpy() for g in _grads(model, x[i * B : (i + 1) * B], y[i * B : (i + 1) * B])]
        for i in range(K)
    ]
    acc = GradientAccumulator(keras.optimizers.SGD(0.1), K)
    for i in range(K):
        acc.apply(
            _grads(model, x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]),
            model.trainable_variables,
        )
    expected = [w - 0.1 * np.mean([m[j] for m in micro], axis=0) for j, w in enumerate(w0)]
    _assert_all_close(_values(model.trainable_variables), expected)


def _fit_pair(make_inner, epochs=2, **compile_kwargs):
    x, y = _data(64)
    model, ref_model = _model(), _model()
    acc = GradientAccumulator(make_inner(), K)
    model.compile(optimizer=acc, loss="mse", **compile_kwargs)
    ref_model.compile(optimizer=make_inner(), loss="mse", **compile_kwargs)
    model.fit(x, y, batch_size=B, epochs=epochs, shuffle=False, verbose=0)
    ref_model.fit(x, y, batch_size=K * B, epochs=epochs, shuffle=False, verbose=0)
    return model, ref_model, acc


@pytest.mark.parametrize(
    "name, compile_kwargs",
    [
        ("sgd_momentum", {}),
        pytest.param("adamw", {"jit_compile": True}, marks=pytest.mark.slow),
        pytest.param("adam", {"steps_per_execution": 3}, marks=pytest.mark.slow),
        ("sgd_nesterov", {"jit_compile": True, "steps_per_execution": 5}),
    ],
)
def test_micro_batches_equal_big_batch_fit(name, compile_kwargs):
    model, ref_model, acc = _fit_pair(INNERS[name], **compile_kwargs)
    _assert_all_close(model.get_weights(), ref_model.get_weights())
    assert int(acc.iterations) == 2 * 64 // (K * B)
    assert int(acc.micro_step) == 0


def _constant_gradient_model():
    """loss = sum(w * c): the gradient is c whatever w, so updates reveal the learning rate."""
    w = keras.Variable(np.zeros(3, "float32"), name="w")
    c = tf.constant([1.0, 2.0, 3.0])
    return w, c


def _learning_rates_used(optimizer, w, c, micro_steps):
    """Learning rate of each real update, read back from the SGD weight change."""
    rates = []
    for _ in range(micro_steps):
        before = w.numpy().copy()
        optimizer.apply([c], [w])
        delta = before - w.numpy()
        if np.any(delta != 0):
            rates.append(float(delta[0] / 1.0))
    return rates


def test_schedule_at_real_update_count_fixes_keras_k1():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[0, 1, 2, 3, 4, 5, 6, 7], values=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    )
    # schedule(0) = 1.0, schedule(1) = 0.9, schedule(3) = 0.7, schedule(7) = 0.3
    w, c = _constant_gradient_model()
    keras_builtin = keras.optimizers.SGD(schedule, gradient_accumulation_steps=K)
    keras_rates = _learning_rates_used(keras_builtin, w, c, 2 * K)
    # keras-defects.md#schedule-at-micro-step: Keras' own accumulation evaluates the schedule at the micro-batch counter.
    with keras_defect("schedule-at-micro-step"):
        np.testing.assert_allclose(keras_rates, [0.7, 0.3], rtol=1e-6)

    w, c = _constant_gradient_model()
    acc = GradientAccumulator(keras.optimizers.SGD(schedule), K)
    np.testing.assert_allclose(_learning_rates_used(acc, w, c, 2 * K), [1.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(float(acc.learning_rate), 0.8, rtol=1e-6)  # schedule(2)


def test_schedule_in_fit_is_evaluated_at_real_updates():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    x, y = _data(64)
    model = _model()
    acc = GradientAccumulator(keras.optimizers.SGD(schedule), K)
    model.compile(optimizer=acc, loss="mse", jit_compile=True)
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)  # 16 micro-batches, 4 updates
    assert int(acc.iterations) == 4
    np.testing.assert_allclose(float(acc.learning_rate), 0.1 * 0.5**4, rtol=1e-6)


def test_loss_scale_factor_is_the_inner_one():
    inner = keras.optimizers.SGD(0.1, loss_scale_factor=8.0)
    acc = GradientAccumulator(inner, K)
    assert acc.loss_scale_factor == 8.0
    np.testing.assert_allclose(float(acc.scale_loss(tf.constant(2.0))), 16.0)
    keras.optimizers.LossScaleOptimizer(acc)  # switches the inner's static factor off
    assert inner.loss_scale_factor is None and acc.loss_scale_factor is None


def test_docstring_examples_run():
    import doctest

    import tfkit.optimizers.gradient_accumulator

    result = doctest.testmod(tfkit.optimizers.gradient_accumulator, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_learning_rate_reads_and_sets_the_inner_rate():
    inner = keras.optimizers.Adam(0.01)
    acc = GradientAccumulator(inner, K)
    np.testing.assert_allclose(float(acc.learning_rate), 0.01, rtol=1e-6)
    acc.learning_rate = 0.002
    np.testing.assert_allclose(float(inner.learning_rate), 0.002, rtol=1e-6)


def test_public_state_and_chain_convention():
    inner = keras.optimizers.SGD(0.1)
    acc = GradientAccumulator(inner, 3)
    lso = keras.optimizers.LossScaleOptimizer(acc)
    assert acc.inner_optimizer is inner and acc.accumulation_steps == 3
    assert list(optimizer_chain(lso)) == [lso, acc, inner] and innermost(lso) is inner
    with pytest.raises(ValueError, match="micro_step"):
        _ = acc.micro_step
    w, c = _constant_gradient_model()
    acc.apply([c], [w])
    assert int(acc.micro_step) == 1 and not bool(acc.last_step_updated)
    assert int(acc.dropped_micro_batches) == 0 and int(acc.iterations) == 0


def test_raw_tf_variables_in_a_custom_loop():
    w = tf.Variable([1.0, 2.0], name="w")
    acc = GradientAccumulator(keras.optimizers.SGD(1.0), 2)
    acc.apply([tf.constant([1.0, 1.0])], [w])
    acc.apply([tf.constant([3.0, 1.0])], [w])
    np.testing.assert_allclose(w.numpy(), [-1.0, 1.0])


def test_accumulators_are_float32_for_float16_variables():
    model = _model(dtype="float16")
    acc = GradientAccumulator(keras.optimizers.SGD(0.1), K)
    acc.build(model.trainable_variables)
    assert [a.dtype for a in acc._accumulators] == ["float32"] * 4
    x, y = _data(K * B)
    for i in range(K):
        acc.apply(
            _grads(model, x[i * B : (i + 1) * B].astype("float16"), y[i * B : (i + 1) * B]),
            model.trainable_variables,
        )
    assert int(acc.iterations) == 1
    assert all(v.dtype == "float16" for v in model.trainable_variables)


# ----------------------------------------------------------------- non-finite


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_micro_batch_is_dropped(bad):
    """The window still closes after k calls; it divides by the weight of the finite ones."""
    x, y = _data(K * B)
    model, ref_model = _model(), _model()
    acc = GradientAccumulator(keras.optimizers.Adam(0.01), K)
    acc.build(model.trainable_variables)
    state = model.trainable_variables + acc.inner_optimizer.variables
    feed = [(x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]) for i in range(K - 1)]
    x_bad = feed[1][0].copy()
    x_bad[0, 0] = bad
    feed.insert(2, (x_bad, feed[1][1]))  # a poisoned micro-batch in the middle
    for i, (xb, yb) in enumerate(feed):
        before = _values(state + acc._accumulators)
        acc.apply(_grads(model, xb, yb), model.trainable_variables)
        if i == 2:
            assert not all(np.all(np.isfinite(g)) for g in _grads(model, xb, yb))
            # Not added, not weighed: accumulators and weights unchanged.
            for a, b in zip(_values(state + acc._accumulators), before, strict=True):
                np.testing.assert_array_equal(a, b)
            assert int(acc.micro_step) == 3 and int(acc.dropped_micro_batches) == 1
            np.testing.assert_equal(float(acc._window_weight.numpy()), 2.0)
    assert int(acc.iterations) == 1 and int(acc.dropped_micro_batches) == 1
    assert int(acc.micro_step) == 0
    # Reference: the 3 finite micro-batches as one batch.
    ref = keras.optimizers.Adam(0.01)
    ref.apply(_grads(ref_model, x[: 3 * B], y[: 3 * B]), ref_model.trainable_variables)
    _assert_all_close(_values(model.trainable_variables), _values(ref_model.trainable_variables))


def test_window_of_only_non_finite_micro_batches_makes_no_update():
    w = keras.Variable(np.ones(2, "float32"))
    acc = GradientAccumulator(keras.optimizers.SGD(0.1, momentum=0.9), 2)
    acc.apply([tf.constant([np.nan, 1.0])], [w])
    acc.apply([tf.constant([1.0, 1.0])], [w], weight=tf.constant(np.inf))
    assert int(acc.iterations) == 0 and int(acc.micro_step) == 0
    assert int(acc.dropped_micro_batches) == 2 and not bool(acc.last_step_updated)
    np.testing.assert_array_equal(w.numpy(), [1.0, 1.0])


def test_non_finite_micro_batch_in_fit_keeps_weights_finite():
    x, y = _data(64)
    x[5, 1] = np.nan  # poisons micro-batch 1
    model = _model()
    acc = GradientAccumulator(keras.optimizers.SGD(0.1, momentum=0.9), K)
    model.compile(optimizer=acc, loss="mse", jit_compile=True)
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert int(acc.dropped_micro_batches) == 1
    # 16 micro-batches, one dropped: 4 windows, 4 updates, nothing left open.
    assert int(acc.iterations) == 4 and int(acc.micro_step) == 0


# ---------------------------------------------------- window across epochs


def test_window_carries_over_epochs_and_flush_applies_the_partial_window():
    x, y = _data(24)
    model = _model()
    acc = GradientAccumulator(keras.optimizers.SGD(0.1, momentum=0.9), K)
    model.compile(optimizer=acc, loss="mse")
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)  # 6 micro-batches
    assert int(acc.iterations) == 1 and int(acc.micro_step) == 2
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)  # 12 in total
    assert int(acc.iterations) == 3 and int(acc.micro_step) == 0

    # Reference for flush: the inner optimizer on the mean of the 2 leftover micro-batches.
    model.fit(x[:8], y[:8], batch_size=B, epochs=1, shuffle=False, verbose=0)
    assert int(acc.micro_step) == 2 and int(acc.iterations) == 3
    ref_model = _model()
    ref_model.set_weights(model.get_weights())
    ref = _clone(acc.inner_optimizer)
    ref.build(ref_model.trainable_variables)
    ref.set_weights(_values(acc.inner_optimizer.variables))
    ref.apply(_grads(ref_model, x[:8], y[:8]), ref_model.trainable_variables)

    assert bool(acc.flush())
    assert int(acc.iterations) == 4 and int(acc.micro_step) == 0
    _assert_all_close(model.get_weights(), ref_model.get_weights())
    # An empty window: flush does nothing.
    before = model.get_weights()
    assert not bool(acc.flush())
    assert int(acc.iterations) == 4
    _assert_all_close(model.get_weights(), before, rtol=0, atol=0)


def test_flush_inside_tf_function():
    w, c = _constant_gradient_model()
    acc = GradientAccumulator(keras.optimizers.SGD(0.5), K)
    acc.apply([c], [w])
    acc.apply([2 * c], [w])
    tf.function(acc.flush, jit_compile=True)()
    np.testing.assert_allclose(w.numpy(), -0.5 * 1.5 * c.numpy(), rtol=1e-6)


# --------------------------------------------------------- mixed precision


def test_mixed_float16_compile_wraps_in_keras_loss_scale_optimizer():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    x, y = _data(64)
    model = _model()
    acc = GradientAccumulator(keras.optimizers.Adam(0.01), K)
    model.compile(optimizer=acc, loss="mse", jit_compile=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer is acc
    before = model.get_weights()
    model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert int(acc.iterations) == 4 and int(model.optimizer.iterations) == 4
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert [a.dtype for a in acc._accumulators] == ["float32"] * 4
    assert any(np.any(a != b) for a, b in zip(model.get_weights(), before, strict=True))


def test_loss_scale_optimizer_outside_matches_unscaled_and_skips_non_finite():
    x, y = _data(K * B)
    model, ref_model = _model(), _model()
    acc = GradientAccumulator(keras.optimizers.SGD(0.1, momentum=0.9), K)
    lso = keras.optimizers.LossScaleOptimizer(acc, initial_scale=1024.0)
    lso.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = lso.scale_loss(tf.reduce_mean(tf.square(model(xb) - yb)))
        lso.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    step(x[:B], y[:B])
    inf_grads = [tf.fill(v.shape, np.inf) for v in model.trainable_variables]
    before = _values(model.trainable_variables + acc._accumulators)
    lso.apply(inf_grads, model.trainable_variables)  # skipped by the loss scaler
    _assert_all_close(_values(model.trainable_variables + acc._accumulators), before, 0, 0)
    assert float(lso.dynamic_scale) == 512.0 and int(acc.micro_step) == 1
    for i in range(1, K):
        step(x[i * B : (i + 1) * B], y[i * B : (i + 1) * B])
    assert int(acc.iterations) == 1
    ref = keras.optimizers.SGD(0.1, momentum=0.9)
    ref.apply(_grads(ref_model, x, y), ref_model.trainable_variables)
    _assert_all_close(_values(model.trainable_variables), _values(ref_model.trainable_variables))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "steps, error",
    [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)],
)
def test_bad_accumulation_steps(steps, error):
    with pytest.raises(error, match=rf"accumulation_steps={steps!r}"):
        GradientAccumulator(keras.optimizers.SGD(0.1), steps)


@pytest.mark.parametrize("inner", ["adam", None, tf.keras.optimizers.schedules.ExponentialDecay])
def test_inner_must_be_a_keras_optimizer(inner):
    with pytest.raises(TypeError, match="inner_optimizer.*keras.optimizers.Optimizer"):
        GradientAccumulator(inner, 4)


def test_loss_scale_optimizer_inside_explains_the_order():
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match=r"LossScaleOptimizer\(GradientAccumulator\(inner, k\)\)"):
        GradientAccumulator(lso, 4)


def test_other_wrong_inners_and_arguments():
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        GradientAccumulator(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), 4)
    with pytest.raises(ValueError, match="product"):
        GradientAccumulator(GradientAccumulator(keras.optimizers.SGD(0.1), 2), 2)
    with pytest.raises(ValueError, match="clipnorm"):
        GradientAccumulator(keras.optimizers.SGD(0.1), 2, clipnorm=1.0)


# ---------------------------------------------------- checkpoint and saving


def _train_micro_steps(model, acc, x, y, start, count):
    for i in range(start, start + count):
        acc.apply(
            _grads(model, x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]),
            model.trainable_variables,
        )


def test_checkpoint_mid_window_continues_the_same_window(tmp_path):
    x, y = _data(64)
    model = _model()
    acc = GradientAccumulator(keras.optimizers.Adam(0.01), K)
    _train_micro_steps(model, acc, x, y, 0, 6)  # one update + 2 micro-batches in the window
    path = tf.train.Checkpoint(model=model, optimizer=acc).save(str(tmp_path / "ckpt"))
    _train_micro_steps(model, acc, x, y, 6, 6)
    expected = model.get_weights()

    model2 = _model(seed=99)
    acc2 = GradientAccumulator(keras.optimizers.Adam(0.01), K)
    acc2.build(model2.trainable_variables)
    tf.train.Checkpoint(model=model2, optimizer=acc2).restore(path).assert_consumed()
    assert int(acc2.micro_step) == 2 and int(acc2.iterations) == 1
    _train_micro_steps(model2, acc2, x, y, 6, 6)
    _assert_all_close(model2.get_weights(), expected)
    assert int(acc2.iterations) == 3


class _InterruptAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated preemption")


def test_backup_and_restore_mid_window(tmp_path):
    x, y = _data(24)  # 6 micro-batches per epoch: every epoch ends mid-window

    def fresh():
        model = _model()
        model.compile(optimizer=GradientAccumulator(keras.optimizers.Adam(0.01), K), loss="mse")
        return model

    reference = fresh()
    reference.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="preemption"):
        interrupted.fit(
            x, y, batch_size=B, epochs=3, shuffle=False, verbose=0,
            callbacks=[backup, _InterruptAtEpoch(2)],
        )  # fmt: skip
    resumed = fresh()
    resumed.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0, callbacks=[backup])
    assert int(resumed.optimizer.iterations) == 4 and int(resumed.optimizer.micro_step) == 2
    _assert_all_close(resumed.get_weights(), reference.get_weights())


def test_get_config_round_trip_with_schedule():
    schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=100)
    acc = GradientAccumulator(keras.optimizers.AdamW(schedule, weight_decay=0.05), 8, name="acc")
    config = acc.get_config()
    json.dumps(config)  # plain data, no lambdas
    restored = GradientAccumulator.from_config(config)
    assert restored.get_config() == config
    assert isinstance(restored.inner_optimizer, keras.optimizers.AdamW)
    assert restored.accumulation_steps == 8 and restored.name == "acc"
    again = keras.optimizers.deserialize(keras.optimizers.serialize(acc))
    assert isinstance(again, GradientAccumulator) and again.get_config() == config


def test_keras_saving_safe_mode_round_trips_optimizer_and_window(tmp_path):
    x, y = _data(24)
    model = _model()
    acc = GradientAccumulator(keras.optimizers.SGD(0.1, momentum=0.9), K)
    model.compile(optimizer=acc, loss="mse")
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)  # mid-window
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.optimizer, GradientAccumulator)
    assert loaded.optimizer.get_config() == acc.get_config()
    assert int(loaded.optimizer.micro_step) == 2 and int(loaded.optimizer.iterations) == 1
    _assert_all_close(_values(loaded.optimizer.variables), _values(acc.variables), 0, 0)
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    _assert_all_close(loaded.get_weights(), model.get_weights())


# --------------------------------------------------------------- distribution


def _fit_under(strategy, make_inner, x, y, batch, epochs=2):
    with strategy.scope():
        model = _model()
        acc = GradientAccumulator(make_inner(), K)
        model.compile(optimizer=acc, loss="mse")
    model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    return model, acc


@pytest.mark.parametrize(
    "name",
    ["adamw", "adam_global_clipnorm"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ["sgd_clipnorm", "sgd_clipvalue"]],
)
def test_mirrored_fit_equals_single_device(mirrored_strategy, name):
    x, y = _data(64)
    single, _ = _fit_under(tf.distribute.get_strategy(), INNERS[name], x, y, batch=8)
    mirrored, acc = _fit_under(mirrored_strategy, INNERS[name], x, y, batch=8)
    _assert_all_close(mirrored.get_weights(), single.get_weights())
    assert acc.iterations.numpy() == 4 and acc.micro_step.numpy() == 0


def test_mirrored_custom_loop_non_finite_on_one_replica_and_flush(mirrored_strategy):
    """A poisoned shard on one replica drops that replica's share only; no flag is all-reduced."""
    x, y = _data(48)
    x[20, 0] = np.nan  # global batch 2 (of 8 samples), replica 1's half (samples 20..23)
    with mirrored_strategy.scope():
        model = _model()
        acc = GradientAccumulator(keras.optimizers.SGD(0.1, momentum=0.9), K)
        acc.build(model.trainable_variables)

    @tf.function
    def step(batch):
        def replica_fn(xb, yb):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(xb) - yb), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=8)
            acc.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        mirrored_strategy.run(replica_fn, args=batch)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    for batch in mirrored_strategy.experimental_distribute_dataset(dataset):
        step(batch)
    # 6 global batches: one window of 4 (7 of its 8 shards finite), 2 left open.
    assert acc.dropped_micro_batches.numpy() == 1
    assert acc.iterations.numpy() == 1 and acc.micro_step.numpy() == 2
    assert bool(acc.flush()) and acc.iterations.numpy() == 2
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())

    # Single-device reference: the mean over the finite samples of each window.
    ref_model = _model()
    ref = keras.optimizers.SGD(0.1, momentum=0.9)
    first = np.r_[0:20, 24:32]
    ref.apply(_grads(ref_model, x[first], y[first]), ref_model.trainable_variables)
    ref.apply(_grads(ref_model, x[32:48], y[32:48]), ref_model.trainable_variables)
    _assert_all_close(model.get_weights(), ref_model.get_weights())


def test_mirrored_with_mixed_float16(mirrored_strategy):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    x, y = _data(64)
    with mirrored_strategy.scope():
        model = _model()
        acc = GradientAccumulator(keras.optimizers.Adam(0.01), K)
        model.compile(optimizer=acc, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert acc.iterations.numpy() == 2 and acc.micro_step.numpy() == 0
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_mirrored_checkpoint_mid_window_restores_the_per_replica_sums(mirrored_strategy, tmp_path):
    """Saving reads the sum of the replicas' partial sums; restoring must give the same update."""
    x, y = _data(96)

    def setup():
        with mirrored_strategy.scope():
            model = _model()
            acc = GradientAccumulator(keras.optimizers.Adam(0.01), K)
            acc.build(model.trainable_variables)

        @tf.function
        def step(batch):
            def replica_fn(xb, yb):
                with tf.GradientTape() as tape:
                    per_example = tf.reduce_mean(tf.square(model(xb) - yb), axis=-1)
                    loss = tf.nn.compute_average_loss(per_example, global_batch_size=8)
                grads = tape.gradient(loss, model.trainable_variables)
                acc.apply(grads, model.trainable_variables)

            mirrored_strategy.run(replica_fn, args=batch)

        return model, acc, step

    batches = list(
        mirrored_strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        )
    )
    model, acc, step = setup()
    for batch in batches[:6]:
        step(batch)
    path = tf.train.Checkpoint(model=model, optimizer=acc).save(str(tmp_path / "ckpt"))
    for batch in batches[6:]:
        step(batch)
    expected = model.get_weights()

    model2, acc2, step2 = setup()
    tf.train.Checkpoint(model=model2, optimizer=acc2).restore(path).assert_consumed()
    assert acc2.micro_step.numpy() == 2 and acc2.iterations.numpy() == 1
    for batch in batches[6:]:
        step2(batch)
    assert acc2.iterations.numpy() == 3
    _assert_all_close(model2.get_weights(), expected)
