"""Worker for the resume tests: one training run that may be killed and resumed.

Usage: python resume_worker.py BACKUP_DIR OUT.npz [--kill-at-batch N] [--save-freq F]
       [--double-checkpoint] [--data KIND] [--bad KIND] [--fault N:STAGE:ACTION]
       [--signal-at-batch N:SIGNAL]

Trains a small recipe that uses every stateful tfkit piece; with
--kill-at-batch it sends itself SIGKILL after that many batches (counted over
the whole run), so nothing gets a chance to clean up. Run again without it,
the run resumes from BACKUP_DIR and writes the final weights to OUT.npz.
It prints "TRAINING" when training starts (the kill harness times random
signals from there).

* ``--data``: ``numpy`` (default, no shuffle), ``numpy-shuffle`` (Keras'
  shuffle), ``reshuffle`` (tf.data shuffle reshuffled each epoch), ``repeat``
  (``shuffle().repeat()`` with ``steps_per_epoch``), ``map`` (map + batch +
  prefetch with a random augmentation drawn from a seeded tf.data op).
* ``--bad``: ``mixed`` (mixed_float16; one sample overflows float16, so the
  loss scaler skips steps and the loss total holds inf), ``drop`` (float32;
  one sample is inf, so the GradientAccumulator drops micro-batches).
* ``--fault N:STAGE:ACTION``: during backup N (counted from 1 in this process)
  at STAGE (see tfkit/callbacks/_atomic.py) ``kill`` (SIGKILL), ``sigint``,
  ``sigterm`` or ``enospc`` (the write fails as on a full disk). The fault is
  passed to the callback object; library code reads no environment for it.
* ``--signal-at-batch N:SIGNAL``: send SIGINT or SIGTERM to itself after N batches.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfkit  # noqa: E402
from tfkit.callbacks import _atomic  # noqa: E402

EPOCHS, BATCH, N, K = 4, 8, 96, 3  # 12 micro-batches an epoch, an update every 3
DATA = ("numpy", "numpy-shuffle", "reshuffle", "repeat", "map")
BAD = ("none", "mixed", "drop")


class KillAt(keras.callbacks.Callback):
    def __init__(self, at: int, sig=signal.SIGKILL):
        super().__init__()
        self.at, self.seen, self.sig = at, 0, sig

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), self.sig)


class InjectedFault(_atomic.Fault):
    """Acts at one (backup number, stage) of this process."""

    def __init__(self, spec: str):
        count, stage, action = spec.split(":")
        self.target, self.stage, self.action = int(count), stage, action

    def at(self, stage: str) -> None:
        if stage != self.stage or self.save != self.target:
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.action == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        elif self.action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif self.action == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


def build(bad: str = "none"):
    keras.utils.set_random_seed(7)
    if bad == "mixed":
        keras.config.set_dtype_policy("mixed_float16")
    block = keras.Sequential(
        [keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.2), keras.layers.Dense(16)]
    )
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            tfkit.Recompute(block),
            keras.layers.Dense(3, dtype="float32"),
        ]
    )
    schedule = tfkit.schedules.OneCycle(0.05, total_steps=EPOCHS * N // BATCH // K)
    optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(schedule, momentum=0.9), K)
    if bad == "mixed":
        optimizer = tfkit.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],  # compiled metrics: built by fit's first step, after on_train_begin
    )
    return model, schedule


def data(kind: str, bad: str):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6)).astype("float32")
    y = rng.integers(0, 3, size=N).astype("int32")
    if bad == "mixed":
        x[17] = 1e6  # overflows float16: an inf loss, a step the loss scaler skips
    elif bad == "drop":
        x[17, 0] = np.inf  # a non-finite micro-batch the accumulator drops
    fit_kwargs = dict(batch_size=BATCH, shuffle=False)
    if kind == "numpy":
        return (x, y), fit_kwargs
    if kind == "numpy-shuffle":
        return (x, y), dict(batch_size=BATCH, shuffle=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if kind == "reshuffle":
        return (ds.shuffle(N, seed=3).batch(BATCH),), dict(shuffle=False)
    if kind == "repeat":
        ds = ds.shuffle(40, seed=3).repeat().batch(BATCH)
        return (ds,), dict(steps_per_epoch=N // BATCH, shuffle=False)

    def jitter(xb, yb):
        noise = tf.random.stateless_normal(tf.shape(xb), seed=tf.cast(yb[:2] + 1, tf.int64))
        return xb + 0.01 * noise, yb

    ds = ds.shuffle(N, seed=5).batch(BATCH).map(jitter).prefetch(2)
    return (ds,), dict(shuffle=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("backup_dir")
    p.add_argument("out")
    p.add_argument("--kill-at-batch", type=int, default=0)
    p.add_argument("--signal-at-batch", default="")
    p.add_argument("--save-freq", type=int, default=5)
    p.add_argument("--double-checkpoint", action="store_true")
    p.add_argument("--data", choices=DATA, default="numpy")
    p.add_argument("--bad", choices=BAD, default="none")
    p.add_argument("--fault", default="")
    p.add_argument("--keras", action="store_true", help="Keras' own BackupAndRestore (control)")
    args = p.parse_args(argv)
    inputs, fit_kwargs = data(args.data, args.bad)
    model, schedule = build(args.bad)
    # Stateful callbacks whose state must survive the kill; patience/min_delta
    # are chosen so both act during the run (the plateau multiplier changes).
    stop = tfkit.callbacks.EarlyStopping(monitor="loss", patience=10, stop_on_nonfinite=False)
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
        if args.fault:
            backup._fault = InjectedFault(args.fault)
    callbacks = [
        backup,
        keras.callbacks.LambdaCallback(on_train_begin=lambda logs: print("TRAINING", flush=True)),
        tfkit.callbacks.MomentumScheduler(schedule.momentum_schedule),
        stop,
        plateau,
    ]
    if args.kill_at_batch:
        callbacks.append(KillAt(args.kill_at_batch))
    if args.signal_at_batch:
        at, name = args.signal_at_batch.split(":")
        callbacks.append(KillAt(int(at), getattr(signal, name)))
    try:
        model.fit(*inputs, epochs=EPOCHS, callbacks=callbacks, verbose=0, **fit_kwargs)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        return 130
    np.savez(
        args.out,
        *model.get_weights(),
        skipped=backup.skipped_batches,
        damaged=len(getattr(backup, "damaged_backups", ())),
        multiplier=plateau.multiplier,
        updates=int(tfkit.optimizers.innermost(model.optimizer).iterations),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
