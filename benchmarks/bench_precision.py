"""Mixed precision: the cost of tfkit's bounded LossScaleOptimizer, and fp32 vs mixed speed.

Table 1 times a compiled training step (forward, backward, loss scaling,
Adam update) with Keras' ``LossScaleOptimizer`` (baseline), the same again
(control: the noise floor), and ``tfkit.precision.LossScaleOptimizer``; once as
a ``tf.function`` and once with ``jit_compile=True``. Goal: tfkit / Keras <= 1.02.
The step runs in float32 so that the optimizer's own ops, not CPU float16
emulation, are what differ between cases.

Table 2 compares float32, mixed_float16 and mixed_bfloat16 training steps on a
GPU. 16-bit math is only faster with tensor cores; without a GPU it says so
instead of printing a misleading CPU number.

    python benchmarks/bench_precision.py [--quick]
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from harness import interleaved_medians, ratio_table  # noqa: E402

from tfkit.devices import list_devices  # noqa: E402
from tfkit.precision import LossScaleOptimizer, set_policy  # noqa: E402

QUICK = "--quick" in sys.argv
STEPS = 10 if QUICK else 40  # training steps per timed call
REPEATS = 3 if QUICK else 9


def make_step(policy: str, wrap, jit_compile: bool, width: int = 256, batch: int = 64):
    """Return a zero-argument callable running STEPS compiled training steps."""
    keras.utils.set_random_seed(0)
    with set_policy(policy):
        model = keras.Sequential(
            [
                keras.Input((width,)),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(width, activation="relu"),
                keras.layers.Dense(16, dtype="float32"),
            ]
        )
    optimizer = wrap(keras.optimizers.Adam(1e-4))
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, width)).astype("float32"))
    y = tf.constant(rng.normal(size=(batch, 16)).astype("float32"))

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    def run():
        for _ in range(STEPS):
            loss = step()
        return float(loss)  # one host sync per call, identical for every case

    run.step = step
    return run


def graph_ops(step) -> int:
    """Nodes in the traced step, its cond branches and nested functions included."""
    graph_def = step.get_concrete_function().graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def keras_lso(inner):
    return keras.optimizers.LossScaleOptimizer(inner)


def tfkit_lso(inner):
    return LossScaleOptimizer(inner)


def no_wrap(inner):
    return inner


def overhead_table(jit_compile: bool) -> str:
    cases = {
        "keras LossScaleOptimizer": make_step("float32", keras_lso, jit_compile),
        "keras LossScaleOptimizer (control)": make_step("float32", keras_lso, jit_compile),
        "tfkit LossScaleOptimizer": make_step("float32", tfkit_lso, jit_compile),
    }
    medians = interleaved_medians(cases, repeats=REPEATS, warmup=1)
    mode = "jit_compile=True" if jit_compile else "tf.function"
    table = ratio_table(
        medians,
        baseline="keras LossScaleOptimizer",
        title=f"LossScaleOptimizer step time, {mode} ({STEPS} steps per sample, median of {REPEATS})",
        unit="step-time",
    )
    if jit_compile:
        return table
    # Timing on a shared 2-core machine is noisy (see the control row); the size
    # of the traced step is an exact, noise-free view of the added work.
    ops = {name: graph_ops(fn.step) for name, fn in cases.items()}
    base = ops["keras LossScaleOptimizer"]
    lines = ["", "| case | graph ops (step incl. cond branches) | vs Keras |", "|---|---|---|"]
    lines += [f"| {name} | {n} | {n - base:+d} |" for name, n in ops.items()]
    return table + "\n" + "\n".join(lines)


def speedup_table() -> str:
    gpus = [d for d in list_devices() if d.device_type == "GPU"]
    if not gpus:
        return (
            "### float32 vs mixed precision\n\n"
            "no GPU: mixed-precision speed-up not measurable here "
            "(16-bit math needs tensor cores; on a CPU it is emulated and slower)."
        )
    cases = {
        "float32": make_step("float32", no_wrap, True, width=1024, batch=256),
        "mixed_float16 + tfkit LossScaleOptimizer": make_step(
            "mixed_float16", tfkit_lso, True, width=1024, batch=256
        ),
        "mixed_bfloat16": make_step("mixed_bfloat16", no_wrap, True, width=1024, batch=256),
    }
    medians = interleaved_medians(cases, repeats=REPEATS, warmup=1)
    names = ", ".join(f"{d.name} {d.model} cc {d.compute_capability}" for d in gpus)
    return ratio_table(medians, "float32", f"float32 vs mixed precision on {names}", "step-time")


def main() -> None:
    print(overhead_table(jit_compile=False), end="\n\n")
    print(overhead_table(jit_compile=True), end="\n\n")
    print(speedup_table())


if __name__ == "__main__":
    main()
