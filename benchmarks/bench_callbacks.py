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
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import interleaved_medians, ratio_table  # noqa: E402

from tfkit.callbacks import (  # noqa: E402
    EarlyStopping,
    HyperparameterLogger,
    MomentumScheduler,
    ReduceLROnPlateau,
    schedule_hyperparameter,
)

QUICK = "--quick" in sys.argv
N, D, WIDTH, BATCH = (1024, 32, 64, 32) if QUICK else (2048, 32, 128, 32)


def _fit_case(callbacks_factory, schedule=False, steps_per_execution=1):
    """One compiled model and one set of callbacks, reused by every timed one-epoch fit."""
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


def _loop_case(optimizer_factory, scheduled: bool, steps: int):
    """A custom jit-compiled step called ``steps`` times: isolates the in-graph cost."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, D)).astype("float32"))
    y = tf.constant(rng.normal(size=(BATCH, 1)).astype("float32"))
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(WIDTH, activation="relu"), keras.layers.Dense(1)])
    optimizer = optimizer_factory()
    optimizer.build(model.trainable_variables)
    if scheduled:
        schedule_hyperparameter(optimizer, momentum_schedule())

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    def run():
        for _ in range(steps):
            loss = step()
        float(loss)

    run.step = step
    return run


def _graph_ops(run) -> int:
    """Number of ops in the traced step (deterministic, unlike timings on a shared machine)."""
    graph = run.step.get_concrete_function().graph
    return len(graph.as_graph_def().node) + sum(len(f.node_def) for f in graph.as_graph_def().library.function)


def _xla_counts(run) -> tuple[int, int]:
    """Instructions and fusions in the XLA-optimized HLO: scalar schedule math lands inside fusions."""
    hlo = run.step.experimental_get_compiler_ir()(stage="optimized_hlo")
    lines = hlo.splitlines()
    instructions = sum("=" in line and not line.lstrip().startswith(("HloModule", "ENTRY")) for line in lines)
    fusions = sum(" fusion(" in line for line in lines)
    return instructions, fusions


def main() -> None:
    repeats = 5 if QUICK else 7
    cases = {
        "no callback": _fit_case(list),
        "no callback (control)": _fit_case(list),
        "MomentumScheduler": _fit_case(lambda: [MomentumScheduler(momentum_schedule())]),
        "HyperparameterLogger": _fit_case(lambda: [HyperparameterLogger()]),
        "Momentum + Logger": _fit_case(lambda: [MomentumScheduler(momentum_schedule()), HyperparameterLogger()]),
        "ReduceLROnPlateau (on a schedule)": _fit_case(
            lambda: [ReduceLROnPlateau(monitor="loss", patience=1)], schedule=True),
        "EarlyStopping (device snapshot)": _fit_case(
            lambda: [EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)]),
    }
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print(ratio_table(medians, "no callback",
                      f"jit-compiled model.fit, {N // BATCH} steps/epoch (goal <= 1.03)", unit="epoch time"))
    print(flush=True)

    steps = 50 if QUICK else 200
    sgd = lambda: keras.optimizers.SGD(0.01, momentum=0.9)  # noqa: E731
    adam = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731
    cases = {
        "SGD momentum=0.9": _loop_case(sgd, False, steps),
        "SGD momentum=0.9 (control)": _loop_case(sgd, False, steps),
        "SGD scheduled momentum": _loop_case(sgd, True, steps),
        "Adam beta_1=0.9": _loop_case(adam, False, steps),
        "Adam scheduled beta_1": _loop_case(adam, True, steps),
    }
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print(ratio_table(medians, "SGD momentum=0.9",
                      f"custom jit step x {steps}: in-graph cost of a scheduled hyperparameter", unit="step time"))
    print()
    print(f"Adam scheduled / Adam constant: {medians['Adam scheduled beta_1'] / medians['Adam beta_1=0.9']:.3f}")
    print()
    print("### structural cost of the traced step (deterministic; 2 matmul layers)")
    print()
    print("| case | TF graph ops | XLA optimized HLO instructions | XLA fusions (kernels) |")
    print("|---|---|---|---|")
    for name, run in cases.items():
        instructions, fusions = _xla_counts(run)
        print(f"| {name} | {_graph_ops(run)} | {instructions} | {fusions} |")


if __name__ == "__main__":
    main()
