"""GradientAccumulator: throughput and peak memory, as ratios measured side by side.

Throughput (one process, interleaved medians of ``model.fit`` epochs, same
samples in every case): ``GradientAccumulator(k=4)`` at micro-batch ``b``, in
plain ``fit`` and with ``tfkit.training.install`` (weighted windows), vs plain
``fit`` at batch ``b`` (goal >= 0.97) and vs Keras' built-in
``gradient_accumulation_steps=4`` at ``b`` (goal >= 1.0). A plain-vs-plain
control row shows the noise.

Peak memory (one fresh subprocess per case, ``TF_CPU_ALLOCATOR_USE_BFC=true``,
peak bytes of the TensorFlow CPU allocator during training steps):
accumulation at micro-batch ``b`` vs plain training at batch ``4b`` on an
activation-heavy MLP (goal <= 0.4).

Run: ``python benchmarks/bench_accumulation.py`` (about two minutes).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

K = 4


def _mlp(width, depth, inputs, outputs=10):
    import keras

    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers += [keras.layers.Dense(outputs)]
    return keras.Sequential(layers)


def _optimizer(kind):
    import keras

    from tfkit.optimizers import GradientAccumulator

    if kind == "plain":
        return keras.optimizers.Adam(1e-3)
    if kind in ("tfkit", "tfkit_install"):
        return GradientAccumulator(keras.optimizers.Adam(1e-3), K)
    if kind == "keras":
        return keras.optimizers.Adam(1e-3, gradient_accumulation_steps=K)
    raise ValueError(kind)


# ---------------------------------------------------------------- throughput


def throughput(jit_compile: bool, batch: int = 32, samples: int = 2048, repeats: int = 15) -> str:
    import keras
    import numpy as np
    from harness import Medians, interleaved_medians, ratio_table

    from tfkit.training import install

    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, 128)).astype("float32")
    y = rng.integers(0, 10, size=(samples,))
    cases = {}
    for name, kind in [
        ("plain fit, batch b", "plain"),
        ("plain fit, batch b (control)", "plain"),
        ("GradientAccumulator k=4, batch b", "tfkit"),
        ("GradientAccumulator k=4 + training.install, batch b", "tfkit_install"),
        ("Keras gradient_accumulation_steps=4, batch b", "keras"),
        ("Keras gradient_accumulation_steps=4, batch b (control)", "keras"),
    ]:
        keras.utils.set_random_seed(0)
        model = _mlp(256, 3, 128)
        model.compile(
            optimizer=_optimizer(kind),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        if kind == "tfkit_install":
            install(model)
        cases[name] = lambda m=model: m.fit(
            x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0
        )
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    per_second = Medians({name: [samples / t for t in ts] for name, ts in medians.times.items()})
    title = (
        f"Throughput, samples/s ratio (MLP 128-256x3-10, b={batch}, {samples} samples/epoch, "
        f"jit_compile={jit_compile}, CPU time, median of {repeats})"
    )
    keras_title = title.replace("Throughput, samples/s ratio", "Throughput vs Keras' built-in")
    return (
        ratio_table(per_second, "plain fit, batch b", title, unit="samples/s")
        + "\n\n"
        + ratio_table(
            per_second, "Keras gradient_accumulation_steps=4, batch b", keras_title,
            unit="samples/s",
        )  # fmt: skip
    )


# -------------------------------------------------------------- peak memory

_MEMORY_CHILD = r"""
import json, os, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
import numpy as np, keras, tensorflow as tf
from bench_accumulation import _mlp, _optimizer
kind, batch = {kind!r}, {batch}
rng = np.random.default_rng(0)
x = rng.normal(size=(2 * {big}, 32)).astype("float32")
y = rng.integers(0, 10, size=(2 * {big},))
model = _mlp(128, 32, 32)
model.compile(optimizer=_optimizer(kind), jit_compile=False,
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
if kind == "tfkit_install":
    from tfkit.training import install
    install(model)
model.fit(x[:batch * 4], y[:batch * 4], batch_size=batch, epochs=1, verbose=0)  # build + trace
tf.config.experimental.reset_memory_stats("CPU:0")
model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
print(json.dumps({{"peak": tf.config.experimental.get_memory_info("CPU:0")["peak"]}}))
"""


def _peak_bytes(kind: str, batch: int, big: int) -> int:
    code = _MEMORY_CHILD.format(
        root=str(ROOT), bench=str(ROOT / "benchmarks"), kind=kind, batch=batch, big=big
    )
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def peak_memory(micro: int = 2048) -> str:
    big = K * micro
    rows = {
        f"plain fit, batch 4b = {big}": _peak_bytes("plain", big, big),
        f"GradientAccumulator k=4, batch b = {micro}": _peak_bytes("tfkit", micro, big),
        f"GradientAccumulator k=4 + training.install, batch b = {micro}": _peak_bytes(
            "tfkit_install", micro, big
        ),
        f"Keras gradient_accumulation_steps=4, batch b = {micro}": _peak_bytes("keras", micro, big),
        f"plain fit, batch b = {micro} (floor: no accumulator)": _peak_bytes("plain", micro, big),
    }
    base = next(iter(rows))
    lines = [
        f"### Peak memory (MLP 32-128x32-10, relu; fresh process per case, BFC allocator; "
        f"same effective batch {big})",
        "",
        f"| case | peak MiB | ratio vs `{base}` |",
        "|---|---|---|",
    ]
    for name, value in rows.items():
        lines.append(f"| {name} | {value / 2**20:.1f} | {value / rows[base]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    print(throughput(jit_compile=False), flush=True)
    print(flush=True)
    print(throughput(jit_compile=True), flush=True)
    print(flush=True)
    print(peak_memory(), flush=True)


if __name__ == "__main__":
    main()
