"""Quickstart: train a small Keras model on the offline digits data with tfkit.

Run it with ``make demo`` (or ``python examples/quickstart.py``). It writes the
training history as CSV under ``runs/quickstart/`` and prints the held-out
accuracy.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from digits_data import load_digits_split  # noqa: E402


def build_model(num_classes: int = 10) -> keras.Model:
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu")(inputs)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("runs/quickstart"))
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress output")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history_csv = args.output_dir / "history.csv"
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_split=0.1,
        callbacks=[keras.callbacks.CSVLogger(str(history_csv))],
        verbose=0 if args.quiet else 2,
    )
    seconds = time.perf_counter() - start
    _, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    summary = {
        "test_accuracy": float(test_accuracy),
        "epochs": len(history.history["loss"]),
        "train_seconds": seconds,
        "history_csv": str(history_csv),
    }
    print(
        f"test accuracy {test_accuracy:.4f} after {summary['epochs']} epochs "
        f"({seconds:.1f} s); history: {history_csv}"
    )
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
