"""Worker for tests/test_resume.py: one training run that may be killed and resumed.

Usage: python resume_worker.py BACKUP_DIR OUT.npz [--kill-at-batch N]

Trains a small recipe that uses every stateful tfkit piece; with
--kill-at-batch it sends itself SIGKILL after that many batches (counted over
the whole run), so nothing gets a chance to clean up. Run again without it,
the run resumes from BACKUP_DIR and writes the final weights to OUT.npz.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfkit  # noqa: E402
from tfkit.callbacks.backup_and_restore import BackupAndRestore  # noqa: E402

EPOCHS, BATCH, N = 4, 8, 96  # 12 batches an epoch


class KillAt(keras.callbacks.Callback):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def build():
    keras.utils.set_random_seed(7)
    block = keras.Sequential(
        [keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.2), keras.layers.Dense(16)]
    )
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            tfkit.Recompute(block),
            keras.layers.Dense(3),
        ]
    )
    total = EPOCHS * N // BATCH
    schedule = tfkit.schedules.OneCycle(0.05, total_steps=total)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("backup_dir")
    p.add_argument("out")
    p.add_argument("--kill-at-batch", type=int, default=0)
    p.add_argument("--keras", action="store_true", help="Keras' own BackupAndRestore (control)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = rng.integers(0, 3, size=N).astype("int32")
    model = build()
    if args.keras:
        callbacks = [keras.callbacks.BackupAndRestore(args.backup_dir, save_freq=5)]
        callbacks[0].skipped_batches = -1
    else:
        callbacks = [BackupAndRestore(args.backup_dir, save_freq=5)]
    if args.kill_at_batch:
        callbacks.append(KillAt(args.kill_at_batch))
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, callbacks=callbacks, verbose=0)
    np.savez(args.out, *model.get_weights(), skipped=callbacks[0].skipped_batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
