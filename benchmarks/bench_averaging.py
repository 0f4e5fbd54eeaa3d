"""Cost of WeightAveraging and SpikeGuard in a jit-compiled model.fit: step-time and memory.

Goals: fit with ``WeightAveraging("ema")`` vs no callback <= 1.03; fit with
``SpikeGuard("skip")`` (through ``tfkit.training.install``) vs the same
installed step without a guard <= 1.03 (and vs plain fit, for the record);
memory: the averages add one float32 copy of the float weights and no more.
A second no-callback row is the noise control. Each case has its own compiled
model (traced in the warm-up); one-epoch fits are timed round-robin
(CPU time, paired medians, see harness.py).

Memory is measured twice: by counting the bytes of the variables the
callback creates (deterministic), and with ``tfkit.memory`` in a fresh
process with the BFC allocator (bytes in use after a fit with the callback
minus without it).

Run: PYTHONPATH=. python benchmarks/bench_averaging.py [--quick]
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

from tfkit.callbacks import SpikeGuard, WeightAveraging  # noqa: E402
from tfkit.memory import measure_in_subprocess  # noqa: E402
from tfkit.training import install  # noqa: E402

QUICK = "--quick" in sys.argv
N, D, WIDTH, BATCH = (1024, 64, 128, 32) if QUICK else (4096, 64, 256, 32)


def _model(width=WIDTH):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((D,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(1),
    ])  # fmt: skip
    model.compile(keras.optimizers.Adam(1e-3), "mse", jit_compile=True)
    return model


def _data(n=N):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, D)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def _case(make_callbacks, installed=False):
    model = _model()
    x, y = _data()
    callbacks = make_callbacks()
    guard = next((c for c in callbacks if isinstance(c, SpikeGuard)), None)
    averaging = next((c for c in callbacks if isinstance(c, WeightAveraging)), None)
    if installed:
        install(model, spike_guard=guard, weight_averaging=averaging)

    def run():
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)

    return run


def _float_weight_bytes(model) -> int:
    return sum(
        int(np.prod(v.shape)) * 4 for v in model.weights if keras.backend.is_float_dtype(v.dtype)
    )


def variable_bytes() -> dict:
    """Bytes of the variables each callback keeps, against the model's float32 weights."""
    out = {}
    for name, callback in (("ema", WeightAveraging("ema")), ("swa", WeightAveraging("swa"))):
        model = _model()
        x, y = _data(64)
        model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[callback])
        tracked = sum(int(np.prod(v.shape)) * v.dtype.size for v in callback.state.variables)
        out[name] = tracked / _float_weight_bytes(model)
    guard = SpikeGuard("skip")
    model = install(_model(), spike_guard=guard)
    x, y = _data(64)
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[guard])
    out["spike_skip"] = sum(
        int(np.prod(v.shape)) * v.dtype.size for v in guard.state.variables
    ) / _float_weight_bytes(model)
    return out


def resident_bytes(width: int) -> dict:
    """In a BFC process: bytes in use after a plain fit, then after fits with WeightAveraging."""

    def in_use():
        return int(tf.config.experimental.get_memory_info("CPU:0")["current"])

    model = _model(width)
    x, y = _data(256)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    plain = in_use()
    ema = WeightAveraging("ema", final_weights="current")
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[ema])
    once = in_use()
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[ema])
    weights = _float_weight_bytes(model)
    return {"plain": plain, "ema": once, "ema_again": in_use(), "weights": weights}


def main() -> None:
    repeats = 5 if QUICK else 11
    cases = {
        "no callback": _case(lambda: []),
        "no callback (control)": _case(lambda: []),
        'WeightAveraging("ema")': _case(lambda: [WeightAveraging("ema", final_weights="current")]),
        'WeightAveraging("swa")': _case(lambda: [WeightAveraging("swa", final_weights="current")]),
        "install, no callback": _case(lambda: [], installed=True),
        'install + WeightAveraging("ema")': _case(
            lambda: [WeightAveraging("ema", final_weights="current")], installed=True
        ),
        'install + SpikeGuard("skip")': _case(lambda: [SpikeGuard("skip")], installed=True),
        'install + SpikeGuard("skip", gradient_norm=True)': _case(
            lambda: [SpikeGuard("skip", gradient_norm=True)], installed=True
        ),
    }
    medians = interleaved_medians(cases, repeats=repeats, warmup=1)
    print(ratio_table(medians, "no callback",
                      f"fit step time, jit_compile=True, MLP {D}-{WIDTH}-{WIDTH}-1, batch {BATCH}, "
                      f"{N // BATCH} steps per timed fit"))  # fmt: skip
    print()
    installed = type(medians)({k: medians.times[k] for k in medians if k.startswith("install")})
    print(ratio_table(installed, "install, no callback", "vs the same installed step"))
    print()
    fractions = variable_bytes()
    print("### memory: callback variables / float32 weight bytes")
    print()
    print("| callback | bytes ratio |")
    print("|---|---|")
    for name, value in fractions.items():
        print(f"| {name} | {value:.4f} |")
    print()
    width = 256 if QUICK else 1024
    r = measure_in_subprocess(os.path.abspath(__file__) + ":resident_bytes", {"width": width})
    extra = [(r[k] - r["plain"]) / r["weights"] for k in ("ema", "ema_again")]
    print(f"BFC allocator, one process, MLP width {width} ({r['weights'] / 2**20:.1f} MiB of "
          f"float32 weights): bytes in use after a fit with WeightAveraging('ema') minus after a "
          f"plain fit = {extra[0]:.3f} x the weights; after a second fit {extra[1]:.3f} x "
          "(allocator rounding included)")  # fmt: skip


if __name__ == "__main__":
    main()
