"""Mixed precision on the offline digits data: pick a policy, audit the model, train.

    python examples/precision_digits.py --precision auto
    python examples/precision_digits.py --precision mixed_float16 --epochs 20

``--precision auto`` picks from the GPU's compute capability (float32 on a
CPU-only machine). Under ``mixed_float16`` the optimizer is wrapped in tfkit's
bounded ``LossScaleOptimizer`` and the final loss scale and skipped-step count
are printed; under ``mixed_bfloat16`` no loss scaling is used (bfloat16 keeps
float32's exponent range). On a CPU, 16-bit policies run but are not faster.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from digits_data import load_digits_split  # noqa: E402

from tfkit.precision import POLICIES, LossScaleOptimizer, audit, set_policy  # noqa: E402


def build_model(num_classes: int = 10) -> keras.Model:
    """A small MLP; sizes are multiples of 8 and the softmax output is float32."""
    inputs = keras.Input((64,))
    x = keras.layers.Dense(128, activation="relu")(inputs)
    x = keras.layers.Dense(64, activation="relu")(x)
    # Softmax and loss in float32 whatever the policy (audit() checks this).
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def train(
    precision: str = "auto",
    epochs: int = 15,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
    verbose: int = 0,
) -> dict:
    """Train on digits under ``precision``; return accuracy, policy and loss-scale facts."""
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed=seed)
    with set_policy(precision) as change:
        model = build_model()
        optimizer = keras.optimizers.Adam(learning_rate)
        if change.name == "mixed_float16":
            optimizer = LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        findings = audit(model, batch_size=batch_size)
        model.fit(
            x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose
        )
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    result = {
        "policy": change.name,
        "reason": change.reason,
        "test_accuracy": float(accuracy),
        "findings": findings,
    }
    if isinstance(model.optimizer, LossScaleOptimizer):
        result["loss_scale"] = float(model.optimizer.loss_scale)
        result["skipped_steps"] = int(model.optimizer.skipped_steps)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=POLICIES, default="auto")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = train(
        args.precision, args.epochs, args.batch_size, args.learning_rate, args.seed, verbose=2
    )
    print(f"policy {result['policy']} ({result['reason']})")
    for finding in result["findings"]:
        print(f"audit: {finding}")
    print(f"test accuracy {result['test_accuracy']:.4f}")
    if "loss_scale" in result:
        print(f"loss scale {result['loss_scale']:g}, skipped steps {result['skipped_steps']}")
    return result


if __name__ == "__main__":
    main()
