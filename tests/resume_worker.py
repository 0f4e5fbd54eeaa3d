"""Worker for tests/test_resume.py: one training run that may be killed and resumed.

Usage: python resume_worker.py BACKUP_DIR OUT.npz [--kill-at-batch N] [--save-freq F]
       [--double-checkpoint]

Trains a small recipe that uses every stateful tfkit piece; with
--kill-at-batch it sends itself SIGKILL after that many batches (counted over
the whole run), so nothing gets a chance to clean up. Run again without it,
the run resumes from BACKUP_DIR and writes the final weights to OUT.npz.
It prints "TRAINING" when training starts (the kill harness times random kills
from there). ``_TFKIT_BACKUP_FAULT`` (see tfkit/callbacks/_atomic.py) kills it
inside a chosen backup write instead.
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

EPOCHS, BATCH, N, K = 4, 8, 96, 3  # 12 micro-batches an epoch, an update every 3


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
    schedule = tfkit.schedules.OneCycle(0.05, total_steps=EPOCHS * N // BATCH // K)
    model.compile(
        optimizer=tfkit.GradientAccumulator(keras.optimizers.SGD(schedule, momentum=0.9), K),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, schedule


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("backup_dir")
    p.add_argument("out")
    p.add_argument("--kill-at-batch", type=int, default=0)
    p.add_argument("--save-freq", type=int, default=5)
    p.add_argument("--double-checkpoint", action="store_true")
    p.add_argument("--keras", action="store_true", help="Keras' own BackupAndRestore (control)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = rng.integers(0, 3, size=N).astype("int32")
    model, schedule = build()
    # Stateful callbacks whose state must survive the kill; patience/min_delta
    # are chosen so both act during the run (the plateau multiplier changes).
    stop = tfkit.callbacks.EarlyStopping(monitor="loss", patience=10)
    plateau = tfkit.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=0.05)
    if args.keras:
        backup = keras.callbacks.BackupAndRestore(args.backup_dir, save_freq=5)
        backup.skipped_batches = -1
    else:
        backup = tfkit.callbacks.BackupAndRestore(
            args.backup_dir,
            save_freq=args.save_freq,
            callbacks=[stop, plateau],
            double_checkpoint=args.double_checkpoint,
        )
    callbacks = [
        backup,
        keras.callbacks.LambdaCallback(on_train_begin=lambda logs: print("TRAINING", flush=True)),
        tfkit.callbacks.MomentumScheduler(schedule.momentum_schedule),
        stop,
        plateau,
    ]
    if args.kill_at_batch:
        callbacks.append(KillAt(args.kill_at_batch))
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, callbacks=callbacks, verbose=0)
    np.savez(
        args.out,
        *model.get_weights(),
        skipped=backup.skipped_batches,
        damaged=len(getattr(backup, "damaged_backups", ())),
        multiplier=plateau.multiplier,
        updates=int(model.optimizer.iterations),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
