"""tfkit.precision.LossScaleOptimizer: bounds, skipped steps, fit / custom loops / XLA / MirroredStrategy."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.optimizers import find_in_chain, innermost
from tfkit.precision.loss_scale_optimizer import LossScaleOptimizer


def reference_scales(finite_flags, initial, growth, min_scale, max_scale):
    """Independent statement of the rule: (scale used by the step, scale after, skipped)."""
    scale, run, skipped, out = initial, 0, 0, []
    for finite in finite_flags:
        used = scale
        if finite:
            run += 1
            if run == growth:
                scale, run = min(2 * scale, max_scale), 0
        else:
            scale, run, skipped = max(scale / 2, min_scale), 0, skipped + 1
        out.append((used, scale, skipped))
    return out


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"min_scale": 0.0}, "min_scale"),
        ({"min_scale": -1.0}, "min_scale"),
        ({"max_scale": math.inf}, "max_scale"),
        ({"initial_scale": math.nan}, "initial_scale"),
        ({"initial_scale": "big"}, "initial_scale"),
        ({"min_scale": True}, "min_scale"),
        ({"initial_scale": 4.0, "min_scale": 8.0}, "min_scale <= initial_scale"),
        ({"initial_scale": 64.0, "max_scale": 32.0}, "initial_scale <= max_scale"),
        ({"dynamic_growth_steps": 0}, "dynamic_growth_steps"),
        ({"dynamic_growth_steps": 2.5}, "dynamic_growth_steps"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument) as err:
        LossScaleOptimizer(keras.optimizers.SGD(), **kwargs)
    assert "Received" in str(err.value)


def test_inner_optimizer_must_be_an_optimizer():
    with pytest.raises(TypeError, match="inner_optimizer"):
        LossScaleOptimizer("adam")


def test_refuses_to_wrap_a_loss_scale_optimizer_twice():
    for inner in (
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(), name="keras_lso"),
        LossScaleOptimizer(keras.optimizers.SGD(), name="tfkit_lso"),
    ):
        with pytest.raises(
            ValueError, match=f"already contains a LossScaleOptimizer.*{inner.name}"
        ):
            LossScaleOptimizer(inner)


def test_defaults_and_read_only_properties():
    opt = LossScaleOptimizer(keras.optimizers.SGD())
    assert (opt.initial_scale, opt.min_scale, opt.max_scale) == (2.0**15, 1.0, 2.0**24)
    assert opt.dynamic_growth_steps == 2000
    assert float(opt.loss_scale) == 2.0**15 and int(opt.skipped_steps) == 0  # before build
    with pytest.raises(AttributeError):
        opt.loss_scale = 1.0
    with pytest.raises(AttributeError):
        opt.skipped_steps = 0
    opt.build([keras.Variable(np.zeros(2, "float32"))])
    assert float(opt.loss_scale) == 2.0**15 and int(opt.skipped_steps) == 0


def test_properties_readable_in_an_xla_function():
    """A custom train_step can put the scale into its returned metrics (no host sync)."""
    opt = LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=8.0)
    w = keras.Variable(np.ones(2, "float32"))
    opt.build([w])

    @tf.function(jit_compile=True)
    def step(g):
        opt.apply([g], [w])
        return {"loss_scale": opt.loss_scale, "skipped_steps": opt.skipped_steps}

    logs = step(tf.constant([np.inf, 1.0]))
    assert float(logs["loss_scale"]) == 4.0 and int(logs["skipped_steps"]) == 1


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "bfloat16"])
def test_bfloat16_policy_refuses_loss_scaling(policy):
    keras.config.set_dtype_policy(policy)
    with pytest.raises(ValueError, match="bfloat16 keeps float32's 8-bit exponent"):
        LossScaleOptimizer(keras.optimizers.SGD())


def test_bfloat16_compile_adds_no_loss_scaling_and_trains():
    from tfkit.precision.policy import set_policy

    with set_policy("mixed_bfloat16"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.01), "mse")
    assert type(model.optimizer) is keras.optimizers.SGD
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    history = model.fit(x, x.sum(1, keepdims=True), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_compile_under_mixed_float16_does_not_wrap_twice():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    opt = LossScaleOptimizer(keras.optimizers.Adam())
    model.compile(opt, "mse")
    assert model.optimizer is opt
    # Control: a plain optimizer does get Keras' wrapper, so the check above can fail.
    model.compile(keras.optimizers.Adam(), "mse")
    assert type(model.optimizer) is keras.optimizers.LossScaleOptimizer


def test_found_through_the_inner_optimizer_chain():
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    opt = LossScaleOptimizer(sgd)
    assert find_in_chain(opt, "loss_scale") is opt
    assert find_in_chain(opt, "skipped_steps") is opt
    assert find_in_chain(opt, "momentum") is sgd
    assert innermost(opt) is sgd


# -------------------------------------------------- the rule, step by step


FLAGS = [True, False, False, False] + [True] * 12 + [False, True]


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_custom_loop_follows_reference(mode):
    """scale_loss -> tape.gradient -> apply, with inf inputs on the False steps."""
    initial, growth, lo, hi = 8.0, 3, 2.0, 16.0
    opt = LossScaleOptimizer(
        keras.optimizers.SGD(0.5, momentum=0.5),
        initial_scale=initial,
        dynamic_growth_steps=growth,
        min_scale=lo,
        max_scale=hi,
    )
    w = keras.Variable(np.array([1.0, -2.0], "float32"), name="w")

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w.value * x)
            scaled = opt.scale_loss(loss)
        grads = tape.gradient(scaled, [w.value])
        opt.apply(grads, [w])

    if mode != "eager":
        step = tf.function(step, jit_compile=(mode == "xla"))

    # Independent reference: heavy-ball SGD in numpy on the finite steps only.
    ref_w, ref_velocity = np.array([1.0, -2.0]), np.zeros(2)
    expected = reference_scales(FLAGS, initial, growth, lo, hi)
    rng = np.random.default_rng(0)
    for i, finite in enumerate(FLAGS):
        x = rng.normal(size=2).astype("float32")
        if not finite:
            x[i % 2] = np.inf
        step(tf.constant(x))
        if finite:
            ref_velocity = 0.5 * ref_velocity - 0.5 * x
            ref_w = ref_w + ref_velocity
        _, scale_after, skipped = expected[i]
        assert float(opt.loss_scale) == scale_after, f"step {i}"
        assert int(opt.skipped_steps) == skipped, f"step {i}"
        assert int(opt.iterations) == sum(FLAGS[: i + 1]), f"step {i}"
        np.testing.assert_allclose(w.numpy(), ref_w, rtol=1e-6, atol=1e-6, err_msg=f"step {i}")
    # The sequence hits the floor (8 -> 4 -> 2 -> 2) and the ceiling (2 -> 4 -> 8 -> 16, stays).
    assert min(s for _, s, _ in expected) == lo and max(s for _, s, _ in expected) == hi


# From tests/golden/make_precision_golden.py: torch.amp.GradScaler(init_scale=8,
# growth_interval=3) + torch.optim.SGD(lr=0.5, momentum=0.5) on the FLAGS sequence.
TORCH_SCALES = [
    8.0,
    4.0,
    2.0,
    1.0,
    1.0,
    1.0,
    2.0,
    2.0,
    2.0,
    4.0,
    4.0,
    4.0,
    8.0,
    8.0,
    8.0,
    16.0,
    8.0,
    8.0,
]
TORCH_WEIGHTS = [
    [0.9371349, -1.9339476], [0.9371349, -1.9339476], [0.9371349, -1.9339476],
    [0.9371349, -1.9339476], [1.2575699, -1.2682106], [1.7294247, -0.9560052],
    [3.1278675, -0.6905066], [4.4500446, -0.1916236], [5.3832626, 0.215968],
    [5.6440563, -0.1014929], [5.8387203, -0.9434551], [6.2686496, -1.5401912],
    [6.0318794, -1.8855654], [6.285244, -1.5973898], [6.640789, -1.5633996],
    [7.3233709, -1.4418167], [7.3233709, -1.4418167], [7.557332, -1.5587115],
]  # fmt: skip


@pytest.mark.parametrize("jit_compile", [False, True])
def test_unbounded_matches_torch_grad_scaler(jit_compile):
    """With bounds out of reach, the scale and the weights follow PyTorch's GradScaler."""
    opt = LossScaleOptimizer(
        keras.optimizers.SGD(0.5, momentum=0.5),
        initial_scale=8.0,
        dynamic_growth_steps=3,
        min_scale=2.0**-20,
        max_scale=2.0**20,
    )
    w = keras.Variable(np.array([1.0, -2.0], "float32"))

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            scaled = opt.scale_loss(tf.reduce_sum(w.value * x))
        opt.apply(tape.gradient(scaled, [w.value]), [w])

    rng = np.random.default_rng(0)
    for i, finite in enumerate(FLAGS):
        x = rng.normal(size=2).astype("float32")
        if not finite:
            x[i % 2] = np.inf
        step(tf.constant(x))
        assert float(opt.loss_scale) == TORCH_SCALES[i], f"step {i}"
        np.testing.assert_allclose(w.numpy(), TORCH_WEIGHTS[i], rtol=1e-6, atol=1e-6)
    assert int(opt.skipped_steps) == FLAGS.count(False)


# ------------------------------------------------------- model.fit, float16


class _Recorder(keras.callbacks.Callback):
    """Per-batch snapshots of weights, optimizer slots, iterations, scale, skips, loss."""

    def on_train_begin(self, logs=None):
        self.rows = [self._snapshot(None)]

    def on_train_batch_end(self, batch, logs=None):
        self.rows.append(self._snapshot(logs))

    def _snapshot(self, logs):
        opt = self.model.optimizer
        inner = innermost(opt)
        slots = [v.numpy().copy() for v in inner.variables if v is not inner.iterations]
        return {
            "weights": [w.numpy().copy() for w in self.model.weights],
            "slots": slots if inner.built else None,
            "iterations": int(opt.iterations),
            "scale": float(opt.loss_scale),
            "skipped": int(opt.skipped_steps),
            "loss": None if logs is None else logs["loss"],
        }


def _regression_data(n=48, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x @ rng.normal(size=(features, 1))).astype("float32")
    return x, y


def _mixed_model(features=8):
    keras.config.set_dtype_policy("mixed_float16")
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fit_skips_float16_overflow_and_recovers(jit_compile):
    x, y = _regression_data()
    bad = [2, 3]  # two overflowing batches in a row: 4 -> 2 -> 2 (floor), not 1
    x_poisoned = x.copy()
    for b in bad:
        x_poisoned[b * 8] = 1e5  # float16 max is 65504: the hidden layer overflows
    model = _mixed_model()
    opt = LossScaleOptimizer(
        keras.optimizers.Adam(1e-2), initial_scale=4.0, min_scale=2.0, max_scale=2.0**10
    )
    model.compile(opt, "mse", jit_compile=jit_compile)
    assert model.optimizer is opt
    clean_loss_before = model.evaluate(x, y, verbose=0)
    recorder = _Recorder()
    model.fit(x_poisoned, y, batch_size=8, epochs=1, shuffle=False, callbacks=[recorder], verbose=0)
    rows = recorder.rows  # rows[k + 1] is after batch k
    for b in bad:
        before, after = rows[b], rows[b + 1]
        assert not math.isfinite(after["loss"]) or after["loss"] > 1e6  # the batch did overflow
        for w0, w1 in zip(before["weights"], after["weights"], strict=True):
            np.testing.assert_array_equal(w1, w0)
        for s0, s1 in zip(before["slots"], after["slots"], strict=True):
            np.testing.assert_array_equal(s1, s0)
        assert after["iterations"] == before["iterations"]
    assert [r["scale"] for r in rows] == [4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0]
    assert [r["skipped"] for r in rows] == [0, 0, 0, 1, 2, 2, 2]
    assert rows[-1]["iterations"] == 6 - len(bad)
    # Recovery: the batches after the overflow update the weights again, all finite.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(rows[4]["weights"], rows[5]["weights"], strict=True)
    )
    assert all(np.all(np.isfinite(w)) for w in rows[-1]["weights"])
    model.fit(x_poisoned, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    assert int(opt.skipped_steps) == 2 + 4 * len(bad)
    assert float(opt.loss_scale) == 2.0
    assert model.evaluate(x, y, verbose=0) < 0.5 * clean_loss_before


def test_fit_growth_capped_at_max_scale():
    x, y = _regression_data(n=80)
    model = _mixed_model()
    opt = LossScaleOptimizer(
        keras.optimizers.SGD(1e-3), initial_scale=2.0, dynamic_growth_steps=3, max_scale=8.0
    )
    model.compile(opt, "mse", jit_compile=True)
    recorder = _Recorder()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[recorder], verbose=0)
    expected = reference_scales([True] * 10, 2.0, 3, 1.0, 8.0)
    assert [r["scale"] for r in recorder.rows[1:]] == [s for _, s, _ in expected]
    assert [r["scale"] for r in recorder.rows[1:]] == [2, 2, 4, 4, 4, 8, 8, 8, 8, 8]
    assert int(opt.skipped_steps) == 0 and int(opt.iterations) == 10


def test_scale_and_skips_can_be_logged_through_the_chain():
    """The contract a logging callback relies on: attribute names found via inner_optimizer."""

    class LogScale(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            owner = find_in_chain(self.model.optimizer, "loss_scale")
            logs["loss_scale"] = float(owner.loss_scale)
            logs["skipped_steps"] = int(owner.skipped_steps)

    x, y = _regression_data(n=16)
    x[0] = 1e5
    model = _mixed_model()
    model.compile(LossScaleOptimizer(keras.optimizers.SGD(1e-3), initial_scale=64.0), "mse")
    history = model.fit(
        x, y, batch_size=8, epochs=2, shuffle=False, callbacks=[LogScale()], verbose=0
    )
    assert history.history["skipped_steps"] == [1, 2]
    assert history.history["loss_scale"] == [32.0, 16.0]


# --------------------------------------------------------- MirroredStrategy


@pytest.fixture
def mirrored_strategy():
    """conftest's two-CPU MirroredStrategy, with fresh collective keys per test.

    Every MirroredStrategy numbers its collective ops from the same keys, and the
    runtime caches the shape of each key: a second strategy in the same process
    that all-reduces a differently shaped tensor fails with "Shape mismatch in
    the collective instance 100". TensorFlow's own tests bump this base
    (strategy_combinations.py); the lead may move this into tests/conftest.py.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _mirrored_fit(strategy, optimizer_factory, x, y):
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        opt = optimizer_factory(keras.optimizers.SGD(0.1))
        model.compile(opt, "mse")
    model.layers[0].set_weights([np.array([[0.5], [-0.5]], "float32"), np.zeros(1, "float32")])
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model, opt


def test_mirrored_nonfinite_on_one_replica_skips_on_all(mirrored_strategy):
    x = np.ones((4, 2), "float32")
    y = np.zeros((4, 1), "float32")
    x[3] = np.inf  # only in the second replica's half of the batch
    model, opt = _mirrored_fit(
        mirrored_strategy, lambda inner: LossScaleOptimizer(inner, initial_scale=4.0), x, y
    )
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), [[0.5], [-0.5]])
    assert float(opt.loss_scale) == 2.0 and int(opt.skipped_steps) == 1
    assert int(opt.iterations.numpy()) == 0


@pytest.mark.slow
@pytest.mark.keras_defect("loss-scale-first-replica")
def test_keras_loss_scale_optimizer_corrupts_weights_in_the_same_case(mirrored_strategy):
    """Characterises the Keras defect the test above guards against (first replica decides)."""
    x = np.ones((4, 2), "float32")
    y = np.zeros((4, 1), "float32")
    x[3] = np.inf
    model, _ = _mirrored_fit(
        mirrored_strategy,
        lambda inner: keras.optimizers.LossScaleOptimizer(inner, initial_scale=4.0),
        x,
        y,
    )
    assert not np.all(np.isfinite(model.layers[0].kernel.numpy()))


@pytest.mark.slow
def test_mirrored_fit_matches_single_device(mirrored_strategy):
    x, y = _regression_data(n=32, features=2)

    def factory(inner):
        return LossScaleOptimizer(inner, initial_scale=2.0, dynamic_growth_steps=2, max_scale=4.0)

    single, single_opt = _mirrored_fit(tf.distribute.get_strategy(), factory, x, y)
    mirrored, mirrored_opt = _mirrored_fit(mirrored_strategy, factory, x, y)
    for a, b in zip(single.weights, mirrored.weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    assert float(mirrored_opt.loss_scale) == float(single_opt.loss_scale) == 2.0


def test_mirrored_custom_loop(mirrored_strategy):
    with mirrored_strategy.scope():
        w = keras.Variable(np.array([1.0, -1.0], "float32"))
        opt = LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=8.0, min_scale=4.0)
        opt.build([w])

    @tf.function
    def step(x):
        def replica_fn(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w.value * x) / mirrored_strategy.num_replicas_in_sync
                scaled = opt.scale_loss(loss)
            opt.apply(tape.gradient(scaled, [w.value]), [w])

        mirrored_strategy.run(replica_fn, args=(x,))

    def per_replica(first, second):
        values = iter([tf.constant(first), tf.constant(second)])
        return mirrored_strategy.experimental_distribute_values_from_function(
            lambda _: next(values)
        )

    step(per_replica([1.0, 1.0], [3.0, 1.0]))  # mean gradient [2, 1]
    np.testing.assert_allclose(w.numpy(), [0.0, -1.5], rtol=1e-6)
    step(per_replica([1.0, 1.0], [np.inf, 1.0]))  # second replica overflows: skip everywhere
    np.testing.assert_allclose(w.numpy(), [0.0, -1.5], rtol=1e-6)
    assert float(opt.loss_scale) == 4.0 and int(opt.skipped_steps) == 1
    step(per_replica([1.0, 1.0], [np.inf, 1.0]))
    assert float(opt.loss_scale) == 4.0 and int(opt.skipped_steps) == 2  # floor


# ------------------------------------------------------------ serialization


def test_config_round_trip():
    opt = LossScaleOptimizer(
        keras.optimizers.Adam(3e-4),
        initial_scale=128.0,
        dynamic_growth_steps=7,
        min_scale=4.0,
        max_scale=1024.0,
        name="lso",
    )
    config = opt.get_config()
    assert config["min_scale"] == 4.0 and config["max_scale"] == 1024.0
    clone = LossScaleOptimizer.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(opt)
    assert serialized["registered_name"] == "tfkit>LossScaleOptimizer"
    restored = keras.saving.deserialize_keras_object(serialized, safe_mode=True)
    assert type(restored) is LossScaleOptimizer
    assert restored.get_config() == config


def test_saved_compiled_model_loads_with_safe_mode(tmp_path):
    x, y = _regression_data(n=16)
    x[0] = 1e5
    model = _mixed_model()
    opt = LossScaleOptimizer(keras.optimizers.Adam(1e-2), initial_scale=64.0, min_scale=8.0)
    model.compile(opt, "mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    keras.config.set_dtype_policy("mixed_bfloat16")  # loading must not depend on the global policy
    loaded = keras.saving.load_model(path, safe_mode=True)
    lopt = loaded.optimizer
    assert type(lopt) is LossScaleOptimizer
    assert (lopt.min_scale, lopt.max_scale, lopt.initial_scale) == (8.0, 2.0**24, 64.0)
    assert float(lopt.loss_scale) == 32.0 and int(lopt.skipped_steps) == 1
    assert int(lopt.iterations) == int(opt.iterations) == 1
    np.testing.assert_array_equal(loaded.predict(x[1:], verbose=0), model.predict(x[1:], verbose=0))
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(lopt.skipped_steps) == 2 and float(lopt.loss_scale) == 16.0


# ------------------------------------------------------------- composition


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_around_an_accumulating_optimizer_in_fit(jit_compile):
    """LossScaleOptimizer(accumulating inner): a skipped micro-batch leaves the accumulators alone.

    Keras' built-in ``gradient_accumulation_steps`` stands in for tfkit's
    GradientAccumulator (written in parallel; the lead adds that test at merge).
    """
    x, y = _regression_data(n=32)
    x[8] = 1e5  # batch 1 overflows in float16
    model = _mixed_model()
    inner = keras.optimizers.SGD(1e-2, momentum=0.9, gradient_accumulation_steps=2)
    opt = LossScaleOptimizer(inner, initial_scale=16.0)
    model.compile(opt, "mse", jit_compile=jit_compile)
    recorder = _Recorder()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[recorder], verbose=0)
    before, after = recorder.rows[1], recorder.rows[2]  # around the overflowing batch
    for s0, s1 in zip(before["slots"], after["slots"], strict=True):
        np.testing.assert_array_equal(s1, s0)  # accumulators and momentum untouched
    for w0, w1 in zip(before["weights"], after["weights"], strict=True):
        np.testing.assert_array_equal(w1, w0)
    assert int(opt.skipped_steps) == 1 and float(opt.loss_scale) == 8.0
    # 3 micro-batches reached the inner optimizer: one full window of 2 = one real update.
    assert int(opt.iterations) == 1
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    assert find_in_chain(model.optimizer, "loss_scale") is opt


@pytest.mark.parametrize(
    "distributed", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["single", "mirrored"]
)
def test_around_tfkit_gradient_accumulator(distributed, request):
    """LossScaleOptimizer(GradientAccumulator(inner)): the right wrapping order."""
    from tfkit import optimizers as accumulation
    strategy = (
        request.getfixturevalue("mirrored_strategy")
        if distributed
        else tf.distribute.get_strategy()
    )
    x, y = _regression_data(n=32)
    x[8] = 1e5  # micro-batch 1 overflows in float16
    with strategy.scope():
        model = _mixed_model()
        accumulator = accumulation.GradientAccumulator(keras.optimizers.SGD(1e-2, momentum=0.9), 2)
        opt = LossScaleOptimizer(accumulator, initial_scale=16.0)
        model.compile(opt, "mse", jit_compile=not distributed)
    assert model.optimizer is opt and opt.inner_optimizer is accumulator

    class Slots(keras.callbacks.Callback):
        rows = []

        def on_train_batch_end(self, batch, logs=None):
            self.rows.append([np.array(v.numpy()) for v in accumulator.variables])

    slots = Slots()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[slots], verbose=0)
    if distributed:
        # Several replicas: the overflowing shard is dropped from its window by
        # the accumulator (no all-reduce of the flag per micro-step), and the
        # scale backs off once when that window closes.
        assert int(accumulator.dropped_micro_batches) == 1
    else:
        for s0, s1 in zip(slots.rows[0], slots.rows[1], strict=True):
            np.testing.assert_array_equal(s1, s0)  # skipped micro-batch: accumulator untouched
    assert int(opt.skipped_steps) == 1 and float(opt.loss_scale) == 8.0
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    assert find_in_chain(model.optimizer, "loss_scale") is opt


_MULTI_WORKER_SCRIPT = """
import json, os, sys
index, out = json.loads(os.environ["TF_CONFIG"])["task"]["index"], sys.argv[1]
import keras, numpy as np, tensorflow as tf
from tfkit.precision.loss_scale_optimizer import LossScaleOptimizer

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    w = keras.Variable(np.array([1.0, -1.0], "float32"))
    opt = LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=8.0)
    opt.build([w])

@tf.function
def step(x):
    def replica_fn(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w.value * x) / strategy.num_replicas_in_sync
            scaled = opt.scale_loss(loss)
        opt.apply(tape.gradient(scaled, [w.value]), [w])
    strategy.run(replica_fn, args=(x,))

rows = []
for xs in ([[1.0, 1.0], [3.0, 1.0]], [[1.0, 1.0], [np.inf, 1.0]]):
    x = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(xs[index], tf.float32))
    step(x)
    rows.append([w.numpy().tolist(), float(opt.loss_scale), int(opt.skipped_steps)])
with open(out, "w") as f:
    json.dump(rows, f)
"""


@pytest.mark.slow
def test_multi_worker_overflow_on_one_worker_skips_on_both(tmp_path, root):
    """Two local workers (TF_CONFIG): worker 1 overflows, both skip and stay in sync.

    With Keras' own class each worker decides from its local gradients: worker 0
    enters the all-reduce alone and the collective aborts.
    """
    import json

    from multiworker import run_workers

    script = tmp_path / "worker.py"
    script.write_text(_MULTI_WORKER_SCRIPT)
    run_workers(str(script), lambda i: [str(tmp_path / f"{i}.json")], root=root)
    for i in range(2):
        rows = json.loads((tmp_path / f"{i}.json").read_text())
        # step 1: mean gradient [2, 1], lr 0.5; step 2: skipped everywhere, scale halved.
        assert rows == [[[0.0, -1.5], 8.0, 0], [[0.0, -1.5], 4.0, 1]], f"worker {i}"
