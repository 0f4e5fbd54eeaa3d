"""One worker of the MultiWorkerMirroredStrategy test (run by test_accumulation_distributed.py).

Usage: ``TF_CONFIG=... python mw_worker_accumulation.py OUT.npz [ragged]``. Trains
the test's tiny model in a custom loop with ``GradientAccumulator(k=4)`` on the
shared data, then writes the final weights and optimizer counters to OUT.npz.
With ``ragged`` the data ends with a half batch and each replica passes its
local number of samples as the micro-batch weight (Keras' loss convention).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfkit.optimizers import GradientAccumulator  # noqa: E402

GLOBAL_BATCH = 8
K = 4


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)).astype("float32")
    y = rng.normal(size=(80, 2)).astype("float32")
    return x, y


def build_model():
    keras.utils.set_random_seed(7)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
    )


def inner():
    # global_clipnorm bites on this problem: checks the clip of the global mean.
    return keras.optimizers.Adam(0.01, global_clipnorm=0.05)


RAGGED_SAMPLES = 76  # 9 full global batches and one of 4


def main(out: str, ragged: bool = False) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = data()
    if ragged:
        x, y = x[:RAGGED_SAMPLES], y[:RAGGED_SAMPLES]
    with strategy.scope():
        model = build_model()
        optimizer = GradientAccumulator(inner(), K)
        optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = strategy.experimental_distribute_dataset(dataset.with_options(options))

    # A custom loop: Keras 3.15's model.fit cannot start under
    # MultiWorkerMirroredStrategy (its symbolic build reduces a PerReplica
    # batch eagerly and fails, with any optimizer).
    @tf.function
    def step(batch):
        def replica_fn(xb, yb):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=-1)
                if ragged:
                    replicas = strategy.num_replicas_in_sync
                    loss = tf.reduce_mean(per_example) / replicas
                else:
                    loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            if ragged:
                weight = tf.cast(tf.shape(xb)[0], tf.float32)
                optimizer.apply(grads, model.trainable_variables, weight=weight)
            else:
                optimizer.apply(grads, model.trainable_variables)

        strategy.run(replica_fn, args=batch)

    # 10 global batches: 2 real updates, 2 micro-batches left in the window.
    for batch in batches:
        step(batch)
    counters = [optimizer.iterations.numpy(), optimizer.micro_step.numpy()]
    optimizer.flush()
    counters += [optimizer.iterations.numpy(), optimizer.micro_step.numpy()]
    np.savez(
        out,
        *model.get_weights(),
        counters=np.array(counters),
        replicas=strategy.num_replicas_in_sync,
    )


if __name__ == "__main__":
    main(sys.argv[1], ragged=sys.argv[2:] == ["ragged"])
