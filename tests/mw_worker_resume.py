"""One worker of the multi-worker resume test (run by tests/test_resume_multiworker.py).

Usage: ``TF_CONFIG=... python mw_worker_resume.py BACKUP_DIR OUT.npz [KILL_AT]``.
Trains a custom loop with ``tfkit.TrainStep`` under MultiWorkerMirroredStrategy,
``BackupAndRestore`` backing up every 3 global batches; with KILL_AT this
worker SIGKILLs itself after that many batches of this process. Writes the
final weights to OUT.npz.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfkit  # noqa: E402

GLOBAL_BATCH, EPOCHS, STEPS = 8, 3, 6


def main(backup_dir: str, out: str, kill_at: int = 0) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 3)).astype("float32")
    y = rng.normal(size=(GLOBAL_BATCH * STEPS, 2)).astype("float32")
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)]
        )
        optimizer = tfkit.GradientAccumulator(keras.optimizers.Adam(0.01), 2)
    step = tfkit.TrainStep(model, "mse", optimizer, strategy=strategy)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(48, seed=1).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.batch(GLOBAL_BATCH).with_options(options)
    backup = tfkit.callbacks.BackupAndRestore(backup_dir, save_freq=3)
    callbacks = keras.callbacks.CallbackList([backup], model=model, epochs=EPOCHS, steps=STEPS)
    callbacks.on_train_begin()
    batches = backup.iterator(strategy.experimental_distribute_dataset(dataset))
    seen = 0
    for epoch in range(backup.initial_epoch, EPOCHS):
        callbacks.on_epoch_begin(epoch)
        first = backup.initial_step if epoch == backup.initial_epoch else 0
        for b in range(first, STEPS):
            callbacks.on_train_batch_begin(b)
            logs = step(*next(batches))
            callbacks.on_train_batch_end(b, logs)
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        callbacks.on_epoch_end(epoch, {})
    callbacks.on_train_end()
    np.savez(
        out,
        *model.get_weights(),
        updates=int(optimizer.iterations.numpy()),
        resumed=backup.initial_epoch * STEPS + backup.initial_step,
        chief=int(strategy.extended.should_checkpoint),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
