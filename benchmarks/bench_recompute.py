"""Recomputation: peak memory and step time of a 16-block residual MLP.

Each configuration (jit_compile off/on) runs in a fresh process started with
``TF_CPU_ALLOCATOR_USE_BFC=true`` (see tfkit.memory). In that process:

* memory: the transient peak of one training step (``peak - in use before``,
  i.e. activations, gradients, temporaries) per case, reset between cases;
* time: interleaved medians of the same steps (benchmarks/harness.py).

Cases, all training the same weights on the same batch:

* ``none`` / ``none (control)``: no recomputation, twice (noise floor);
* ``tf.recompute_grad``: TensorFlow's wrapper around each block;
* ``tfkit Recompute``: ``Recompute`` around each block;
* ``recompute_sequential sqrt(n)``: ``recompute_sequential(blocks)`` (4 segments
  of 4 blocks, the last not recomputed);
* ``recompute_sequential n``: one segment per block (the last not recomputed);
* ablations (without XLA) that locate tf.recompute_grad's overhead and the
  reason for tfkit's backward gate (docs/recompute.md): ``tfkit + IdentityN
  barrier`` (tfkit's gradient function plus the IdentityN that
  tf.recompute_grad's nested ``custom_gradient`` puts on all its gradients),
  ``tfkit, no gate`` and ``tfkit, gate 1`` (``GATE_DEPTH`` 0 and 1; default 2).

Time is reported twice: wall time (harness.interleaved_medians) and process CPU
time (same interleaving), because on a shared machine wall time is dominated by
the other processes' load.

Usage: ``python benchmarks/bench_recompute.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
BATCH, WIDTH, HIDDEN, BLOCKS = 512, 128, 512, 16


def _child(jit: bool, repeats: int) -> dict:
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(HERE))
    from harness import interleaved_medians

    from tfkit.memory import peak_memory
    from tfkit.recompute import Recompute, recompute_sequential
    from tfkit.recompute import _core as _recompute_core

    class ResidualBlock(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.norm = keras.layers.LayerNormalization()
            self.up = keras.layers.Dense(HIDDEN, activation="relu")
            self.down = keras.layers.Dense(WIDTH)

        def call(self, x):
            return x + self.down(self.up(self.norm(x)))

    keras.utils.set_random_seed(0)
    blocks = [ResidualBlock() for _ in range(BLOCKS)]
    head = keras.layers.Dense(10)
    x = tf.random.stateless_normal([BATCH, WIDTH], seed=[0, 1])
    y = tf.random.stateless_uniform([BATCH], seed=[0, 2], maxval=10, dtype=tf.int32)
    h = x
    for b in blocks:
        h = b(h)
    head(h)
    variables = [v for b in blocks for v in b.trainable_variables] + head.trainable_variables
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make_step(forward):
        opt = keras.optimizers.SGD(1e-3)
        opt.build(variables)

        @tf.function(jit_compile=jit)
        def step():
            with tf.GradientTape() as tape:
                loss = loss_fn(y, head(forward(x)))
            grads = tape.gradient(loss, variables)
            opt.apply(grads, variables)
            return loss

        return step

    def chain(fns):
        def forward(h):
            for f in fns:
                h = f(h)
            return h

        return forward

    seq_sqrt = recompute_sequential(blocks)
    seq_all = recompute_sequential(blocks, segments=BLOCKS)
    cases = {
        "none": make_step(chain(blocks)),
        "none (control)": make_step(chain(blocks)),
        "tf.recompute_grad": make_step(chain([tf.recompute_grad(b) for b in blocks])),
        "tfkit Recompute": make_step(chain([Recompute(b) for b in blocks])),
        "recompute_sequential sqrt(n)": make_step(seq_sqrt),
        "recompute_sequential n": make_step(seq_all),
    }
    if not jit:  # XLA ignores control dependencies: the ablations only matter without it
        cases["ablation: tfkit + IdentityN barrier"] = make_step(
            chain([_with_identity_n_barrier(b, _recompute_core) for b in blocks])
        )
        for depth, label in ((0, "ablation: tfkit, no gate"), (1, "ablation: tfkit, gate 1")):
            # The gate depth is read when the gradient is traced: trace now.
            _recompute_core.GATE_DEPTH = depth
            cases[label] = make_step(chain([Recompute(b) for b in blocks]))
            cases[label]()
        _recompute_core.GATE_DEPTH = 2
    memory = {}
    for name, step in cases.items():
        memory[name] = peak_memory(step, warmup=2).to_dict()
    wall = interleaved_medians(cases, repeats=repeats, warmup=1)
    # CPU time of all threads: the work the step does, whatever else the machine runs.
    cpu = interleaved_medians(cases, repeats=repeats, warmup=0, clock=time.process_time)
    return {"memory": memory, "wall": wall, "cpu": cpu}


def _with_identity_n_barrier(block, core):
    """Call ``block`` with tfkit's recomputation whose gradients pass one IdentityN.

    tf.recompute_grad computes its gradients inside a second, nested
    ``tf.custom_gradient`` (for forward-mode autodiff). In graph mode every
    custom_gradient returns its outputs through one ``IdentityN`` op, which
    emits nothing until *all* its inputs exist: the gradient for the block's
    input cannot flow on to the previous block before the weight gradients of
    this block are finished. This ablation adds exactly that op.
    """
    import tensorflow as tf

    real = core.tf.custom_gradient

    def with_barrier(f):
        def g(*values):
            out, grad_fn = f(*values)

            def barrier_grad(*dys, variables=None):
                gi, gv = grad_fn(*dys, variables=variables)
                flat = tf.identity_n(list(gi) + list(gv) + list(dys))
                return flat[: len(gi)], flat[len(gi) : len(gi) + len(gv)]

            return out, barrier_grad

        return real(g)

    def call(x):
        core._custom_gradient = with_barrier
        try:
            return core.recompute_call(block, (x,), {}, owner="ablation")
        finally:
            core._custom_gradient = real

    return call


def _table(title: str, values: dict[str, float], base: str, fmt: str = "{:.3f}") -> str:
    lines = [f"### {title}", "", f"| case | ratio vs `{base}` |", "|---|---|"]
    for name, value in values.items():
        lines.append(f"| {name} | {fmt.format(value / values[base])} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        result = _child(jit=argv[1] == "1", repeats=int(argv[2]))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    repeats = 5 if "--quick" in argv else 11
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_CPU_ALLOCATOR_USE_BFC="true",
        PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    )
    print(
        f"Residual MLP: {BLOCKS} blocks of LayerNorm -> Dense({HIDDEN}, relu) -> "
        f"Dense({WIDTH}) + skip, batch {BATCH}, SGD; one training step per call.\n"
    )
    for jit in (False, True):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(int(jit)), str(repeats)],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(lines[0][len("RESULT ") :])
        step_peak = {k: v["step_peak"] for k, v in result["memory"].items()}
        total_peak = {k: v["peak"] for k, v in result["memory"].items()}
        print(
            _table(
                f"Step peak memory (activations + temporaries), jit_compile={jit}",
                step_peak,
                "none",
            )
        )
        print(
            f"\n`none`: {step_peak['none'] / 2**20:.1f} MiB step peak, "
            f"{total_peak['none'] / 2**20:.1f} MiB total peak\n"
        )
        print(_table(f"Total peak memory (with weights), jit_compile={jit}", total_peak, "none"))
        print()
        for kind in ("wall", "cpu"):
            title = f"Step {kind} time (median of {repeats}), jit_compile={jit}"
            print(_table(title, result[kind], "none"))
            print()
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
