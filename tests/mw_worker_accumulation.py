"""One worker of the MultiWorkerMirroredStrategy test (run by test_accumulation_distributed.py).

Usage: ``TF_CONFIG=... python mw_worker_accumulation.py OUT.npz``. Trains the
test's tiny model in a custom loop with ``GradientAccumulator(k=4)`` on the
shared data, then writes the final weights and optimizer counters to OUT.npz.
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


def main(out: str) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = data()
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
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
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
    main(sys.argv[1])
