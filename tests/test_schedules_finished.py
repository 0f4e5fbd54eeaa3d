"""A finished schedule: a one-line warning when training starts past its end, and the doctor check."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import tfkit
from tfkit.schedules import (
    Constant,
    CosineDecay,
    Cyclic,
    ExponentialDecay,
    Join,
    MultiStepDecay,
    OneCycle,
    PiecewiseConstantDecay,
    PolynomialDecay,
    Product,
    ScaledSchedule,
    Warmup,
    WarmupStableDecay,
    get_scheduler,
)
from tfkit.schedules.finished import schedule_end

X, Y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")


@pytest.mark.parametrize(
    "schedule,end",
    [
        (get_scheduler("linear", 0.1, 10, 100), 100),
        (get_scheduler("cosine", 0.1, 0, 50), 50),
        (get_scheduler("constant", 0.1), 0),
        (PolynomialDecay(0.1, 30), 30),
        (PolynomialDecay(0.1, 30, cycle=True), None),
        (CosineDecay(0.0, 25, warmup_target=0.1, warmup_steps=8), 33),
        (OneCycle(0.1, 40), 39),
        (WarmupStableDecay(0.1, 5, 10, 15), 30),
        (PiecewiseConstantDecay([5, 12], [0.1, 0.05, 0.01]), 13),
        (MultiStepDecay(0.1, [20, 0, 7]), 20),
        (Join([Constant(0.1), PolynomialDecay(0.1, 10)], [5]), 15),
        (Product([PolynomialDecay(0.1, 10), MultiStepDecay(1.0, [30])]), 30),
        (ScaledSchedule(PolynomialDecay(0.1, 10), 0.5), 10),
        (Warmup(ExponentialDecay(0.1, 10, 0.5), 5), None),
        (Cyclic(0.0, 0.1, 4), None),
        (keras.optimizers.schedules.CosineDecay(0.1, 20, warmup_target=0.2, warmup_steps=5), 25),
        (keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), None),
    ],
)
def test_schedule_end(schedule, end):
    assert schedule_end(schedule) == end
    if end:  # the value no longer changes from `end` on
        values = [float(schedule(end + d)) for d in (0, 1, 7, 1000)]
        assert values == [values[0]] * 4


def _tfkit_warnings(record):
    return [str(w.message) for w in record if str(w.message).startswith("tfkit: the learning")]


def _model(schedule, optimizer=None):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer or keras.optimizers.SGD(schedule), "mse")
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
def test_one_line_warning_after_a_reload_past_the_end(tmp_path, jit_compile):
    model = _model(get_scheduler("linear", 0.1, 2, 6))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(X, Y, batch_size=2, epochs=2, verbose=0)  # reaches the end mid-fit: no word
    assert _tfkit_warnings(record) == []
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    reloaded.compile(reloaded.optimizer, "mse", jit_compile=jit_compile)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reloaded.fit(X, Y, batch_size=2, epochs=2, verbose=0)
    (message,) = _tfkit_warnings(record)  # once, one line
    assert "\n" not in message and "ended at update 6" in message and "update 8" in message
    assert "final rate 0" in message


def test_warning_through_gradient_accumulator():
    optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(PolynomialDecay(0.1, 2)), 2)
    model = _model(None, optimizer)
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # 4 micro-batches: 2 real updates
    model.compile(optimizer, "mse")  # a new trace, e.g. after compile
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(X, Y, batch_size=2, epochs=1, verbose=0)
    assert len(_tfkit_warnings(record)) == 1


def test_doctor_flags_a_finished_schedule():
    model = _model(get_scheduler("linear", 0.1, 0, 3))
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # 4 updates > 3
    report = tfkit.doctor.examine(model, (X, Y), checks=["schedule_end"])
    (finding,) = report.by_check("schedule_end")
    assert finding.severity == "warning" and finding.data == {"end": 3, "step": 4}
    fresh = _model(get_scheduler("linear", 0.1, 0, 300))
    report = tfkit.doctor.examine(fresh, (X, Y), checks=["schedule_end"])
    assert report.by_check("schedule_end")[0].severity == "info"


def test_doctor_sees_through_the_control_plane():
    # A tfkit callback puts the rate behind ControlledLearningRate; the check still finds the schedule.
    model = _model(get_scheduler("linear", 0.1, 0, 3))
    cb = tfkit.callbacks.ReduceLROnPlateau(monitor="loss", patience=5)
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0, callbacks=[cb])  # 4 updates > 3
    report = tfkit.doctor.examine(model, (X, Y), checks=["schedule_end"])
    (finding,) = report.by_check("schedule_end")
    assert finding.severity == "warning" and finding.data == {"end": 3, "step": 4}
