"""Weighted accumulation windows: ragged, masked and sample-weighted micro-batches.

Every case is checked against one big batch: a fresh inner optimizer applied to
the gradient of the big-batch loss, written out in this file with plain
TensorFlow ops (mean over samples, over unmasked tokens, or over the sum of the
sample weights), not through Keras' loss reduction.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkit
from tfkit.optimizers import GradientAccumulator
from tfkit.training import TrainStep, install

RTOL = 1e-5
ATOL = 1e-6
INNERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
}


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
    tf.distribute.MirroredStrategy._collective_key_base += 1000
    yield


def _close(actual, expected):
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- the cases


def _dense_model(seed=7):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )


def _dense_data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def _mse_mean(model, x, y, sample_weight=None):
    """Independent big-batch losses: mean over samples, or over the sum of sample weights."""
    per_sample = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=-1)
    if sample_weight is None:
        return tf.reduce_sum(per_sample) / per_sample.shape[0]
    return tf.reduce_sum(per_sample * sample_weight) / tf.reduce_sum(sample_weight)


T, VOCAB = 12, 7


def _token_model(seed=5):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((T,), dtype="int32"),
            keras.layers.Embedding(VOCAB, 4, mask_zero=True),
            keras.layers.Dense(VOCAB),
        ]
    )


def _token_data(lengths, seed=1):
    """Sequences of the given real lengths, zero-padded to T; next-token-like labels."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), T), "int32")
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, VOCAB, size=n)
    labels = rng.integers(0, VOCAB, size=(len(lengths), T)).astype("int32")
    return ids, labels


def _token_mean(model, ids, labels):
    """Per-token cross-entropy averaged over real (non-padded) tokens of the big batch."""
    logits = model(ids, training=True)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    mask = tf.cast(ids != 0, tf.float32)
    return tf.reduce_sum(ce * mask) / tf.reduce_sum(mask)


def _reference(make_model, make_inner, windows, loss_fn):
    """The inner optimizer on the gradient of each window's big-batch loss."""
    model = make_model()
    inner = make_inner()
    for args in windows:
        with tf.GradientTape() as tape:
            loss = loss_fn(model, *args)
        grads = tape.gradient(loss, model.trainable_variables)
        # Dense gradients: Keras' Adam squares an Embedding's IndexedSlices
        # slice by slice, so repeated tokens would give sum(g_i**2), not g**2.
        grads = [tf.convert_to_tensor(g) for g in grads]
        inner.apply(grads, model.trainable_variables)
    return model.get_weights()


# Ragged: micro-batches 4 + 4 + 2 (k=3) vs one batch of 10, two windows.
RAGGED = [(0, 4), (4, 8), (8, 10), (10, 14), (14, 18), (18, 20)]
# Padded: real lengths 5 and 12 in separate micro-batches (the HF 2024 case).
LENGTHS = [5, 5, 12, 12, 3, 9, 12, 1]


def _ragged_windows(x, y, sw=None):
    if sw is None:
        return [(x[:10], y[:10]), (x[10:], y[10:])]
    return [(x[:10], y[:10], sw[:10]), (x[10:], y[10:], sw[10:])]


@pytest.mark.parametrize("name", sorted(INNERS))
@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_ragged_micro_batches_train_step(name, jit_compile):
    x, y = _dense_data()
    model = _dense_model()
    step = TrainStep(model, "mse", GradientAccumulator(INNERS[name](), 3), jit_compile=jit_compile)
    for lo, hi in RAGGED:
        step(x[lo:hi], y[lo:hi])
    assert int(step.optimizer.iterations) == 2
    _close(
        model.get_weights(),
        _reference(_dense_model, INNERS[name], _ragged_windows(x, y), _mse_mean),
    )


def test_ragged_micro_batches_train_step_xla_adamw():
    x, y = _dense_data()
    model = _dense_model()
    step = TrainStep(model, "mse", GradientAccumulator(INNERS["adamw"](), 3), jit_compile=True)
    for lo, hi in RAGGED:
        step(x[lo:hi], y[lo:hi])
    ref = _reference(_dense_model, INNERS["adamw"], _ragged_windows(x, y), _mse_mean)
    _close(model.get_weights(), ref)


def test_unweighted_ragged_is_what_the_issue_measured():
    """Guard: the plain mean of micro-batch means is measurably off (the test can fail)."""
    x, y = _dense_data()
    model = _dense_model()
    acc = GradientAccumulator(keras.optimizers.SGD(0.5), 3)
    for lo, hi in RAGGED[:3]:
        with tf.GradientTape() as tape:
            loss = _mse_mean(model, x[lo:hi], y[lo:hi])
        acc.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    ref = _reference(
        _dense_model, lambda: keras.optimizers.SGD(0.5), _ragged_windows(x, y)[:1], _mse_mean
    )
    gap = max(np.max(np.abs(a - b)) for a, b in zip(model.get_weights(), ref, strict=True))
    assert gap > 1e-3


@pytest.mark.parametrize("name", sorted(INNERS))
def test_ragged_micro_batches_fit_install(name):
    x, y = _dense_data(10)
    model = _dense_model()
    model.compile(GradientAccumulator(INNERS[name](), 3), "mse")
    install(model)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)  # 4 + 4 + 2, twice
    assert int(model.optimizer.iterations) == 2 and int(model.optimizer.micro_step) == 0
    ref = _reference(_dense_model, INNERS[name], [(x, y), (x, y)], _mse_mean)
    _close(model.get_weights(), ref)


def test_fit_install_xla_and_steps_per_execution():
    x, y = _dense_data(10)
    model = _dense_model()
    model.compile(
        GradientAccumulator(INNERS["adamw"](), 3), "mse", jit_compile=True, steps_per_execution=3
    )
    tfkit.training.install(model)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    _close(model.get_weights(), _reference(_dense_model, INNERS["adamw"], [(x, y)] * 2, _mse_mean))


@pytest.mark.parametrize("name", sorted(INNERS))
def test_masked_tokens_train_step(name):
    ids, labels = _token_data(LENGTHS)
    model = _token_model()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = TrainStep(model, loss, GradientAccumulator(INNERS[name](), 2))
    for i in range(0, len(LENGTHS), 2):  # micro-batches of 2 sequences
        step(ids[i : i + 2], labels[i : i + 2])
    windows = [(ids[:4], labels[:4]), (ids[4:], labels[4:])]
    _close(model.get_weights(), _reference(_token_model, INNERS[name], windows, _token_mean))


@pytest.mark.parametrize("name", sorted(INNERS))
def test_masked_tokens_fit_install(name):
    ids, labels = _token_data(LENGTHS)
    model = _token_model()
    model.compile(
        GradientAccumulator(INNERS[name](), 2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=name == "adamw",
    )
    install(model)
    model.fit(ids, labels, batch_size=2, epochs=1, shuffle=False, verbose=0)
    windows = [(ids[:4], labels[:4]), (ids[4:], labels[4:])]
    _close(model.get_weights(), _reference(_token_model, INNERS[name], windows, _token_mean))


@pytest.mark.parametrize("name", sorted(INNERS))
def test_mean_with_sample_weight_train_step_and_fit(name):
    x, y = _dense_data()
    sw = np.random.default_rng(3).uniform(0.1, 2.0, size=20).astype("float32")
    loss = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")
    ref = _reference(_dense_model, INNERS[name], _ragged_windows(x, y, sw), _mse_mean)

    model = _dense_model()
    step = TrainStep(model, loss, GradientAccumulator(INNERS[name](), 3))
    for lo, hi in RAGGED:
        step(x[lo:hi], y[lo:hi], sw[lo:hi])
    _close(model.get_weights(), ref)

    fitted = _dense_model()
    fitted.compile(GradientAccumulator(INNERS[name](), 3), loss)
    install(fitted)
    fitted.fit(x[:10], y[:10], sample_weight=sw[:10], batch_size=4, epochs=1, shuffle=False,
               verbose=0)  # fmt: skip
    fitted.fit(x[10:], y[10:], sample_weight=sw[10:], batch_size=4, epochs=1, shuffle=False,
               verbose=0)  # fmt: skip
    _close(fitted.get_weights(), ref)


def test_loss_scale_optimizer_passes_the_weight():
    x, y = _dense_data()
    model = _dense_model()
    lso = tfkit.precision.LossScaleOptimizer(
        GradientAccumulator(INNERS["adam"](), 3), initial_scale=64.0
    )
    step = TrainStep(model, "mse", lso, jit_compile=True)
    for lo, hi in RAGGED:
        step(x[lo:hi], y[lo:hi])
    _close(
        model.get_weights(),
        _reference(_dense_model, INNERS["adam"], _ragged_windows(x, y), _mse_mean),
    )


def test_keras_loss_scale_optimizer_warns_that_weights_do_not_pass():
    model = _dense_model()
    opt = keras.optimizers.LossScaleOptimizer(GradientAccumulator(keras.optimizers.SGD(0.1), 2))
    step = TrainStep(model, "mse", opt)
    x, y = _dense_data(4)
    with pytest.warns(UserWarning, match="tfkit.precision.LossScaleOptimizer"):
        step(x, y)


def test_plain_fit_is_unchanged_without_install():
    """Plain fit keeps counting every micro-batch 1 (today's behaviour)."""
    x, y = _dense_data(8)
    model = _dense_model()
    model.compile(GradientAccumulator(keras.optimizers.SGD(0.1), 2), "mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert float(model.optimizer._window_weight.numpy()) == 0.0
    ref = _reference(_dense_model, lambda: keras.optimizers.SGD(0.1), [(x, y)], _mse_mean)
    _close(model.get_weights(), ref)


# ------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "weight, error",
    [(-1.0, ValueError), (float("nan"), ValueError), (True, TypeError), ([1.0, 2.0], ValueError)],
)
def test_bad_python_weight(weight, error):
    w = keras.Variable(np.ones(2, "float32"))
    acc = GradientAccumulator(keras.optimizers.SGD(0.1), 2)
    with pytest.raises(error, match="weight"):
        acc.apply([tf.ones(2)], [w], weight=weight)


def test_weighted_formula_and_zero_weight():
    """w <- w - lr * sum(w_i g_i) / sum(w_i), written out; a weight-0 micro-batch adds nothing."""
    w = keras.Variable(np.zeros(2, "float32"))
    acc = GradientAccumulator(keras.optimizers.SGD(1.0), 3)
    acc.apply([tf.constant([1.0, 2.0])], [w], weight=3)
    acc.apply([tf.constant([5.0, -1.0])], [w], weight=tf.constant(1.0))
    acc.apply([tf.constant([100.0, 100.0])], [w], weight=0)
    np.testing.assert_allclose(w.numpy(), -np.array([3 + 5, 6 - 1]) / 4, rtol=1e-6)
    assert acc.iterations.numpy() == 1


def test_apply_gradients_takes_a_weight():
    w = keras.Variable(np.zeros(1, "float32"))
    acc = GradientAccumulator(keras.optimizers.SGD(1.0), 2)
    acc.apply_gradients([(tf.constant([2.0]), w)], weight=1.0)
    acc.apply_gradients([(tf.constant([8.0]), w)], weight=3.0)
    np.testing.assert_allclose(w.numpy(), [-(2 + 24) / 4], rtol=1e-6)


# ------------------------------------------------------------- distribution


def test_mirrored_masked_train_step_global_denominator(mirrored_strategy):
    """Each replica's valid-token count differs; the denominator is their global sum."""
    ids, labels = _token_data(LENGTHS + [2, 12, 7, 4])  # 12 sequences, 3 global batches of 4
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with mirrored_strategy.scope():
        model = _token_model()
        opt = GradientAccumulator(INNERS["adamw"](), 3)
    step = TrainStep(model, loss, opt, strategy=mirrored_strategy)
    dataset = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(4)
    for xb, yb in mirrored_strategy.experimental_distribute_dataset(dataset):
        step(xb, yb)
    assert opt.iterations.numpy() == 1
    ref = _reference(_token_model, INNERS["adamw"], [(ids, labels)], _token_mean)
    _close(model.get_weights(), ref)


# --------------------------------------------------------- one collective


_COLLECTIVE_PREFIXES = ("Collective", "Nccl")


def _collectives_on_path(graph_def, take_close_branch: bool) -> int:
    """Count collective ops that run when every ``close_window`` branch op takes one side.

    Walks the traced graph and the function library: ``PartitionedCall`` and
    friends are followed into their functions, other conds into both
    branches (an upper bound), and each accumulator ``close_window`` op only
    into the branches chosen by ``take_close_branch`` (``If``: then/else;
    ``Case`` with branches drop, keep, close, close: the last two or the
    first two). Deterministic: no timing, no profiler; the graph is exactly
    what the runtime executes.
    """
    library = {f.signature.name: f for f in graph_def.library.function}

    def walk(nodes) -> int:
        count = 0
        for node in nodes:
            if node.op.startswith(_COLLECTIVE_PREFIXES):
                count += 1
            names = []
            for key, attr in node.attr.items():
                if attr.HasField("func"):
                    names.append((key, attr.func.name))
                names += [(f"{key}:{i}", f.name) for i, f in enumerate(attr.list.func)]
            if node.name.split("/")[-1].startswith("close_window"):
                if node.op in ("If", "StatelessIf"):
                    wanted = {"then_branch" if take_close_branch else "else_branch"}
                    names = [(k, n) for k, n in names if k in wanted]
                elif node.op in ("Case", "StatelessCase"):
                    wanted = {"branches:2", "branches:3"} if take_close_branch else {
                        "branches:0", "branches:1"}  # fmt: skip
                    names = [(k, n) for k, n in names if k in wanted]
            for _, name in names:
                if name in library:
                    count += walk(library[name].node_def)
        return count

    return walk(graph_def.node)


def test_no_collective_on_a_micro_step_that_does_not_close_a_window(mirrored_strategy):
    x, y = _dense_data(16)
    with mirrored_strategy.scope():
        model = _dense_model()
        acc = GradientAccumulator(INNERS["adam"](), 4)
        acc.build(model.trainable_variables)

    @tf.function
    def step(xb, yb):
        def replica_fn(xr, yr):
            with tf.GradientTape() as tape:
                loss = keras.losses.MeanSquaredError()(yr, model(xr, training=True))
            acc.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables,
                      weight=tf.cast(tf.shape(xr)[0], tf.float32))  # fmt: skip

        mirrored_strategy.run(replica_fn, args=(xb, yb))

    batches = list(
        mirrored_strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        )
    )
    for xb, yb in batches:
        step(xb, yb)
    graph_def = step.get_concrete_function(*batches[0]).graph.as_graph_def()
    assert _collectives_on_path(graph_def, take_close_branch=False) == 0
    # The closing step: one collective per replica (the packed all-reduce); the
    # count can fail, so the zero above is not vacuous.
    closing = _collectives_on_path(graph_def, take_close_branch=True)
    assert 1 <= closing <= mirrored_strategy.num_replicas_in_sync
    assert acc.iterations.numpy() == 1


def test_no_collective_on_an_open_micro_step_with_loss_scaling_and_train_step(mirrored_strategy):
    """LossScaleOptimizer(GradientAccumulator) in TrainStep: the window's all-reduce is the only one.

    The loss scaler's finiteness flag rides in the accumulator's all-reduce
    (as its count of dropped shards), and TrainStep's logged loss is summed
    from the local replicas without a collective.
    """
    x, y = _dense_data(16)
    with mirrored_strategy.scope():
        model = _dense_model()
        lso = tfkit.precision.LossScaleOptimizer(
            GradientAccumulator(INNERS["adam"](), 4), initial_scale=64.0
        )
    step = TrainStep(model, "mse", lso, strategy=mirrored_strategy)
    batches = list(
        mirrored_strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        )
    )
    losses = [float(step(xb, yb)["loss"]) for xb, yb in batches]
    graph_def = step._function.get_concrete_function(*batches[0]).graph.as_graph_def()
    assert _collectives_on_path(graph_def, take_close_branch=False) == 0
    assert _collectives_on_path(graph_def, take_close_branch=True) >= 1
    assert lso.iterations.numpy() == 1 and int(lso.skipped_steps) == 0
    _close(model.get_weights(), _reference(_dense_model, INNERS["adam"], [(x, y)], _mse_mean))
    # The logged loss is still the global mean of each micro-batch (before its update).
    ref_model = _dense_model()
    first = float(_mse_mean(ref_model, x[:4], y[:4]))
    np.testing.assert_allclose(losses[0], first, rtol=RTOL)


def test_mirrored_overflow_on_one_replica_backs_off_once_per_window(mirrored_strategy):
    """A shard that overflows is dropped locally; the window's all-reduce tells the scaler."""
    x, y = _dense_data(16)
    x = x.copy()
    x[5] = np.inf  # one sample of micro-batch 1: one replica's shard overflows
    with mirrored_strategy.scope():
        model = _dense_model()
        acc = GradientAccumulator(INNERS["sgd"](), 2)
        lso = tfkit.precision.LossScaleOptimizer(acc, initial_scale=64.0)
    step = TrainStep(model, "mse", lso, strategy=mirrored_strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    for xb, yb in mirrored_strategy.experimental_distribute_dataset(dataset):
        step(xb, yb)
    # 4 micro-batches, 2 windows: the first window holds the overflowing shard.
    assert lso.iterations.numpy() == 2
    assert int(lso.skipped_steps) == 1 and float(lso.loss_scale) == 32.0
    assert int(acc.dropped_micro_batches) == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_mirrored_fit_install_ragged_and_masked(mirrored_strategy):
    """model.fit + install under MirroredStrategy: 8 + 8 + 4 samples and padded tokens."""
    x, y = _dense_data()
    with mirrored_strategy.scope():
        model = _dense_model()
        model.compile(GradientAccumulator(INNERS["adam"](), 3), "mse")
    install(model)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.optimizer.iterations.numpy() == 1
    _close(model.get_weights(), _reference(_dense_model, INNERS["adam"], [(x, y)], _mse_mean))

    ids, labels = _token_data(LENGTHS)
    with mirrored_strategy.scope():
        tokens = _token_model()
        tokens.compile(
            GradientAccumulator(INNERS["sgd"](), 2),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    install(tokens)
    tokens.fit(ids, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
    ref = _reference(_token_model, INNERS["sgd"], [(ids, labels)], _token_mean)
    _close(tokens.get_weights(), ref)


def test_mirrored_loss_scale_optimizer_passes_the_weight(mirrored_strategy):
    x, y = _dense_data()
    with mirrored_strategy.scope():
        model = _dense_model()
        lso = tfkit.precision.LossScaleOptimizer(
            GradientAccumulator(INNERS["adamw"](), 3), initial_scale=64.0
        )
    step = TrainStep(model, "mse", lso, strategy=mirrored_strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 8 + 8 + 4
    for xb, yb in mirrored_strategy.experimental_distribute_dataset(dataset):
        step(xb, yb)
    _close(model.get_weights(), _reference(_dense_model, INNERS["adamw"], [(x, y)], _mse_mean))
