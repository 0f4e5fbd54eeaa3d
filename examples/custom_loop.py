"""Every tfkit piece in a hand-written ``tf.function`` loop (no ``model.fit``).

The loop is what ``model.fit`` would do, spelled out: ``tfkit.TrainStep``
(forward, loss scaling, gradients, accumulation, apply; XLA-compiled) per
micro-batch, and Keras callbacks driven through ``keras.callbacks.CallbackList``
— tfkit's momentum scheduler, logger, plateau reduction and early stopping
work there exactly as in ``fit``. ``BackupAndRestore`` makes the loop
resumable: kill it (or send ``SIGTERM``, which writes a backup at the next
batch and exits) and run it again with the same ``--backup-dir``; it continues
at the batch after the last one backed up, with the same data order.

Run ``python examples/custom_loop.py [--precision mixed_float16] [--backup-dir DIR]``.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from digits_data import load_digits_split  # noqa: E402
from quickstart import PRECISIONS, build_model  # noqa: E402

import tfkit  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--accumulation", type=int, default=4)
    p.add_argument("--max-learning-rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backup-dir", default=None, help="resume from / back up to this directory")
    args = p.parse_args(argv)
    for name in ("epochs", "micro_batch", "accumulation"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed, image=True)
    n_val = len(x_train) // 10
    (x_val, y_val), (x_train, y_train) = (x_train[:n_val], y_train[:n_val]), (
        x_train[n_val:],
        y_train[n_val:],
    )
    # Fixed-shape micro-batches: one trace, one XLA program.
    micro_batches = len(x_train) // args.micro_batch
    updates = math.ceil(args.epochs * micro_batches / args.accumulation)
    # One iterator for the whole run, reshuffled each epoch: its position is in
    # every backup, so a resumed run continues with the same order.
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=args.seed)
        .batch(args.micro_batch, drop_remainder=True)
        .repeat()
    )

    with tfkit.precision.set_policy(args.precision) as policy:
        one_cycle = tfkit.schedules.OneCycle(args.max_learning_rate, total_steps=updates)
        optimizer = tfkit.GradientAccumulator(
            keras.optimizers.SGD(one_cycle, momentum=0.9, nesterov=True), args.accumulation
        )
        if policy.name == "mixed_float16":  # bfloat16 needs no loss scaling
            optimizer = tfkit.LossScaleOptimizer(optimizer)
        model = build_model(recompute=True)
        loss = keras.losses.SparseCategoricalCrossentropy()
        model.compile(optimizer, loss)  # attaches the optimizer for the callbacks
        step = tfkit.TrainStep(model, loss, jit_compile=True)

        logger = tfkit.callbacks.HyperparameterLogger()
        plateau = tfkit.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3)
        stopping = tfkit.callbacks.EarlyStopping(
            monitor="val_loss", patience=4, restore_best_weights=True,
            start_from_epoch=args.epochs // 2,
        )  # fmt: skip
        backup = tfkit.callbacks.BackupAndRestore(
            args.backup_dir or tempfile.mkdtemp(prefix="custom_loop_backup_"),
            save_freq=max(1, micro_batches // 2),
            callbacks=[plateau, stopping],  # their state is carried by every backup
        )
        callbacks = keras.callbacks.CallbackList(
            [
                backup,  # first: it restores the other callbacks' state
                tfkit.callbacks.MomentumScheduler(one_cycle.momentum_schedule),
                logger,
                plateau,
                stopping,
            ],
            model=model,
            epochs=args.epochs,
            steps=micro_batches,
        )
        callbacks.on_train_begin()
        batches = backup.iterator(train)  # at the resumed element, if a backup was loaded
        if backup.restored_from:
            print(f"resumed at epoch {backup.initial_epoch + 1}, batch {backup.initial_step}")
        history = []
        for epoch in range(backup.initial_epoch, args.epochs):
            callbacks.on_epoch_begin(epoch)
            losses = []
            first = backup.initial_step if epoch == backup.initial_epoch else 0
            for b in range(first, micro_batches):
                callbacks.on_train_batch_begin(b)
                xb, yb = next(batches)
                logs = step(xb, yb)
                losses.append(logs["loss"])
                callbacks.on_train_batch_end(b, logs)
            val_pred = model.predict(x_val, batch_size=256, verbose=0)
            logs = {
                "loss": float(np.mean(losses)),
                "val_loss": float(loss(y_val, val_pred)),
            }
            # CallbackList hands callbacks a copy of `logs`: read the logger directly.
            logs.update(logger.values())
            callbacks.on_epoch_end(epoch, logs)
            history.append(logs)
            print(
                f"epoch {epoch + 1:2d}  loss {logs['loss']:.4f}  val_loss {logs['val_loss']:.4f}  "
                f"lr {logs['learning_rate']:.4g}  momentum {logs['momentum']:.3f}"
            )
            if model.stop_training:
                break
        callbacks.on_train_end()
        accuracy = float(
            np.mean(np.argmax(model.predict(x_test, batch_size=256, verbose=0), -1) == y_test)
        )
    print(
        f"test accuracy {accuracy:.4f} after {len(history)} epochs; "
        f"{int(tfkit.optimizers.innermost(optimizer).iterations)} updates of "
        f"{args.micro_batch}x{args.accumulation}; precision {policy.name}; "
        f"train step traced {step.trace_count} time(s)"
    )
    return {
        "test_accuracy": accuracy,
        "history": history,
        "trace_count": step.trace_count,
        "resumed_at": (backup.initial_epoch, backup.initial_step) if backup.restored_from else None,
    }


if __name__ == "__main__":
    main()
