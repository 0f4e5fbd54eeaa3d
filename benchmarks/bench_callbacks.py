"""Cost of tfkit callbacks in a jit-compiled model.fit: step-time ratios vs no callback.

Goal (issue #7): momentum cycling and the hyperparameter logger cost <= 3 %
(ratio <= 1.03). Cases share data and model shape; each has its own compiled
model (traced in the warm-up), then one-epoch fits are timed round-robin.

Run: PYTHONPATH=. python benchmarks/bench_callbacks.py [--quick]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import interleaved_medians, ratio_table  # noqa: E402

from tfkit.callbacks import (  # noqa: E402
    EarlyStopping,
    HyperparameterLogger,
    MomentumScheduler,
    ReduceLROnPlateau,
)

QUICK = "--quick" in sys.argv
N, D, WIDTH, BATCH = (1024, 32, 64, 32) if QUICK else (4096, 32, 128, 32)


def _fit_case(callbacks_factory, schedule=False, steps_per_execution=1):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    lr = keras.optimizers.schedules.CosineDecay(0.01, 10_000) if schedule else 0.01
    model = keras.Sequential([
        keras.Input((D,)),
        keras.layers.Dense(WIDTH, activation="relu"),
        keras.layers.Dense(WIDTH, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(keras.optimizers.SGD(lr, momentum=0.9), "mse", jit_compile=True,
                  steps_per_execution=steps_per_execution)
    callbacks = callbacks_factory()

    def run():
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)

    return run


def momentum_schedule():
    return keras.optimizers.schedules.CosineDecay(0.95, 10_000, alpha=0.85 / 0.95)


def main() -> None:
    repeats = 5 if QUICK else 11
    for spe in (1, 8):
        cases = {
            "no callback": _fit_case(list, steps_per_execution=spe),
            "no callback (control)": _fit_case(list, steps_per_execution=spe),
            "MomentumScheduler": _fit_case(lambda: [MomentumScheduler(momentum_schedule())], steps_per_execution=spe),
            "HyperparameterLogger": _fit_case(lambda: [HyperparameterLogger()], steps_per_execution=spe),
            "Momentum + Logger": _fit_case(
                lambda: [MomentumScheduler(momentum_schedule()), HyperparameterLogger()], steps_per_execution=spe),
        }
        if spe == 1:
            cases["ReduceLROnPlateau (schedule)"] = _fit_case(
                lambda: [ReduceLROnPlateau(monitor="loss", patience=1)], schedule=True)
            cases["EarlyStopping (device snapshot)"] = _fit_case(
                lambda: [EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)])
        medians = interleaved_medians(cases, repeats=repeats, warmup=1)
        steps = N // BATCH
        print(ratio_table(medians, "no callback",
                          f"jit-compiled fit, {steps} steps/epoch, steps_per_execution={spe} (goal <= 1.03)",
                          unit="epoch time"))
        print(flush=True)


if __name__ == "__main__":
    main()
