"""Tune the quickstart model on the offline digits data with keras-tuner (Hyperband, Bayesian).

tfkit's training choices (learning rate, schedule family, precision policy,
gradient accumulation) are searched together with the width of the model by
keras-tuner's own Hyperband and Bayesian-optimization tuners. Everything runs
offline on a CPU in a few minutes; tuner state is written under
``runs/tune_digits/`` (``--output-dir``).

    python examples/tune_digits.py            # both tuners
    python examples/tune_digits.py --quick    # a smoke run in well under a minute
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402
from digits_data import load_digits_split  # noqa: E402

from tfkit.tuning.hypermodel import TfkitHyperModel, allow_missing_tensorboard  # noqa: E402


def build_model(hp) -> keras.Model:
    """The quickstart architecture with a tunable width and dropout."""
    units = hp.Choice("units", [64, 128, 256])
    inputs = keras.Input((64,))
    x = keras.layers.Dense(units, activation="relu")(inputs)
    x = keras.layers.Dropout(hp.Choice("dropout", [0.0, 0.2]))(x)
    x = keras.layers.Dense(units // 2, activation="relu")(x)
    # Softmax in float32 whatever the policy, as mixed-precision guides recommend.
    outputs = keras.layers.Dense(10, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tuner", choices=["hyperband", "bayesian", "both"], default="both")
    p.add_argument("--max-epochs", type=int, default=9, help="Hyperband's max_epochs")
    p.add_argument("--trials", type=int, default=6, help="Bayesian optimization trials")
    p.add_argument("--epochs", type=int, default=8, help="epochs per Bayesian trial")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("runs/tune_digits"))
    p.add_argument("--quick", action="store_true", help="tiny budgets, for a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.max_epochs, args.trials, args.epochs = 3, 2, 2
    for name in ("max_epochs", "trials", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_epochs < 2 and args.tuner != "bayesian":
        p.error(f"--max-epochs must be >= 2 for Hyperband, got {args.max_epochs}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=args.seed)
    n_fit = int(len(x_train) * 0.8)  # the rest is validation_split's share
    batches_per_epoch = math.ceil(n_fit / args.batch_size)
    longest = max(args.max_epochs, args.epochs)

    hypermodel = TfkitHyperModel(
        build_model,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        learning_rate=(1e-4, 3e-2),
        decay_steps=longest * batches_per_epoch,  # the cosine reaches its floor at the end
        policies=("float32", "mixed_float16"),
        accumulation_steps=(1, 2),
        compile_kwargs={"jit_compile": False},  # varying trials: skip per-trial XLA compiles
    )
    common = dict(
        objective="val_accuracy",
        seed=args.seed,
        directory=str(args.output_dir),
        overwrite=True,
    )
    tuners = {}
    if args.tuner in ("hyperband", "both"):
        tuners["hyperband"] = kt.Hyperband(
            hypermodel, max_epochs=args.max_epochs, factor=3, project_name="hyperband", **common
        )
    if args.tuner in ("bayesian", "both"):
        tuners["bayesian"] = kt.BayesianOptimization(
            hypermodel, max_trials=args.trials, project_name="bayesian", **common
        )

    summary = {}
    for name, tuner in tuners.items():
        allow_missing_tensorboard(tuner)
        start = time.perf_counter()
        search_kwargs = dict(validation_split=0.2, batch_size=args.batch_size, verbose=0)
        if name == "bayesian":
            search_kwargs["epochs"] = args.epochs
        tuner.search(x_train, y_train, **search_kwargs)
        seconds = time.perf_counter() - start
        best_hp = tuner.get_best_hyperparameters(1)[0]
        best = tuner.get_best_models(1)[0]
        _, test_accuracy = best.evaluate(x_test, y_test, verbose=0)
        trials = len(tuner.oracle.trials)
        summary[name] = {
            "test_accuracy": float(test_accuracy),
            "trials": trials,
            "seconds": seconds,
            "best": dict(best_hp.values),
        }
        print(f"{name}: {trials} trials in {seconds:.0f} s; best test accuracy {test_accuracy:.4f}")
        for key, value in sorted(best_hp.values.items()):
            print(f"    {key:20s} {value}")
    print(f"tuner state: {args.output_dir}")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
