"""Quickstart: every tfkit piece in one ``model.fit``, on offline digits data.

Run it with ``make demo`` (or ``python examples/quickstart.py``). The recipe:

* a OneCycle learning rate with momentum cycling (``MomentumScheduler``),
  as in Smith's 1cycle policy and PyTorch's ``OneCycleLR``;
* the precision policy of ``--precision``, the optimizer wrapped by
  ``tfkit.precision.wrap`` (tfkit's bounded loss scaler under float16) (``auto`` picks bf16 on Ampere+,
  fp16 on Volta/Turing, float32 elsewhere, so float32 on this CPU);
* ``GradientAccumulator``: micro-batches of ``--micro-batch`` examples,
  ``--accumulation`` of them per update (the effective batch is the product);
* ``Recompute`` around each residual conv block;
* ``EarlyStopping`` (stops on NaN too, restores the best weights) and
  ``HyperparameterLogger`` (learning rate, momentum, loss scale in the logs).

It prints a summary (test accuracy, epochs, effective batch, peak memory) and
writes ``history.csv`` and PNG plots of learning rate, momentum and loss under
``runs/quickstart/``.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import time

# Before TensorFlow starts: quiet logs, and (when run as a program) the BFC
# allocator, so that peak memory on CPU can be read. Imported as a module,
# TensorFlow may already be running: leave the environment alone.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if __name__ == "__main__":
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from digits_data import load_digits_split  # noqa: E402

import tfkit  # noqa: E402
from tfkit.cli.quickstart_model import build_model  # noqa: E402  (shared with tfkit lr-find)

PRECISIONS = ("auto", "mixed_float16", "mixed_bfloat16", "float32")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument(
        "--epochs", type=int, default=30, help="maximum epochs (early stopping may end sooner)"
    )
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--accumulation", type=int, default=4)
    p.add_argument("--max-learning-rate", type=float, default=0.05)
    p.add_argument("--no-recompute", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("runs/quickstart"))
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress output")
    args = p.parse_args(argv)
    for name in ("epochs", "micro_batch", "accumulation"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.max_learning_rate > 0:
        p.error(f"--max-learning-rate must be > 0, got {args.max_learning_rate}")
    return args


def _log_scale_if_wide(ax, values) -> None:
    """Log y axis when the positive values span two decades or more."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size > 1 and v.max() / v.min() >= 100:
        ax.set_yscale("log")


def figures(history: dict, schedule, updates: int, planned: int, best_epoch: int, best_update: int):
    """The three figures: rate and momentum over the ``updates`` that ran, loss per epoch.

    ``best_epoch`` (0-based) is the epoch whose weights EarlyStopping restored;
    ``best_update`` the update count at its end. Both are marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = f"best epoch {best_epoch + 1} (weights restored)"
    steps = np.arange(updates)
    figs = {}
    for name, fn, label in (
        ("learning_rate", schedule, "learning rate"),
        ("momentum", schedule.momentum_schedule, "momentum"),
    ):
        values = tfkit.plot.schedule_values(fn, updates)
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.plot(steps, values, label=label)
        ax.axvline(best_update, color="tab:green", ls="--", label=best)
        _log_scale_if_wide(ax, values)
        ax.set(
            xlabel="step (optimizer updates)",
            ylabel=label,
            title=f"OneCycle {label}: {updates} of {planned} planned updates ran",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        figs[name] = fig
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(epochs, history["loss"], label="train")
    ax.plot(epochs, history["val_loss"], label="validation")
    ax.axvline(best_epoch + 1, color="tab:green", ls="--", label=best)
    _log_scale_if_wide(ax, [*history["loss"], *history["val_loss"]])
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["loss"] = fig
    return figs


def _plots(figs: dict, out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in figs.items():
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def _peak_memory_bytes() -> int | None:
    """Peak bytes allocated on the first GPU, else the CPU; None where not measurable."""
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    try:
        return int(tf.config.experimental.get_memory_info(device)["peak"])
    except ValueError:  # CPU without TF_CPU_ALLOCATOR_USE_BFC=true at start-up
        return None


def _format_peak(mib: float | None) -> str:
    if mib is None:
        return "not measurable (start with TF_CPU_ALLOCATOR_USE_BFC=true)"
    return f"{mib:.1f} MiB"


def main(argv=None) -> dict:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed, image=True)
    n_fit = int(len(x_train) * 0.9)  # the rest is validation (Keras' validation_split)
    micro_batches_per_epoch = math.ceil(n_fit / args.micro_batch)
    total_updates = math.ceil(args.epochs * micro_batches_per_epoch / args.accumulation)

    with tfkit.precision.set_policy(args.precision) as policy:
        schedule = tfkit.schedules.OneCycle(args.max_learning_rate, total_steps=total_updates)
        accumulator = tfkit.GradientAccumulator(
            keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
            accumulation_steps=args.accumulation,
        )
        # Under mixed_float16: tfkit's LossScaleOptimizer (bounded, skipped steps
        # counted and logged) instead of the unbounded one compile would add.
        optimizer = tfkit.precision.wrap(accumulator, policy=policy)
        model = build_model(recompute=not args.no_recompute)
        model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
        history_csv = args.output_dir / "history.csv"
        # OneCycle's rate is high for the first part of the run and the
        # validation loss is noisy there: count patience from mid-run.
        early_stopping = tfkit.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=5,
            restore_best_weights=True,
            start_from_epoch=args.epochs // 2,
        )
        start = time.perf_counter()
        history = model.fit(
            x_train,
            y_train,
            batch_size=args.micro_batch,
            epochs=args.epochs,
            validation_split=0.1,
            callbacks=[
                tfkit.callbacks.MomentumScheduler(schedule.momentum_schedule),
                tfkit.callbacks.HyperparameterLogger(),
                early_stopping,
                keras.callbacks.CSVLogger(str(history_csv)),
            ],
            verbose=0 if args.quiet else 2,
        )
        seconds = time.perf_counter() - start
        _, test_accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    peak = _peak_memory_bytes()
    updates = int(optimizer.iterations)
    best_epoch = int(early_stopping.best_epoch)
    # The accumulator's windows run on across epochs: floor, not ceil.
    best_update = (best_epoch + 1) * micro_batches_per_epoch // args.accumulation
    figs = figures(
        history.history, schedule, updates, total_updates, best_epoch, min(best_update, updates)
    )
    plots = _plots(figs, args.output_dir)
    summary = {
        "test_accuracy": float(test_accuracy),
        "epochs": len(history.history["loss"]),
        "effective_batch": args.micro_batch * args.accumulation,
        "updates": updates,
        "best_epoch": best_epoch,
        "precision": policy.name,
        "peak_memory_mib": None if peak is None else peak / 2**20,
        "train_seconds": seconds,
        "history_csv": str(history_csv),
        "plots": [str(p) for p in plots],
    }
    print(
        f"\ntest accuracy    {summary['test_accuracy']:.4f}\n"
        f"epochs           {summary['epochs']} (of at most {args.epochs}; early stopping), "
        f"best epoch {best_epoch + 1} restored\n"
        f"effective batch  {summary['effective_batch']} = {args.micro_batch} x {args.accumulation} "
        f"accumulated; {summary['updates']} updates\n"
        f"precision        {policy.name} ({policy.reason})\n"
        f"peak memory      {_format_peak(summary['peak_memory_mib'])}\n"
        f"train time       {seconds:.1f} s\n"
        f"outputs          {args.output_dir}/ (history.csv, learning_rate.png, momentum.png, loss.png)"
    )
    return summary


if __name__ == "__main__":
    main()
