"""The small all-of-tfkit recipe used by test_distributed.py, on any tf.distribute strategy.

OneCycle with momentum cycling, ``LossScaleOptimizer(GradientAccumulator(SGD))``,
a ``Recompute`` block, driven by ``tfkit.TrainStep`` and a ``CallbackList``.
Run as a script (``TF_CONFIG=... python distributed_recipe.py OUT.npz``) it
trains under ``MultiWorkerMirroredStrategy`` and saves the final weights.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfkit  # noqa: E402

N, GLOBAL_BATCH, K, EPOCHS = 64, 8, 2, 2
UPDATES = EPOCHS * N // GLOBAL_BATCH // K  # 8


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = rng.integers(0, 3, size=N).astype("int32")
    return x, y


def train(strategy: tf.distribute.Strategy) -> list[np.ndarray]:
    x, y = data()
    schedule = tfkit.schedules.OneCycle(0.1, total_steps=UPDATES)
    with strategy.scope():
        keras.utils.set_random_seed(11)
        block = keras.Sequential([keras.layers.Dense(12, activation="tanh"), keras.layers.Dense(12)])
        inputs = keras.Input((6,))
        h = keras.layers.Dense(12, activation="tanh")(inputs)
        h = keras.layers.Add()([h, tfkit.Recompute(block)(h)])
        model = keras.Model(inputs, keras.layers.Dense(3)(h))
        optimizer = tfkit.LossScaleOptimizer(
            tfkit.GradientAccumulator(keras.optimizers.SGD(schedule, momentum=0.9), K),
            initial_scale=2.0**10,
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer, loss)
    step = tfkit.TrainStep(model, loss, strategy=strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = strategy.experimental_distribute_dataset(dataset.with_options(options))
    callbacks = keras.callbacks.CallbackList(
        [tfkit.callbacks.MomentumScheduler(schedule.momentum_schedule)], model=model
    )
    callbacks.on_train_begin()
    for epoch in range(EPOCHS):
        callbacks.on_epoch_begin(epoch)
        for b, (xb, yb) in enumerate(batches):
            callbacks.on_train_batch_begin(b)
            step(xb, yb)
            callbacks.on_train_batch_end(b)
        callbacks.on_epoch_end(epoch)
    callbacks.on_train_end()
    assert int(tfkit.optimizers.innermost(optimizer).iterations.numpy()) == UPDATES
    return [np.asarray(w) for w in model.get_weights()]


if __name__ == "__main__":
    weights = train(tf.distribute.MultiWorkerMirroredStrategy())
    np.savez(sys.argv[1], *weights)
