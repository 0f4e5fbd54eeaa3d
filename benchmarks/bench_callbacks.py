"""Cost of tfkit callbacks in a jit-compiled model.fit: step-time ratios vs no callback.

Goals: the whole hyperparameter control plane (MomentumScheduler +
ReduceLROnPlateau + HyperparameterLogger + EpochScheduler) costs <= 2 %
(ratio <= 1.02, with a second no-callback row as the noise control); the
structural cost of the traced step (XLA optimized HLO instructions) is reported
for the control plane against plain Keras. Cases share data and model shape;
each has its own compiled model (traced in the warm-up), then one-epoch fits
are timed round-robin.

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
    EpochScheduler,
    HyperparameterLogger,
    MomentumScheduler,
    ReduceLROnPlateau,
    schedule_hyperparameter,
)
from tfkit.optimizers import control  # noqa: E402

QUICK = "--quick" in sys.argv
N, D, WIDTH, BATCH = (1024, 32, 64, 32) if QUICK else (2048, 32, 128, 32)


def _fit_case(callbacks_factory, schedule=False, steps_per_execution=1, n=N, width=WIDTH):
    """One compiled model and one set of callbacks, reused by every timed one-epoch fit."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, D)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    lr = keras.optimizers.schedules.CosineDecay(0.01, 10_000) if schedule else 0.01
    model = keras.Sequential([
        keras.Input((D,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
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


def control_plane():
    """Every hyperparameter callback at once (the plateau never fires: patience is huge)."""
    return [
        MomentumScheduler(momentum_schedule()),
        ReduceLROnPlateau(monitor="loss", patience=10_000),
        HyperparameterLogger(),
        EpochScheduler(keras.optimizers.schedules.ExponentialDecay(1.0, 1, 0.99)),
    ]


def _host_cost() -> tuple[float, float]:
    """Host time of the control-plane callbacks alone: per fit (begin+end) and per epoch, in ms."""
    import time

    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(WIDTH), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse", jit_compile=True)
    model.optimizer.build(model.trainable_variables)
    callbacks = keras.callbacks.CallbackList(control_plane(), model=model)
    callbacks.on_train_begin()
    start = time.perf_counter()
    for _ in range(20):
        callbacks.on_train_begin()
        callbacks.on_train_end()
    per_fit = (time.perf_counter() - start) / 20
    start = time.perf_counter()
    for epoch in range(50):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0})
    per_epoch = (time.perf_counter() - start) / 50
    return per_fit * 1e3, per_epoch * 1e3


def _loop_case(optimizer_factory, scheduled: bool, steps: int, controlled: bool = False):
    """A custom jit-compiled step called ``steps`` times: isolates the in-graph cost."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, D)).astype("float32"))
    y = tf.constant(rng.normal(size=(BATCH, 1)).astype("float32"))
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(WIDTH, activation="relu"), keras.layers.Dense(1)])
    optimizer = optimizer_factory()
    optimizer.build(model.trainable_variables)
    if controlled:
        control(optimizer)  # the per-leaf state: multiplier, epoch scale, applied values
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
        "control plane: Momentum + Plateau + Logger + EpochScheduler": _fit_case(control_plane),
        "control plane, on a schedule": _fit_case(control_plane, schedule=True),
        "MomentumScheduler": _fit_case(lambda: [MomentumScheduler(momentum_schedule())]),
        "HyperparameterLogger": _fit_case(lambda: [HyperparameterLogger()]),
        "EarlyStopping (device snapshot)": _fit_case(
            lambda: [EarlyStopping(monitor="loss", patience=100, restore_best_weights=True)]),
    }
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print(ratio_table(medians, "no callback",
                      f"jit-compiled model.fit, short epochs: {N // BATCH} steps/epoch, width {WIDTH}",
                      unit="epoch time"))
    # The same callbacks on long epochs of a wider model: the per-fit and
    # per-epoch host work is amortised, what is left is the cost per step.
    n_long, width_long = (4096, 256) if QUICK else (16384, 512)
    cases = {
        "no callback": _fit_case(list, n=n_long, width=width_long),
        "no callback (control)": _fit_case(list, n=n_long, width=width_long),
        "control plane: Momentum + Plateau + Logger + EpochScheduler": _fit_case(
            control_plane, n=n_long, width=width_long
        ),
    }
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print()
    print(ratio_table(medians, "no callback",
                      f"jit-compiled model.fit, long epochs: {n_long // BATCH} steps/epoch, "
                      f"width {width_long} (goal <= 1.02)", unit="epoch time"))
    fit_ms, epoch_ms = _host_cost()
    print()
    print(f"control-plane callbacks on the host: {fit_ms:.2f} ms per fit (begin + end), "
          f"{epoch_ms:.2f} ms per epoch (begin + end); in the short-epoch table a timed case is a one-epoch fit of "
          f"{N // BATCH} steps, so this fixed cost weighs more there than in a real epoch.")
    print(flush=True)

    steps = 50 if QUICK else 200
    sgd = lambda: keras.optimizers.SGD(0.01, momentum=0.9)  # noqa: E731
    adam = lambda: keras.optimizers.Adam(1e-3)  # noqa: E731
    cases = {
        "SGD momentum=0.9": _loop_case(sgd, False, steps),
        "SGD momentum=0.9 (control)": _loop_case(sgd, False, steps),
        "SGD, control plane installed": _loop_case(sgd, False, steps, controlled=True),
        "SGD, control plane + scheduled momentum": _loop_case(sgd, True, steps),
        "Adam beta_1=0.9": _loop_case(adam, False, steps),
        "Adam, control plane + scheduled beta_1": _loop_case(adam, True, steps),
    }
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print(ratio_table(medians, "SGD momentum=0.9",
                      f"custom jit step x {steps}: in-graph cost of a scheduled hyperparameter", unit="step time"))
    print()
    adam_ratio = medians["Adam, control plane + scheduled beta_1"] / medians["Adam beta_1=0.9"]
    print(f"Adam control plane / plain Keras Adam: {adam_ratio:.3f}")
    print()
    print("### structural cost of the traced step, control plane vs plain Keras (deterministic; 2 matmul layers)")
    print()
    print("| case | TF graph ops | XLA optimized HLO instructions | XLA fusions (kernels) |")
    print("|---|---|---|---|")
    for name, run in cases.items():
        instructions, fusions = _xla_counts(run)
        print(f"| {name} | {_graph_ops(run)} | {instructions} | {fusions} |")


if __name__ == "__main__":
    main()
