"""tfkit.layers.BatchNormalization: moving statistics once per window, of the whole window.

References: Keras' own BatchNormalization trained on the big batches (k * b),
and the moving-average formula written out in numpy.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.layers import BatchNormalization
from tfkit.optimizers import GradientAccumulator
from tfkit.training import TrainStep, install

RTOL = 1e-5
ATOL = 1e-6
K, B, WINDOWS, MOMENTUM = 4, 8, 3, 0.9


def _data(n=K * B * WINDOWS, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 3)) * [1.0, 3.0, 0.5] + [2.0, -1.0, 10.0]).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def _model(bn):
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((3,)), bn, keras.layers.Dense(2)])


def _numpy_moving_stats(x):
    """momentum * old + (1 - momentum) * (mean, biased var) of each window of k * b rows."""
    mean, var = np.zeros(3), np.ones(3)
    for w in range(WINDOWS):
        window = x[w * K * B : (w + 1) * K * B].astype("float64")
        mean = MOMENTUM * mean + (1 - MOMENTUM) * window.mean(axis=0)
        var = MOMENTUM * var + (1 - MOMENTUM) * window.var(axis=0)
    return mean, var


def _keras_big_batch_moving_stats(x, y, inner):
    model = _model(keras.layers.BatchNormalization(momentum=MOMENTUM))
    model.compile(inner, "mse")
    model.fit(x, y, batch_size=K * B, epochs=1, shuffle=False, verbose=0)
    bn = model.layers[0]
    return bn.moving_mean.numpy(), bn.moving_variance.numpy()


INNERS = {
    "sgd": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(INNERS))
@pytest.mark.parametrize("how", ["train_step", "fit_install", "fit_install_xla"])
def test_moving_statistics_equal_big_batch(name, how):
    x, y = _data()
    model = _model(BatchNormalization(momentum=MOMENTUM, accumulation_steps=K))
    optimizer = GradientAccumulator(INNERS[name](), K)
    if how == "train_step":
        step = TrainStep(model, "mse", optimizer)
        for i in range(0, len(x), B):
            step(x[i : i + B], y[i : i + B])
    else:
        model.compile(optimizer, "mse", jit_compile=how.endswith("xla"))
        install(model)
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    assert int(optimizer.iterations) == WINDOWS
    bn = model.layers[0]
    mean, var = _numpy_moving_stats(x)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=RTOL, atol=ATOL)
    keras_mean, keras_var = _keras_big_batch_moving_stats(x, y, INNERS[name]())
    np.testing.assert_allclose(bn.moving_mean.numpy(), keras_mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(bn.moving_variance.numpy(), keras_var, rtol=RTOL, atol=ATOL)


def test_keras_layer_under_accumulation_is_what_the_issue_measured():
    """Guard: Keras' layer advances k times per update and ends far from the big batch."""
    x, y = _data()
    model = _model(keras.layers.BatchNormalization(momentum=MOMENTUM))
    model.compile(GradientAccumulator(keras.optimizers.SGD(0.1), K), "mse")
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    mean, _ = _numpy_moving_stats(x)
    assert np.max(np.abs(model.layers[0].moving_mean.numpy() - mean)) > 0.1


def test_forward_pass_uses_the_micro_batch_statistics():
    x, _ = _data()
    ours = BatchNormalization(accumulation_steps=K)
    theirs = keras.layers.BatchNormalization()
    np.testing.assert_allclose(
        ours(x[:B], training=True).numpy(), theirs(x[:B], training=True).numpy(), rtol=RTOL,
        atol=ATOL,
    )  # fmt: skip
    np.testing.assert_allclose(ours.moving_mean.numpy(), 0.0)  # window open: unchanged


def test_masked_inputs_count_only_unmasked_positions():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3)).astype("float32") + 4.0
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    bn = BatchNormalization(accumulation_steps=2, momentum=0.0)
    bn(x[:1], training=True, mask=mask[:1])
    bn(x[1:], training=True, mask=mask[1:])
    valid = x[mask]
    np.testing.assert_allclose(bn.moving_mean.numpy(), valid.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(bn.moving_variance.numpy(), valid.var(axis=0), rtol=1e-4)


def test_loads_keras_weights_and_round_trips(tmp_path):
    x, y = _data()
    keras_model = _model(keras.layers.BatchNormalization(momentum=MOMENTUM))
    keras_model.compile("sgd", "mse")
    keras_model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    path = str(tmp_path / "keras.weights.h5")
    keras_model.save_weights(path)
    ours = _model(BatchNormalization(momentum=MOMENTUM, accumulation_steps=K))
    ours.load_weights(path)
    for a, b in zip(ours.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Same weights list as Keras' layer: gamma, beta, moving mean, moving variance.
    assert len(ours.layers[0].weights) == 4

    file = str(tmp_path / "model.keras")
    ours.save(file)
    loaded = keras.saving.load_model(file, safe_mode=True)
    assert isinstance(loaded.layers[0], BatchNormalization)
    assert loaded.layers[0].get_config() == ours.layers[0].get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ours.predict(x, verbose=0), rtol=RTOL)


def test_window_survives_a_checkpoint(tmp_path):
    x, _ = _data()
    bn = BatchNormalization(accumulation_steps=2, momentum=0.5)
    bn(x[:B], training=True)
    path = tf.train.Checkpoint(bn=bn).save(str(tmp_path / "ckpt"))
    bn(x[B : 2 * B], training=True)
    restored = BatchNormalization(accumulation_steps=2, momentum=0.5)
    restored.build((None, 3))
    tf.train.Checkpoint(bn=restored).restore(path).assert_consumed()
    restored(x[B : 2 * B], training=True)
    np.testing.assert_allclose(restored.moving_mean.numpy(), bn.moving_mean.numpy(), rtol=RTOL)


@pytest.mark.parametrize(
    "steps, error", [(0, ValueError), (2.0, TypeError), (True, TypeError), ("4", TypeError)]
)
def test_bad_accumulation_steps(steps, error):
    with pytest.raises(error, match=rf"accumulation_steps={steps!r}"):
        BatchNormalization(accumulation_steps=steps)


def test_renorm_is_refused_with_accumulation():
    with pytest.raises(ValueError, match="renorm"):
        BatchNormalization(renorm=True, accumulation_steps=2)


def test_docstring_example_runs():
    import doctest

    import tfkit.layers.batch_normalization as module

    result = doctest.testmod(module)
    assert result.attempted >= 3 and result.failed == 0


def test_mirrored_each_replica_keeps_the_statistics_of_its_shards(mirrored_strategy):
    """As Keras' (non-synchronized) layer: reads give the first replica's window statistics."""
    x, y = _data()
    with mirrored_strategy.scope():
        model = _model(BatchNormalization(momentum=MOMENTUM, accumulation_steps=K))
        optimizer = GradientAccumulator(keras.optimizers.Adam(0.01), K)
    step = TrainStep(model, "mse", optimizer, strategy=mirrored_strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)  # B / 2 rows per replica
    for xb, yb in mirrored_strategy.experimental_distribute_dataset(dataset):
        step(xb, yb)
    assert optimizer.iterations.numpy() == WINDOWS
    first_replica = np.concatenate([np.arange(i * B, i * B + B // 2) for i in range(K * WINDOWS)])
    mean, var = _numpy_moving_stats(np.repeat(x[first_replica], 2, axis=0))
    bn = model.layers[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(bn.moving_variance.numpy(), var, rtol=RTOL, atol=ATOL)
