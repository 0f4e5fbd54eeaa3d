"""Recompute Pareto table: peak memory vs step time of every way to recompute one model.

One fresh process with ``TF_CPU_ALLOCATOR_USE_BFC=true`` (tfkit.memory); the
model is a residual MLP of 8 blocks ``Dense(512, relu) -> Dense(128)`` + skip,
batch 512, built once per case with the same seed. Cases:

* ``none`` / ``none (control)``: no recomputation (noise floor);
* ``Recompute`` (full) and ``Recompute(save=["Dense"])`` (selective) per block;
* ``tf.recompute_grad`` per block;
* ``keras.RematScope`` modes (``full``, ``activations``, ``larger_than``,
  ``list_of_layers``) around the block construction;
* ``tfkit.recompute.plan`` at budgets 0.8, 0.6 and 0.4 of the ``none`` peak.

Memory: the transient peak of one gradient step (step_peak). Time: CPU time,
paired interleaved medians (benchmarks/harness.py), as a ratio to ``none``.

Run: ``python benchmarks/bench_recompute_pareto.py`` (a few minutes).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
BATCH, WIDTH, HIDDEN, BLOCKS = 512, 128, 512, 8


def _child(repeats: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(HERE))
    from harness import interleaved_medians

    import tfkit
    from tfkit.memory import peak_memory
    from tfkit.recompute import Recompute

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, WIDTH)).astype("float32"))
    y = tf.constant(rng.normal(size=(BATCH, 10)).astype("float32"))

    def block(i):
        return keras.Sequential(
            [keras.layers.Dense(HIDDEN, name=f"up{i}"), keras.layers.ReLU(),
             keras.layers.Dense(WIDTH, name=f"down{i}")], name=f"block{i}",
        )  # fmt: skip

    def build(wrap=lambda b: b, scope=None):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((WIDTH,))
        h = inputs
        for i in range(BLOCKS):
            if scope is not None:
                with keras.RematScope(**scope):
                    b = block(i)
            else:
                b = block(i)
            h = keras.layers.Add()([h, wrap(b)(h)])
        return keras.Model(inputs, keras.layers.Dense(10)(h))

    def step_of(model):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
            return tape.gradient(loss, model.trainable_variables)

        return step

    class RecomputeGrad(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner
            self.fn = tf.recompute_grad(lambda t: inner(t))

        def call(self, t):
            return self.fn(t)

    models = {
        "none": build(),
        "none (control)": build(),
        "Recompute (full)": build(Recompute),
        'Recompute(save=["Dense"])': build(lambda b: Recompute(b, save=["Dense"])),
        "tf.recompute_grad": build(RecomputeGrad),
    }
    failures = {}
    if hasattr(keras, "RematScope"):
        for mode, extra in (
            ("full", {}), ("activations", {}), ("larger_than", {"output_size_threshold": 1024}),
            ("list_of_layers", {"layer_names": [f"up{i}" for i in range(BLOCKS)]}),
        ):  # fmt: skip
            name = f"keras.RematScope({mode})"
            try:
                model = build(scope={"mode": mode, **extra})
                step_of(model)()
                models[name] = model
            except Exception as error:  # noqa: BLE001 -- the table reports the failure
                failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    base = models["none"]
    for budget in (0.8, 0.6, 0.4):
        try:
            p = tfkit.recompute.plan(base, (x, y), budget)
            models[f"plan({budget})"] = p.apply()
        except ValueError as error:
            failures[f"plan({budget})"] = str(error)[:120]
    steps = {name: step_of(m) for name, m in models.items()}
    memory = {name: peak_memory(s, warmup=2).step_peak for name, s in steps.items()}
    cpu = interleaved_medians(steps, repeats=repeats, warmup=1, clock=time.process_time)
    return {"memory": memory, "cpu": cpu.times, "failures": failures}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        print("RESULT " + json.dumps(_child(int(argv[1]))), flush=True)
        return 0
    repeats = 5 if "--quick" in argv else 11
    env = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_CPU_ALLOCATOR_USE_BFC="true",
        PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(repeats)], env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        print(out.stderr[-3000:], file=sys.stderr)
        return 1
    result = json.loads(lines[0][len("RESULT ") :])
    import statistics

    base_mem = result["memory"]["none"]
    base_t = result["cpu"]["none"]
    print(
        f"### Recompute Pareto (residual MLP {BLOCKS} x [Dense({HIDDEN}, relu), Dense({WIDTH})] "
        f"+ skip, batch {BATCH}; BFC step peak; CPU time, median of {repeats} paired ratios)\n"
    )
    print("| case | step peak MiB | peak ratio | step time ratio (p25–p75) |")
    print("|---|---|---|---|")
    for name, peak in result["memory"].items():
        ratios = sorted(t / b for t, b in zip(result["cpu"][name], base_t, strict=True))
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [1] * 3
        print(
            f"| {name} | {peak / 2**20:.1f} | {peak / base_mem:.3f} | "
            f"{q[1]:.3f} ({q[0]:.3f}–{q[2]:.3f}) |"
        )
    for name, why in result["failures"].items():
        print(f"| {name} | fails | — | {why} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
