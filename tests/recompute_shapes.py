"""Three model shapes for the recompute planner's tests (imported by fresh BFC processes)."""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfkit_tests")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm self-attention and MLP, each with a residual connection."""

    def __init__(self, width=64, heads=4, **kwargs):
        super().__init__(**kwargs)
        self.width, self.heads = width, heads
        self.norm1 = keras.layers.LayerNormalization()
        self.attention = keras.layers.MultiHeadAttention(heads, width // heads)
        self.norm2 = keras.layers.LayerNormalization()
        self.up = keras.layers.Dense(4 * width, activation="gelu")
        self.down = keras.layers.Dense(width)

    def build(self, input_shape):
        self.norm1.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.norm2.build(input_shape)
        self.up.build(input_shape)
        self.down.build(tuple(input_shape[:-1]) + (4 * self.width,))

    def call(self, x):
        h = self.norm1(x)
        x = x + self.attention(h, h)
        return x + self.down(self.up(self.norm2(x)))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "heads": self.heads}


def residual_mlp(batch=256, width=128, depth=4):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width,))
    h = inputs
    for i in range(depth):
        block = keras.Sequential(
            [keras.layers.Dense(4 * width), keras.layers.Activation("gelu"),
             keras.layers.Dense(width)], name=f"mlp{i}",
        )  # fmt: skip
        h = keras.layers.Add()([h, block(h)])
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    rng = np.random.default_rng(0)
    return model, (rng.normal(size=(batch, width)).astype("float32"),
                   rng.normal(size=(batch, 10)).astype("float32"))  # fmt: skip


def transformer(batch=16, length=64, width=64, depth=3):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((length, width))]
    layers += [TransformerBlock(width, name=f"block{i}") for i in range(depth)]
    layers += [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    rng = np.random.default_rng(0)
    return model, (rng.normal(size=(batch, length, width)).astype("float32"),
                   rng.normal(size=(batch, 10)).astype("float32"))  # fmt: skip


def cnn(batch=32):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((32, 32, 3))]
    for i, channels in enumerate([16, 32, 32]):
        layers.append(keras.Sequential(
            [keras.layers.Conv2D(channels, 3, padding="same"), keras.layers.BatchNormalization(),
             keras.layers.ReLU(), keras.layers.Conv2D(channels, 3, padding="same"),
             keras.layers.BatchNormalization(), keras.layers.ReLU()], name=f"conv{i}",
        ))  # fmt: skip
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    rng = np.random.default_rng(0)
    return model, (rng.normal(size=(batch, 32, 32, 3)).astype("float32"),
                   rng.normal(size=(batch, 10)).astype("float32"))  # fmt: skip


SHAPES = {"residual_mlp": residual_mlp, "transformer": transformer, "cnn": cnn}


def _grads(model, sample, jit):
    x, y = sample

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        return tape.gradient(loss, model.trainable_variables)

    return [g.numpy() for g in step()]


def make_plan(shape: str, budget: float, path: str) -> dict:
    """Plan (in this BFC process), save the planned model, compare its gradients."""
    import tfkit

    model, sample = SHAPES[shape]()
    model.compile("sgd", "mse")
    p = tfkit.recompute.plan(model, sample, budget)
    planned = p.apply()
    planned.save(path)
    worst = 0.0
    for jit in (False, True):
        for a, b in zip(_grads(planned, sample, jit), _grads(model, sample, jit), strict=True):
            # assert_allclose's test with rtol=1e-6, atol=1e-6, as a ratio (<= 1 passes).
            worst = max(worst, float(np.max(np.abs(a - b) / (1e-6 + 1e-6 * np.abs(b)))))
    same_weights = all(
        np.array_equal(a, b) for a, b in zip(planned.get_weights(), model.get_weights(), strict=True)
    )
    return {
        "text": str(p), "budget": p.budget, "baseline": p.baseline_peak,
        "predicted": p.predicted_peak, "measured": p.measured_peak,
        "extra": p.extra_compute, "full": p.full_extra_compute,
        "options": [b.option for b in p.blocks], "grad_rel_err": worst,
        "same_weights": same_weights,
    }  # fmt: skip


def measure_saved(shape: str, path: str) -> dict:
    """A fresh BFC process: load the planned model (safe_mode) and measure its step peak."""
    from tfkit.recompute.planning import _default_measure

    _, sample = SHAPES[shape]()
    model = keras.saving.load_model(path, safe_mode=True)
    return {"peak": int(_default_measure(sample)(model)), "config": json.dumps(model.get_config())}
