"""Elastic resume in one process with four logical CPU devices (run by tests/test_resume_elastic.py).

The per-replica batch (4) is kept, so fit's global batch follows the replica
count and ``BackupAndRestore(on_change="adapt")`` re-derives the accumulation
steps: 2 replicas x k=2 -> 1 replica x k=4 -> 4 replicas x k=1, 16 samples
per update throughout. Prints one JSON line: the largest relative and absolute
differences from the uninterrupted 2-replica run, and what each resume did.
"""

from __future__ import annotations

import json
import sys
import warnings

import tensorflow as tf

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 4)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from stopping import Stop, StopAt  # noqa: E402

import tfkit  # noqa: E402
from tfkit.callbacks import BackupAndRestore  # noqa: E402

N, EPOCHS, PER_REPLICA, K_AT_TWO = 64, 3, 4, 2


def strategy(replicas: int) -> tf.distribute.MirroredStrategy:
    tf.distribute.MirroredStrategy._collective_key_base += 100_000  # fresh keys per strategy
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def data(replicas: int, mode: str) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    batch = PER_REPLICA * replicas
    if mode == "tf.data":  # static batch: every micro-batch full
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
        return {"x": ds}
    return {"x": x, "y": y, "batch_size": batch, "shuffle": False}  # NumPy under install()


def run(replicas: int, mode: str, callbacks=(), k: int = K_AT_TWO):
    keras.utils.set_random_seed(3)
    with strategy(replicas).scope():
        model = keras.Sequential([
            keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1),
        ])  # fmt: skip
        model.compile(tfkit.GradientAccumulator(keras.optimizers.Adam(1e-2), k), "mse")
    if mode == "numpy":
        tfkit.training.install(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # replayed distributed input
            model.fit(epochs=EPOCHS, verbose=0, callbacks=list(callbacks), **data(replicas, mode))
    except Stop:
        return model, False
    return model, True


def main(backup_dir: str, mode: str) -> None:
    expected, _ = run(2, mode)
    report = {}
    # 2 replicas: 8 steps per epoch; a backup every 2 batches (closed windows); stop at 10.
    _, done = run(2, mode, [BackupAndRestore(backup_dir, save_freq=2), StopAt(10)])
    assert not done
    # 1 replica: 16 steps, k=4. The backup (epoch 1, batch 2) is batch 4 here.
    backup = BackupAndRestore(backup_dir, save_freq=4, on_change="adapt")
    _, done = run(1, mode, [backup, StopAt(12)])
    assert not done
    report["one"] = {"adapted": {k: list(v) for k, v in backup.adapted.items()},
                     "initial": [backup.initial_epoch, backup.initial_step]}  # fmt: skip
    # 4 replicas: 4 steps, k=1.
    backup = BackupAndRestore(backup_dir, save_freq=1, on_change="adapt")
    model, done = run(4, mode, [backup])
    assert done
    report["four"] = {"adapted": {k: list(v) for k, v in backup.adapted.items()},
                      "initial": [backup.initial_epoch, backup.initial_step],
                      "k": int(model.optimizer.accumulation_steps),
                      "iterations": int(model.optimizer.iterations.numpy())}  # fmt: skip
    diffs = [
        (np.abs(b - a).max(), (np.abs(b - a) / np.maximum(np.abs(a), 1e-12)).max())
        for a, b in zip(expected.get_weights(), model.get_weights(), strict=True)
    ]
    report["max_abs"] = float(max(d[0] for d in diffs))
    report["max_rel"] = float(max(d[1] for d in diffs))
    report["expected_iterations"] = int(expected.optimizer.iterations.numpy())
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
