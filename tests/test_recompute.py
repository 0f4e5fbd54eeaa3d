"""tfkit.recompute: same gradients and state as without recomputation, everywhere.

The reference for every check is the *same* block run without recomputation
(identical weights, identical seeds): recomputation must be invisible except in
memory. Gradient tolerance float32: rtol=1e-6.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.recompute import Recompute, recompute, recompute_sequential

RTOL = 1e-6


# ---------------------------------------------------------------- helpers


def twin(build, x, **call_kwargs):
    """Two built copies of ``build()`` with identical weights."""
    a, b = build(), build()
    a(x, **call_kwargs)
    b(x, **call_kwargs)
    b.set_weights(a.get_weights())
    return a, b


def grads_of(model, x, graph=True, jit=False, **call_kwargs):
    def step():
        with tf.GradientTape() as tape:
            y = model(x, **call_kwargs)
            loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32)))
        return loss, tape.gradient(loss, model.trainable_variables)

    if graph:
        step = tf.function(step, jit_compile=jit)
    return step()


def assert_grads_equal(ga, gb, rtol=RTOL, atol=0.0):
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb, strict=True):
        assert a is not None and b is not None
        np.testing.assert_allclose(
            np.asarray(tf.cast(b, tf.float32)), np.asarray(tf.cast(a, tf.float32)), rtol, atol
        )


def mlp_block(units=8):
    return keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(units)])


def conv_block():
    return keras.Sequential(
        [keras.layers.Conv2D(4, 3, padding="same", activation="relu"), keras.layers.Conv2D(3, 1)]
    )


def layernorm_block():
    return keras.Sequential([keras.layers.LayerNormalization(), keras.layers.Dense(8)])


class AttentionBlock(keras.layers.Layer):
    """Pre-norm self-attention with residual, as in a transformer block."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization()
        self.attn = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)

    def call(self, x):
        h = self.norm(x)
        return x + self.attn(h, h)


# ---------------------------------------------------------------- the Keras defect remat-training-kwarg


class TrainingAware(keras.layers.Layer):
    """A Dense whose call takes ``training=`` (like Dropout/BatchNorm)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)

    def call(self, x, training=None):
        return self.dense(x)


def _fit_one_step(model):
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 4), "float32")
    return model.fit(x, y, epochs=1, batch_size=4, verbose=0)


@pytest.mark.keras_defect("remat-training-kwarg")
def test_keras_remat_scope_fails_in_fit_with_training_kwarg():
    """docs/keras-defects.md#remat-training-kwarg: keras.RematScope crashes in model.fit as soon as a layer takes training=."""
    with keras.RematScope(mode="full"):
        inputs = keras.Input((3,))
        outputs = TrainingAware()(inputs)
        model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="keywords arguments only when eager execution"):
        _fit_one_step(model)


def test_recompute_works_in_fit_with_training_kwarg():
    inputs = keras.Input((3,))
    outputs = Recompute(TrainingAware())(inputs)
    model = keras.Model(inputs, outputs)
    history = _fit_one_step(model)
    assert np.isfinite(history.history["loss"][0])


# ---------------------------------------------------------------- gradients


BLOCKS = {
    "dense": (mlp_block, (4, 6)),
    "conv": (conv_block, (2, 5, 5, 3)),
    "layernorm": (layernorm_block, (4, 6)),
    "attention": (AttentionBlock, (2, 5, 8)),
}


GRADIENT_CASES = [
    pytest.param(kind, mode, marks=[pytest.mark.slow] if mode == "jit" and kind != "dense" else [])
    for kind in sorted(BLOCKS)
    for mode in ("eager", "graph", "jit")
]


@pytest.mark.parametrize(("kind", "mode"), GRADIENT_CASES)
def test_gradients_equal_without_recompute(kind, mode):
    build, shape = BLOCKS[kind]
    x = tf.random.normal(shape, seed=1)
    plain, inner = twin(build, x)
    wrapped = Recompute(inner)
    graph, jit = mode != "eager", mode == "jit"
    loss_a, ga = grads_of(plain, x, graph=graph, jit=jit)
    loss_b, gb = grads_of(wrapped, x, graph=graph, jit=jit)
    np.testing.assert_allclose(loss_b, loss_a, rtol=RTOL)
    # XLA fuses the recomputed pass differently from the original forward pass
    # (e.g. the LayerNorm reduction): equal up to a few float32 ulps there.
    assert_grads_equal(ga, gb, rtol=1e-5 if jit else RTOL)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in gb)


def test_input_gradients_and_keyword_tensor_gradients():
    """The attention `key` passed as a keyword receives its gradient too."""
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    q, v, k = (tf.random.normal((2, 3, 8), seed=s) for s in (1, 2, 3))
    mha(q, v, key=k)
    wrapped = Recompute(mha)

    @tf.function
    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch([q, v, k])
            loss = tf.reduce_sum(tf.square(layer(q, v, key=k)))
        return tape.gradient(loss, [q, v, k] + mha.trainable_variables)

    assert_grads_equal(grads(mha), grads(wrapped))


def test_all_trainable_variables_receive_gradients_in_fit():
    inner = keras.Sequential(
        [
            keras.layers.Dense(8, activation="relu"),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(8),
        ]
    )
    model = keras.Sequential([keras.Input((6,)), Recompute(inner), keras.layers.Dense(1)])
    before = [v.numpy().copy() for v in inner.trainable_variables]
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    model.fit(x, np.ones((8, 1), "float32"), epochs=1, batch_size=8, verbose=0)
    for v, b in zip(inner.trainable_variables, before, strict=True):
        assert not np.allclose(v.numpy(), b), v.path


# ---------------------------------------------------------------- state: BatchNorm, Dropout


def bn_dropout_block():
    return keras.Sequential(
        [
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Activation("relu"),
            keras.layers.Dropout(0.5, seed=7),
            keras.layers.Dense(4),
        ]
    )


def _models_with_and_without(build, seed=3):
    keras.utils.set_random_seed(seed)
    plain = keras.Sequential([keras.Input((6,)), build()])
    keras.utils.set_random_seed(seed)
    wrapped = keras.Sequential([keras.Input((6,)), Recompute(build())])
    wrapped.set_weights(plain.get_weights())
    return plain, wrapped


@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_and_dropout_state_in_fit_match_no_recompute(jit):
    """Moving statistics updated once per step; same dropout masks; seed advances once."""
    plain, wrapped = _models_with_and_without(bn_dropout_block)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.normal(size=(32, 4)).astype("float32")
    for model in (plain, wrapped):
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit)
        model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    # Reference BN formula after 4 steps: m_t = 0.5 m_{t-1} + 0.5 mean(batch_t).
    # Run twice per step, the statistics would be m = 0.25 m + 0.75 mean.
    for a, b in zip(plain.variables, wrapped.variables, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    seed_states = [v for v in wrapped.non_trainable_variables if "seed" in v.path]
    assert seed_states, "the Dropout seed generator state is tracked"


def test_batchnorm_moving_mean_follows_formula_once_per_step():
    """Independent formula: one BN update per step, moving_mean = m*mu + (1-m)*batch_mean."""
    keras.utils.set_random_seed(0)
    bn = keras.layers.BatchNormalization(momentum=0.5, center=False, scale=False)
    dense = keras.layers.Dense(3, kernel_initializer="identity", use_bias=False)
    block = keras.Sequential([dense, bn])
    model = keras.Sequential([keras.Input((3,)), Recompute(block)])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.arange(12, dtype="float32").reshape(4, 3)
    model.fit(x, np.zeros((4, 3), "float32"), epochs=3, batch_size=4, verbose=0)
    expected = np.zeros(3)
    for _ in range(3):
        expected = 0.5 * expected + 0.5 * x.mean(axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("graph", [False, True])
def test_dropout_mask_replayed_in_custom_loop(graph):
    x = tf.random.normal((8, 6), seed=2)
    plain, wrapped = _models_with_and_without(bn_dropout_block)
    for _ in range(3):  # the seed advances between steps; masks must follow
        la, ga = grads_of(plain, x, graph=graph, training=True)
        lb, gb = grads_of(wrapped, x, graph=graph, training=True)
        np.testing.assert_allclose(lb, la, rtol=RTOL)
        assert_grads_equal(ga, gb)
    for a, b in zip(plain.non_trainable_variables, wrapped.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(b.numpy(), a.numpy())


def test_gaussian_noise_and_unseeded_dropout_replayed():
    """Any SeedGenerator-driven layer, including the global seed generator."""

    def build():
        return keras.Sequential(
            [keras.layers.Dense(8), keras.layers.GaussianNoise(0.3), keras.layers.Dropout(0.3)]
        )

    x = tf.random.normal((4, 6), seed=5)
    plain, wrapped = _models_with_and_without(build)
    la, ga = grads_of(plain, x, training=True)
    lb, gb = grads_of(wrapped, x, training=True)
    np.testing.assert_allclose(lb, la, rtol=RTOL)
    assert_grads_equal(ga, gb)


# ---------------------------------------------------------------- training / mask forwarding


class Probe(keras.layers.Layer):
    """Output depends on `training` and `mask`, so forwarding is observable."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.dense = keras.layers.Dense(2)

    def call(self, x, training=None, mask=None):
        y = self.dense(x)
        if training:
            y = y * 2.0
        if mask is not None:
            y = y * tf.cast(mask, y.dtype)[..., None]
        return y


def test_training_and_mask_forwarded():
    ids = np.array([[1, 2, 0], [3, 0, 0]])
    emb = keras.layers.Embedding(5, 3, mask_zero=True)
    probe = Probe()
    wrapped = Recompute(probe)
    h = emb(ids)
    for training in (True, False):
        want = probe(h, training=training)
        with tf.GradientTape():
            got = wrapped(h, training=training)
        np.testing.assert_allclose(got, want, rtol=RTOL)
        assert float(tf.reduce_sum(tf.abs(got[1, 1:]))) == 0.0  # masked steps zeroed
    # The output mask is the wrapped layer's.
    np.testing.assert_array_equal(wrapped.compute_mask(h, h._keras_mask), [[1, 1, 0], [1, 0, 0]])


def test_training_inherited_from_outer_model_in_fit():
    """In fit the model passes training=True down; the recomputed pass sees it too."""
    plain, wrapped = _models_with_and_without(bn_dropout_block, seed=11)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 6)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")

    def subclassed(inner):
        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.inner = inner

            def call(self, x, training=None):
                return self.inner(x, training=training)

        return Net()

    results = []
    for model in (subclassed(plain), subclassed(wrapped)):
        model.compile(keras.optimizers.SGD(0.05), "mse")
        results.append(model.train_on_batch(x, y))
    np.testing.assert_allclose(results[1], results[0], rtol=RTOL)
    for a, b in zip(plain.variables, wrapped.variables, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- composition


def _fit_weights(model, x, y, **compile_kwargs):
    model.compile(keras.optimizers.SGD(0.05), "mse", **compile_kwargs)
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize(
    "style", [pytest.param("functional", marks=pytest.mark.slow), "sequential", "subclassed"]
)
def test_nested_in_models_fit_matches_no_recompute(style):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")

    def make(wrap):
        keras.utils.set_random_seed(4)
        blocks = [wrap(mlp_block(6)) for _ in range(2)]
        head = keras.layers.Dense(1)
        if style == "functional":
            inputs = keras.Input((6,))
            h = inputs
            for b in blocks:
                h = h + b(h)
            return keras.Model(inputs, head(h))
        if style == "sequential":
            return keras.Sequential([keras.Input((6,)), *blocks, head])

        class Net(keras.Model):
            def __init__(self):
                super().__init__()
                self.blocks, self.head = blocks, head

            def call(self, x):
                for b in self.blocks:
                    x = x + b(x)
                return self.head(x)

        return Net()

    want = _fit_weights(make(lambda b: b), x, y)
    got = _fit_weights(make(Recompute), x, y)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_custom_training_loop_jit_matches_no_recompute():
    x = tf.random.normal((8, 6), seed=3)
    y = tf.random.normal((8, 4), seed=4)
    plain, wrapped = _models_with_and_without(bn_dropout_block)

    def make_step(model):
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)

        @tf.function(jit_compile=True)
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return loss

        return step

    steps = [make_step(plain), make_step(wrapped)]
    for _ in range(3):
        la, lb = (float(s()) for s in steps)
        np.testing.assert_allclose(lb, la, rtol=1e-5)
    for a, b in zip(plain.variables, wrapped.variables, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


def test_mirrored_strategy_fit_matches_no_recompute(mirrored_strategy):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 4)).astype("float32")
    weights = []
    for wrap in (lambda b: b, Recompute):
        with mirrored_strategy.scope():
            keras.utils.set_random_seed(6)
            model = keras.Sequential(
                [
                    keras.Input((6,)),
                    wrap(
                        keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization()])
                    ),
                    keras.layers.Dense(4),
                ]
            )
            weights.append(_fit_weights(model, x, y) + [model.non_trainable_variables[0].numpy()])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_gradients_match(policy):
    keras.config.set_dtype_policy(policy)
    x = tf.random.normal((4, 6), seed=1)
    plain, inner = twin(lambda: keras.Sequential([keras.layers.Dense(8), keras.layers.Dense(4)]), x)
    wrapped = Recompute(inner)
    assert wrapped.compute_dtype == inner.compute_dtype
    la, ga = grads_of(plain, x)
    lb, gb = grads_of(wrapped, x)
    # Same ops in the same low precision: equal up to float16 rounding.
    np.testing.assert_allclose(lb, la, rtol=1e-3)
    assert_grads_equal(ga, gb, rtol=1e-2, atol=1e-3)
    assert all(g.dtype == tf.float32 for g in gb)  # variable dtype


@pytest.mark.slow
def test_mixed_float16_fit_with_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    results = []
    for wrap in (lambda b: b, Recompute):
        keras.utils.set_random_seed(8)
        model = keras.Sequential(
            [keras.Input((6,)), wrap(mlp_block(6)), keras.layers.Dense(1, dtype="float32")]
        )
        results.append(_fit_weights(model, x, y))
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------- serialization


def test_get_config_round_trip():
    layer = Recompute(mlp_block(), name="rc")
    config = layer.get_config()
    assert config["name"] == "rc"
    clone = Recompute.from_config(config)
    assert isinstance(clone.layer, keras.Sequential)
    assert [type(x) for x in clone.layer.layers] == [type(x) for x in layer.layer.layers]


def test_keras_saving_round_trip_safe_mode(tmp_path):
    inputs = keras.Input((6,))
    h = Recompute(bn_dropout_block())(inputs)
    h = recompute_sequential([keras.layers.Dense(4) for _ in range(4)])(h)
    model = keras.Model(inputs, h)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=RTOL)
    assert isinstance(loaded.layers[1], Recompute)


# ---------------------------------------------------------------- recompute_sequential


def test_recompute_sequential_default_segments_like_pytorch():
    layers = [keras.layers.Dense(4, name=f"d{i}") for i in range(10)]
    stack = recompute_sequential(layers)
    # ceil(sqrt(10)) = 4 segments of 10 // 4 = 2 layers; the last takes the remaining 4.
    kinds = [type(layer).__name__ for layer in stack.layers]
    assert kinds == ["Recompute"] * 3 + ["Dense"] * 4
    assert [[x.name for x in r.layer.layers] for r in stack.layers[:3]] == [
        ["d0", "d1"],
        ["d2", "d3"],
        ["d4", "d5"],
    ]


@pytest.mark.parametrize("segments", [None, 1, 3, 6])
def test_recompute_sequential_gradients_equal(segments):
    x = tf.random.normal((4, 5), seed=9)

    def layers():
        keras.utils.set_random_seed(1)
        return [keras.layers.Dense(5, activation="tanh") for _ in range(6)]

    plain = keras.Sequential(layers())
    stack = recompute_sequential(layers(), segments=segments)
    plain(x)
    stack(x)
    stack.set_weights(plain.get_weights())
    assert_grads_equal(grads_of(plain, x)[1], grads_of(stack, x)[1])


@pytest.mark.parametrize(
    "segments, error", [(0, ValueError), (7, ValueError), (2.0, TypeError), (True, TypeError), ("2", TypeError)]
)
def test_recompute_sequential_bad_segments(segments, error):
    with pytest.raises(error, match="^recompute_sequential: `segments` must be"):
        recompute_sequential([keras.layers.Dense(2) for _ in range(6)], segments=segments)


def test_recompute_sequential_bad_layers():
    with pytest.raises(ValueError, match="`layers`"):
        recompute_sequential([])
    with pytest.raises(TypeError, match=r"`layers\[1\]`"):
        recompute_sequential([keras.layers.Dense(2), tf.nn.relu])


# ---------------------------------------------------------------- function form


def test_function_form_binds_keyword_arguments_in_graph():
    """tf.recompute_grad rejects keyword arguments in graph mode; recompute() binds them."""
    dense = keras.layers.Dense(4)
    drop = keras.layers.Dropout(0.5, seed=1)
    x = tf.random.normal((3, 5), seed=1)
    dense(x)

    def block(x, training=False, scale=1.0):
        return drop(dense(x), training=training) * scale

    @tf.function
    def with_tf_recompute_grad():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.recompute_grad(block)(x, training=True))
        return tape.gradient(loss, dense.trainable_variables)

    with pytest.raises(ValueError, match="keywords arguments only when eager"):
        with_tf_recompute_grad()

    def grads(fn, seed_state):
        drop.seed_generator.state.assign(seed_state)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(fn(x, training=True, scale=3.0))
            return tape.gradient(loss, dense.trainable_variables)

        return step()

    state = drop.seed_generator.state.numpy()
    assert_grads_equal(grads(block, state), grads(recompute(block), state))


def test_function_form_captured_tf_variable_and_nested_inputs():
    w = tf.Variable(tf.random.normal((3, 3), seed=2))
    a, b = tf.random.normal((2, 3), seed=3), tf.random.normal((2, 3), seed=4)

    def fn(pair):
        return tf.tanh(pair[0] @ w) * pair[1]

    def grads(f):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = tf.reduce_sum(f((a, b)) ** 2)
        return tape.gradient(loss, [a, b, w])

    assert_grads_equal(
        tf.function(lambda: grads(fn))(), tf.function(lambda: grads(recompute(fn)))()
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [3, "dense", None])
def test_recompute_rejects_non_layer(bad):
    with pytest.raises(TypeError, match="`layer` must be a keras.layers.Layer"):
        Recompute(bad)


def test_recompute_rejects_plain_callable_with_hint():
    with pytest.raises(TypeError, match=r"tfkit.recompute.recompute\(fn\)"):
        Recompute(tf.nn.relu)


def test_function_form_rejects_non_callable():
    with pytest.raises(TypeError, match="`fn` must be callable"):
        recompute(42)


def test_empty_block_rejected():
    with pytest.raises(ValueError, match="empty Sequential"):
        Recompute(keras.Sequential([]))


def test_block_without_trainable_computation_rejected():
    """Integer input + frozen weights: no gradient can flow, recomputing is a mistake."""
    emb = keras.layers.Embedding(10, 4, trainable=False)
    wrapped = Recompute(emb)
    ids = tf.constant([[1, 2]])
    wrapped(ids)  # inference is fine
    with tf.GradientTape(), pytest.raises(ValueError, match="nothing to recompute"):
        wrapped(ids)


def test_parameter_free_block_is_allowed():
    """Recomputing a wide activation saves memory even without weights."""
    x = tf.random.normal((2, 3), seed=1)
    act = Recompute(keras.layers.Activation("gelu"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = act(x)
    got = tape.gradient(y, x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = keras.activations.gelu(x)
    np.testing.assert_allclose(got, tape.gradient(y, x), rtol=RTOL)


class StatefulNoise(keras.layers.Layer):
    """Uses TensorFlow's stateful RNG: cannot be replayed."""

    def call(self, x):
        return x + tf.random.uniform(tf.shape(x))


def test_nondeterministic_layer_warns_naming_it():
    block = keras.Sequential([keras.layers.Dense(3), StatefulNoise(name="noisy")])
    wrapped = Recompute(block)
    x = tf.random.normal((2, 3), seed=1)
    wrapped(x)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(wrapped(x))
        return tape.gradient(loss, wrapped.trainable_variables)

    with pytest.warns(UserWarning, match="layer 'noisy' runs the stateful op 'RandomUniform'"):
        step()


def test_keras_random_layers_do_not_warn(recwarn):
    plain, wrapped = _models_with_and_without(bn_dropout_block)
    grads_of(wrapped, tf.ones((2, 6)), training=True)
    assert not [w for w in recwarn if "stateful op" in str(w.message)]
