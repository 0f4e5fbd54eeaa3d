"""ScheduleFreeEvaluation: x from y and z against an independent schedule-free AdamW, swapping."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from keras_defects import keras_defect

from tfkit.callbacks import ScheduleFreeEvaluation
from tfkit.callbacks.schedule_free import schedule_free_available

pytestmark = pytest.mark.skipif(
    not schedule_free_available(), reason="keras.optimizers.ScheduleFreeAdamW needs Keras >= 3.14"
)


def _reference(w0, grads_at, steps, lr, keras_recursion, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """Schedule-free AdamW (c_t = 1/t) keeping x explicitly; returns (x, y).

    ``keras_recursion=False``: the paper (Defazio et al. 2024), x_t = (1 - c) x_{t-1} + c z_t.
    ``True``: Keras' update, which recovers x_{t-1} from y_{t-1} with the *new* z_t
    (docs/keras-defects.md#schedule-free-stale-x).
    """
    z = w0.astype(np.float64)
    x, y = z.copy(), z.copy()
    v = np.zeros_like(z)
    for t in range(1, steps + 1):
        g = grads_at(y)
        v = beta_2 * v + (1 - beta_2) * g * g
        z = z - lr * g / (np.sqrt(v / (1 - beta_2**t)) + eps)
        previous = (y - (1 - beta_1) * z) / beta_1 if keras_recursion else x
        x = (1 - 1 / t) * previous + (1 / t) * z
        y = (1 - beta_1) * z + beta_1 * x
    return x, y


def test_evaluation_weights_match_an_independent_schedule_free_adamw():
    target = np.array([3.0, -1.0, 0.5], np.float32)
    w = keras.Variable(np.zeros(3, np.float32))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3, use_bias=False)])
    model.layers[0].kernel.assign(np.zeros((1, 3), np.float32))
    optimizer = keras.optimizers.ScheduleFreeAdamW(0.1)
    optimizer.build(model.trainable_variables)
    model.compile(optimizer, "mse")
    kernel = model.layers[0].kernel
    for _ in range(25):  # gradient of 0.5 * |w - target|^2
        optimizer.apply([kernel.numpy() - target[None]], [kernel])
    del w
    x, y = _reference(np.zeros(3), lambda y: y - target, 25, 0.1, keras_recursion=True)
    np.testing.assert_allclose(kernel.numpy()[0], y, rtol=1e-5, atol=1e-6)
    _, paper_y = _reference(np.zeros(3), lambda y: y - target, 25, 0.1, keras_recursion=False)
    with keras_defect("schedule-free-stale-x"):
        assert not np.allclose(kernel.numpy()[0], paper_y, rtol=1e-3), "Keras follows the paper"
    sf = ScheduleFreeEvaluation()
    sf.set_model(model)
    before = kernel.numpy().copy()
    np.testing.assert_allclose(sf.get_evaluation_weights()[0][0], x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kernel.numpy(), before)  # y back bit for bit


def test_fit_evaluates_and_checkpoints_at_x(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(64, 3)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(keras.optimizers.ScheduleFreeAdamW(0.01), "mse")
    sf = ScheduleFreeEvaluation(swap_on_epoch=True)
    path = str(tmp_path / "x.keras")
    history = model.fit(*data, batch_size=8, epochs=2, validation_data=data, verbose=0,
                        callbacks=[sf, keras.callbacks.ModelCheckpoint(path)])  # fmt: skip
    trained = model.get_weights()
    x = sf.get_evaluation_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(x, trained, strict=True))
    with sf.evaluation_weights():
        at_x = model.evaluate(*data, verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(at_x, rel=1e-6)
    assert model.evaluate(*data, verbose=0, callbacks=[sf]) == pytest.approx(at_x, rel=1e-6)
    saved = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(saved.get_weights(), x, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.get_weights(), trained, strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_optimizers_are_refused():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(), "mse")
    with pytest.raises(ValueError, match="must be a keras.optimizers.ScheduleFreeAdamW"):
        model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0, callbacks=[ScheduleFreeEvaluation()])


def test_config_and_bad_arguments():
    sf = ScheduleFreeEvaluation(swap_on_evaluate=False, final_weights="evaluation")
    blob = json.dumps(keras.saving.serialize_keras_object(sf))
    clone = keras.saving.deserialize_keras_object(json.loads(blob), safe_mode=True)
    assert clone.get_config() == sf.get_config()
    with pytest.raises(ValueError, match="ScheduleFreeEvaluation: `final_weights` must be"):
        ScheduleFreeEvaluation(final_weights="x")
    with pytest.raises(TypeError, match="ScheduleFreeEvaluation: `swap_on_epoch` must be"):
        ScheduleFreeEvaluation(swap_on_epoch=1)
