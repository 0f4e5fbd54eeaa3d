"""TrainStep: the custom-loop step must do exactly what model.fit does."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.training import TrainStep


def _data(n=64, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + 0.1).astype("float32")
    return x, y


def _model(seed=0, l2=0.0):
    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(l2) if l2 else None
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="tanh", kernel_regularizer=reg),
            keras.layers.Dense(1),
        ]
    )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_matches_model_fit(jit_compile):
    x, y = _data()
    ref = _model(l2=1e-2)
    ref.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=jit_compile)
    ref.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    model = _model(l2=1e-2)
    step = TrainStep(model, "mse", keras.optimizers.Adam(1e-2), jit_compile=jit_compile)
    for _ in range(2):
        for i in range(0, 64, 16):
            logs = step(x[i : i + 16], y[i : i + 16])
    assert np.isfinite(float(logs["loss"]))
    for a, b in zip(ref.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert step.trace_count == 1


def test_loss_value_is_the_batch_mean():
    x, y = _data()
    model = _model()
    step = TrainStep(model, keras.losses.MeanSquaredError(), keras.optimizers.SGD(0.0))
    logs = step(x, y)
    expected = np.mean((model.predict(x, verbose=0) - y) ** 2)
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-5)


def test_mirrored_equals_single_device(mirrored_strategy):
    x, y = _data()
    single = _model()
    step = TrainStep(single, "mse", keras.optimizers.SGD(0.05, momentum=0.9))
    for i in range(0, 64, 16):
        step(x[i : i + 16], y[i : i + 16])

    with mirrored_strategy.scope():
        model = _model()
        opt = keras.optimizers.SGD(0.05, momentum=0.9)
    dstep = TrainStep(model, "mse", opt, strategy=mirrored_strategy)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True)
    for xb, yb in mirrored_strategy.experimental_distribute_dataset(ds):
        logs = dstep(xb, yb)
    assert np.isfinite(float(logs["loss"]))
    for a, b in zip(single.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    model = _model()
    with pytest.raises(TypeError, match="`model`"):
        TrainStep("not a model", "mse", keras.optimizers.SGD())
    with pytest.raises(TypeError, match="`optimizer`"):
        TrainStep(model, "mse")  # model not compiled, no optimizer given
    with pytest.raises(TypeError, match="`jit_compile`"):
        TrainStep(model, "mse", keras.optimizers.SGD(), jit_compile="yes")
    with pytest.raises(ValueError):
        TrainStep(model, "no_such_loss", keras.optimizers.SGD())


def test_docstring_examples_run():
    import doctest

    import tfkit.training

    result = doctest.testmod(tfkit.training)
    assert result.attempted >= 8 and result.failed == 0


def test_install_refuses_what_it_cannot_make_exact():
    from tfkit.training import install

    with pytest.raises(TypeError, match="`model`"):
        install("not a model")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, [keras.layers.Dense(1)(inputs), keras.layers.Dense(1)(inputs)])
    model.compile(keras.optimizers.SGD(0.1), ["mse", "mse"])
    install(model)
    x, y = _data(8)
    with pytest.raises(ValueError, match="one loss"):
        model.fit(x, [y, y], epochs=1, verbose=0)


def test_install_without_accumulator_matches_plain_fit():
    x, y = _data()
    ref = _model(l2=1e-2)
    ref.compile(keras.optimizers.Adam(1e-2), "mse", metrics=["mae"])
    ref_history = ref.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model = _model(l2=1e-2)
    model.compile(keras.optimizers.Adam(1e-2), "mse", metrics=["mae"])
    from tfkit.training import install

    history = install(model).fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(ref.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "mae"):
        np.testing.assert_allclose(history.history[key], ref_history.history[key], rtol=1e-5)
