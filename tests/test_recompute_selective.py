"""Selective recomputation: ``Recompute(block, save=[...])`` keeps named layers' outputs.

Gradients are compared with the same block without recomputation (rtol 1e-6);
the compute saving is checked deterministically on XLA's optimized HLO: a saved
``Dense`` is not run again in backprop, so the step has fewer ``dot`` ops than
with full recomputation.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.recompute import Recompute

RTOL, ATOL = 1e-6, 1e-6


def _block(seed=3, norm="layer"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.layers.Dense(16, name="up"),
            keras.layers.Activation("gelu"),
            keras.layers.Dropout(0.25, seed=5),
            keras.layers.Dense(8, name="down"),
            keras.layers.LayerNormalization() if norm == "layer" else keras.layers.BatchNormalization(),
        ]
    )


def _model(save, recompute=True, norm="layer"):
    block = _block(norm=norm)
    inner = Recompute(block, save=save) if recompute else block
    keras.utils.set_random_seed(11)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), inner, keras.layers.Dense(2)])


def _data(n=12):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


def _grads(model, x, y, jit=False):
    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        return tape.gradient(loss, model.trainable_variables)

    return [g.numpy() for g in step(x, y)]


SAVES = [["Dense"], ["up"], ["Activation", "down"], [], ["Dense", "Activation", "Dropout",
                                                        "LayerNormalization"]]  # fmt: skip


CASES = [(save, False) for save in SAVES] + [
    (["Dense"], True),
    *[pytest.param(save, True, marks=pytest.mark.slow) for save in SAVES[1:]],
]


@pytest.mark.parametrize("save, jit", CASES, ids=lambda v: str(v))
def test_gradients_equal_no_recompute(save, jit):
    x, y = _data()
    expected = _grads(_model(None, recompute=False), x, y, jit)
    got = _grads(_model(save), x, y, jit)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "jit", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["graph", "xla"]
)
def test_fit_equals_no_recompute_with_batch_norm(jit):
    """model.fit: same weights and BatchNorm statistics (updated once per step)."""
    x, y = _data(24)
    models = [_model(["Dense"], norm="batch"), _model(None, recompute=False, norm="batch")]
    for m in models:
        m.compile(keras.optimizers.Adam(1e-2), "mse", jit_compile=jit)
        m.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _dots(model, x, y) -> int:
    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        return tape.gradient(loss, model.trainable_variables)

    hlo = step.experimental_get_compiler_ir(x, y)(stage="optimized_hlo")
    return len(re.findall(r"= f32\[[^\]]*\][^ ]* dot\(", hlo))


def test_saved_dense_is_not_run_again_in_backprop():
    """HLO dot count: none 3 forward + 5 backward; full recompute +2; save Dense +0."""
    x, y = _data()
    plain = _dots(_model(None, recompute=False), x, y)
    full = _dots(_model(None), x, y)
    selective = _dots(_model(["Dense"]), x, y)
    assert full == plain + 2, (plain, full)  # the block's two matmuls run again
    assert selective == plain, (plain, selective)


def test_round_trip_and_safe_mode(tmp_path):
    x, _ = _data()
    model = _model(["Dense", "LayerNormalization"])
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[1].save == ("Dense", "LayerNormalization")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize(
    "layer, save, error, match",
    [
        ("seq", "Dense", TypeError, "save.*list"),
        ("seq", ["Conv2D"], ValueError, "'Conv2D' matches no layer"),
        ("seq", [3], TypeError, "string"),
        ("dense", ["Dense"], ValueError, "keras.Sequential"),
    ],
)
def test_bad_save(layer, save, error, match):
    block = _block() if layer == "seq" else keras.layers.Dense(3)
    with pytest.raises(error, match=match):
        Recompute(block, save=save)
