"""Step-time cost of tfkit schedules in a jit-compiled ``model.fit``, as ratios to a constant rate.

Each case is a small MLP trained with SGD(momentum=0.9) under
``jit_compile=True`` and ``steps_per_execution=STEPS``; the only difference
between cases is the optimizer's ``learning_rate``. Cases run interleaved
(harness.interleaved_medians) and each timed call is one epoch of ``STEPS``
updates, one compiled XLA loop. ``constant (control)`` is
a second, identical constant-rate model: its ratio shows the noise floor.
Goal: every schedule within that noise (<= 1.03).

Run: ``python benchmarks/bench_schedules.py`` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from harness import interleaved_medians, ratio_table  # noqa: E402

from tfkit.schedules import (  # noqa: E402
    CosineDecay,
    CosineDecayRestarts,
    Cyclic,
    ExponentialDecay,
    InverseTimeDecay,
    Join,
    LinearCosineDecay,
    MultiStepDecay,
    NaturalExpDecay,
    OneCycle,
    PiecewiseConstantDecay,
    PolynomialDecay,
    Warmup,
)

STEPS = 100  # updates per timed call
BATCH = 32
TOTAL = 10_000  # schedule length: the timed steps sit inside it

CASES = {
    "constant": lambda: 0.01,
    "constant (control)": lambda: 0.01,
    "keras CosineDecay (reference)": lambda: keras.optimizers.schedules.CosineDecay(0.01, TOTAL),
    "PiecewiseConstantDecay": lambda: PiecewiseConstantDecay(
        [100, 300, 3000], [0.1, 0.05, 0.01, 0.001]
    ),
    "MultiStepDecay": lambda: MultiStepDecay(0.1, [100, 300, 3000]),
    "ExponentialDecay": lambda: ExponentialDecay(0.1, 100, 0.9),
    "NaturalExpDecay": lambda: NaturalExpDecay(0.1, 100, 0.1, staircase=True),
    "InverseTimeDecay": lambda: InverseTimeDecay(0.1, 100, 0.5),
    "PolynomialDecay(cycle)": lambda: PolynomialDecay(0.1, 150, 0.001, power=2.0, cycle=True),
    "CosineDecay(+warmup)": lambda: CosineDecay(0.0, TOTAL, warmup_target=0.1, warmup_steps=100),
    "CosineDecayRestarts": lambda: CosineDecayRestarts(0.1, 50, t_mul=2.0, m_mul=0.9),
    "LinearCosineDecay": lambda: LinearCosineDecay(0.1, TOTAL),
    "OneCycle": lambda: OneCycle(0.1, TOTAL, three_phase=True),
    "Cyclic(exp_range)": lambda: Cyclic(0.01, 0.1, 50, mode="exp_range", gamma=0.999),
    "Warmup(Join(...))": lambda: Warmup(
        Join([OneCycle(0.1, 150), CosineDecay(0.01, TOTAL)], boundaries=[150]), warmup_steps=50
    ),
}


def make_fit(learning_rate):
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9),
        loss="mse",
        jit_compile=True,
        # One compiled loop per call: host overhead out, the schedule's in-graph cost in.
        steps_per_execution=STEPS,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 32)).astype("float32")
    y = rng.normal(size=(STEPS * BATCH, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()

    def fit():
        model.fit(data, epochs=1, shuffle=False, verbose=0)

    return fit


EVALS = 5_000  # schedule evaluations per timed call in the isolated loop


def make_eval_loop(learning_rate):
    """A jit-compiled loop evaluating the schedule EVALS times (the constant: a variable read)."""
    if callable(learning_rate):
        schedule = learning_rate
    else:
        rate = tf.Variable(learning_rate)

        def schedule(step):
            return rate + tf.cast(step, tf.float32) * 0.0

    @tf.function(jit_compile=True)
    def loop():
        def body(i, acc):
            return i + 1, acc + tf.cast(schedule(i), tf.float32)

        return tf.while_loop(lambda i, acc: i < EVALS, body, (tf.constant(0, tf.int64), 0.0))[1]

    return lambda: loop().numpy()


def main() -> None:
    repeats = int(os.environ.get("BENCH_REPEATS", "15"))
    cases = {name: make_fit(factory()) for name, factory in CASES.items()}
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print(
        ratio_table(
            medians,
            baseline="constant",
            title=f"Schedules in jit-compiled model.fit ({STEPS} updates per call, "
            f"median of {repeats} interleaved repeats)",
            unit="step time",
        )
    )
    # The same cost isolated: the schedule alone in an XLA loop, less noisy than
    # whole training steps on a shared machine; its extra time per evaluation
    # is then expressed as a fraction of one training step.
    loops = {name: make_eval_loop(factory()) for name, factory in CASES.items()}
    loop_medians = interleaved_medians(loops, repeats=repeats, warmup=1)
    step_time = medians["constant"] / STEPS
    base = loop_medians["constant"]
    print()
    print(f"### Schedule evaluation alone ({EVALS} evaluations in one XLA loop)")
    print()
    print("| case | extra µs per evaluation vs constant | share of one training step |")
    print("|---|---|---|")
    for name, t in loop_medians.items():
        extra = (t - base) / EVALS
        print(f"| {name} | {extra * 1e6:.2f} | {extra / step_time:.2%} |")


if __name__ == "__main__":
    main()
