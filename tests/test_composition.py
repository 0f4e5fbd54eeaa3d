"""The composition matrix: every tfkit piece with every other, in fit and in a custom loop.

Axes: schedule {constant, OneCycle with momentum cycling, Warmup+CosineDecayRestarts}
x accumulation {1, 4} x precision {float32, mixed_float16, mixed_bfloat16}
x recompute {off, on} x loop {model.fit, custom TrainStep loop} x jit_compile {False, True}
= 144 cells.

Every cell must train (loss falls, weights finite) without retracing after the
first epoch. Cells that must agree numerically do, in float32:
recompute on == off, fit == custom loop, accumulation 4x4 == one batch of 16,
jit == no jit.

CI runs a slice: a pairwise covering set of the six axes (every pair of values
of every two axes appears in some cell) plus the float32 cells the agreement
checks need. ``make test-full`` (TFKIT_FULL=1) runs all 144 cells.
"""

from __future__ import annotations

import functools
import itertools
import os

import keras
import numpy as np
import pytest

import tfkit

SCHEDULES = ("constant", "onecycle", "warmup_restarts")
ACCUMULATION = (1, 4)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
RECOMPUTE = (False, True)
LOOPS = ("fit", "custom")
JIT = (False, True)
AXES = (SCHEDULES, ACCUMULATION, PRECISIONS, RECOMPUTE, LOOPS, JIT)

EFFECTIVE_BATCH, N, EPOCHS = 16, 64, 3
UPDATES = EPOCHS * N // EFFECTIVE_BATCH  # 12 real updates in every cell


def _pairwise(axes) -> list[tuple]:
    """A small deterministic covering set: every value pair of every two axes appears."""
    uncovered = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(len(axes)), 2)
        for a in axes[i]
        for b in axes[j]
    }
    pairs = list(itertools.combinations(range(len(axes)), 2))
    cells: list[tuple] = []
    candidates = list(itertools.product(*axes))
    while uncovered:
        best = max(candidates, key=lambda c, u=uncovered: sum((i, c[i], j, c[j]) in u for i, j in pairs))
        cells.append(best)
        uncovered -= {(i, best[i], j, best[j]) for i, j in pairs}
    return cells


# Float32 cells the agreement checks compare, each against BASE with one axis flipped.
BASE = ("onecycle", 4, "float32", True, "fit", True)
AGREEMENT = {
    "recompute": 3,
    "loop": 4,
    "accumulation": 1,
    "jit_compile": 5,
}


def _flip(cell, axis):
    values = AXES[axis]
    other = [v for v in values if v != cell[axis]][0]
    return cell[:axis] + (other,) + cell[axis + 1 :]


FULL = os.environ.get("TFKIT_FULL") == "1"
SLICE = sorted(
    set(_pairwise(AXES)) | {BASE} | {_flip(BASE, a) for a in AGREEMENT.values()},
    key=str,
)
CELLS = list(itertools.product(*AXES)) if FULL else SLICE


def _cell_id(cell) -> str:
    s, k, p, r, loop, jit = cell
    return f"{s}-k{k}-{p}-{'remat' if r else 'plain'}-{loop}-{'xla' if jit else 'graph'}"


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 8)).astype("float32")
    w = rng.normal(size=(8, 3))
    y = np.argmax(x @ w + 0.3 * rng.normal(size=(N, 3)), axis=1).astype("int32")
    return x, y


def _schedule(name):
    if name == "constant":
        return 0.05, None
    if name == "onecycle":
        one = tfkit.schedules.OneCycle(0.1, total_steps=UPDATES)
        return one, one.momentum_schedule
    return (
        tfkit.schedules.Warmup(tfkit.schedules.CosineDecayRestarts(0.1, 4), warmup_steps=2),
        None,
    )


def _model(recompute: bool) -> keras.Model:
    keras.utils.set_random_seed(3)
    block = keras.Sequential([keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(16)])
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="tanh")(inputs)
    h = tfkit.Recompute(block)(x) if recompute else block(x)
    x = keras.layers.Add()([x, h])
    outputs = keras.layers.Dense(3, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _count_traces(model, counter):
    original = model.train_step

    def train_step(data):
        counter.append(1)  # Python side effect: runs once per trace
        return original(data)

    model.train_step = train_step


@functools.cache
def run_cell(cell) -> dict:
    schedule_name, k, precision, recompute, loop, jit = cell
    x, y = _data()
    micro = EFFECTIVE_BATCH // k
    with tfkit.precision.set_policy(precision):
        lr, momentum = _schedule(schedule_name)
        optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(lr, momentum=0.9), k)
        if precision == "mixed_float16":
            optimizer = tfkit.LossScaleOptimizer(optimizer)
        model = _model(recompute)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer, loss, jit_compile=jit)
        callbacks = [tfkit.callbacks.HyperparameterLogger()]
        if momentum is not None:
            callbacks.insert(0, tfkit.callbacks.MomentumScheduler(momentum))
        traces: list[int] = []
        epoch_losses: list[float] = []
        if loop == "fit":
            _count_traces(model, traces)
            first_epoch_traces = []

            class _Record(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    epoch_losses.append(logs["loss"])
                    if epoch == 0:
                        first_epoch_traces.append(len(traces))

            model.fit(
                x, y, batch_size=micro, epochs=EPOCHS, shuffle=False, verbose=0,
                callbacks=[*callbacks, _Record()],
            )
            retraced = len(traces) - first_epoch_traces[0]
        else:
            step = tfkit.TrainStep(model, loss, jit_compile=jit)
            cb = keras.callbacks.CallbackList(callbacks, model=model)
            cb.on_train_begin()
            for epoch in range(EPOCHS):
                cb.on_epoch_begin(epoch)
                losses = []
                for b, i in enumerate(range(0, N, micro)):
                    cb.on_train_batch_begin(b)
                    logs = {"loss": float(step(x[i : i + micro], y[i : i + micro])["loss"])}
                    losses.append(logs["loss"])
                    cb.on_train_batch_end(b, logs)
                epoch_logs = {"loss": float(np.mean(losses))}
                cb.on_epoch_end(epoch, epoch_logs)
                epoch_losses.append(epoch_logs["loss"])
                if epoch == 0:
                    first = step.trace_count
            cb.on_train_end()
            retraced = step.trace_count - first
        inner = tfkit.optimizers.innermost(model.optimizer)
        return {
            "weights": [np.asarray(w, dtype="float64") for w in model.get_weights()],
            "epoch_losses": epoch_losses,
            "retraced": retraced,
            "updates": int(inner.iterations),
        }


@pytest.mark.parametrize("cell", CELLS, ids=_cell_id)
def test_cell_trains_without_retracing(cell):
    out = run_cell(cell)
    assert out["updates"] == UPDATES
    assert all(np.all(np.isfinite(w)) for w in out["weights"])
    assert out["epoch_losses"][-1] < out["epoch_losses"][0], out["epoch_losses"]
    assert out["retraced"] == 0


@pytest.mark.parametrize("axis_name", sorted(AGREEMENT))
def test_float32_cells_agree(axis_name):
    """Flipping recompute / loop / accumulation / jit changes nothing but rounding."""
    a = run_cell(BASE)
    b = run_cell(_flip(BASE, AGREEMENT[axis_name]))
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        np.testing.assert_allclose(wb, wa, rtol=2e-5, atol=2e-6)


def test_slice_covers_every_pair():
    cells = set(SLICE)
    for i, j in itertools.combinations(range(len(AXES)), 2):
        for a in AXES[i]:
            for b in AXES[j]:
                assert any(c[i] == a and c[j] == b for c in cells), (i, a, j, b)
    assert len(SLICE) < 25  # keep CI's slice small
