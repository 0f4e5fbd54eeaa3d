"""Every public constructor either refuses an argument clearly or builds something finite.

Property (hypothesis, over every class in the public ``__all__`` lists, so
classes added later are fuzzed without editing this file): a constructor called
with arguments drawn from a mix of sane and hostile values (NaN, inf, huge
integers such as ``10**400`` and ``2**70``, negative numbers, NumPy scalars,
truthy strings, ``None``) either

* raises ``ValueError`` or ``TypeError`` whose message names one of its
  arguments, or
* returns an object whose outputs are finite: a schedule's values over steps
  from 0 to 2**40 (finite and >= 0), an optimizer's variables after a few
  updates, a layer's output, a training step's loss.

Result records (dataclasses such as ``LRFinderResult``) are not constructors
users call, and are skipped. Argument strategies are picked by parameter name
(a small table) or else by the default value's type.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import FULL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfkit
from tfkit import _validation

PACKAGES = (
    "tfkit",
    "tfkit.callbacks",
    "tfkit.schedules",
    "tfkit.optimizers",
    "tfkit.precision",
    "tfkit.recompute",
    "tfkit.tuning",
    "tfkit.training",
)


def _public_classes() -> list[type]:
    found = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and not dataclasses.is_dataclass(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return [found[k] for k in sorted(found)]


CLASSES = _public_classes()

# ---------------------------------------------------------------- strategies

HUGE = st.sampled_from([2**31, 2**63, 2**70, 10**400, -(2**70), -(10**400)])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e39, 1e-39, 1e-45])
HOSTILE = st.one_of(
    HUGE,
    NON_FINITE,
    st.sampled_from(["no", "", "1", None, True, False, [], (1,), object()]),
    st.integers(-10, -1),
)


def _numpy(value_strategy, dtypes):
    return st.tuples(value_strategy, st.sampled_from(dtypes)).map(
        lambda p: np.dtype(p[1]).type(p[0])
    )


SANE_FLOAT = st.one_of(
    st.floats(0.0, 2.0), st.floats(1e-6, 1e4), st.sampled_from([0.0, 0.5, 1.0, 1e-3])
)
SANE_INT = st.one_of(st.integers(0, 50), st.integers(0, 10**6))


def _number(default):
    """Sane values of the default's kind (Python or NumPy) most of the time, else hostile."""
    if isinstance(default, bool):
        sane = st.booleans() | st.sampled_from([np.True_, np.False_])
    elif isinstance(default, int):
        sane = SANE_INT | _numpy(st.integers(0, 1000), ["int32", "int64"])
    else:
        sane = SANE_FLOAT | _numpy(st.floats(0.0, 2.0, width=32), ["float32", "float64"])
    return st.one_of(sane, sane, sane, HOSTILE, st.floats(allow_nan=True, allow_infinity=True))


def _schedule():
    return st.sampled_from(
        [
            tfkit.schedules.CosineDecay(0.1, 100),
            tfkit.schedules.ExponentialDecay(0.1, 10, 0.5),
            keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9),
        ]
    )


def _optimizer():
    return st.sampled_from(["sgd", "adam", "adamw"]).map(
        lambda n: {
            "sgd": keras.optimizers.SGD(0.1, momentum=0.9),
            "adam": keras.optimizers.Adam(1e-2),
            "adamw": keras.optimizers.AdamW(1e-2),
        }[n]
    )


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    return model


# By parameter name; each mixes valid objects with hostile values.
TABLE = {
    "inner_optimizer": lambda: _optimizer() | HOSTILE,
    "optimizer": lambda: _optimizer() | HOSTILE,
    "schedule": lambda: _schedule() | SANE_FLOAT | HOSTILE,
    "schedules": lambda: st.lists(_schedule(), min_size=1, max_size=3) | HOSTILE,
    "layer": lambda: st.builds(lambda: keras.layers.Dense(3)) | HOSTILE,
    "model": lambda: st.builds(_model) | HOSTILE,
    "loss": lambda: st.sampled_from(["mse", "mae"]) | HOSTILE,
    # Constructors do not touch the disk: a path that need not exist.
    "backup_dir": lambda: st.just(os.path.join(tempfile.gettempdir(), "tfkit-unused")) | HOSTILE,
    "callbacks": lambda: st.just(()) | HOSTILE,
    "diagnosis_data": lambda: st.just(None) | HOSTILE,
    "strategy": lambda: st.just(None) | st.just(tf.distribute.get_strategy()) | HOSTILE,
    "boundaries": lambda: st.lists(SANE_INT, max_size=4).map(sorted) | HOSTILE,
    "milestones": lambda: st.lists(SANE_INT, max_size=4).map(sorted) | HOSTILE,
    "values": lambda: st.lists(SANE_FLOAT, min_size=1, max_size=5) | HOSTILE,
    "dtype": lambda: st.sampled_from([None, "float32", "float64", "int32", "half"]),
    "name": lambda: st.sampled_from([None, "x", 3]),
    "nominal": lambda: _number(0.9),
    "chain_attributes": lambda: st.just(("loss_scale",)) | HOSTILE,
}


def _strategy(parameter: inspect.Parameter):
    if parameter.name in TABLE:
        return TABLE[parameter.name]()
    default = parameter.default
    if isinstance(default, str):
        return st.sampled_from([default, default, "bogus", ""]) | HOSTILE
    if isinstance(default, bool | int | float) and not isinstance(default, type(None)):
        return _number(default)
    # A required number or an optional one defaulting to None.
    none = st.just(None) if default is None else st.nothing()
    return none | _number(1.0) | _number(10)


# ------------------------------------------------------------------- outputs

STEPS = tf.constant([0, 1, 7, 100, 10**4, 10**6, 2**31 - 1, 2**40], tf.int64)


def _check_outputs(obj) -> None:
    if isinstance(obj, keras.optimizers.schedules.LearningRateSchedule):
        values = np.asarray(obj(STEPS))
        assert np.all(np.isfinite(values)) and np.all(values >= 0), values
    elif isinstance(obj, keras.optimizers.Optimizer):
        variable = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"))
        for _ in range(3):
            obj.apply([tf.constant([0.3, -1.0, 2.0])], [variable])
        for v in [variable, *obj.variables]:
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(v))), v.path
    elif isinstance(obj, keras.layers.Layer):
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(obj(np.ones((2, 4), "float32")))))
    elif isinstance(obj, tfkit.TrainStep):
        loss = obj(np.ones((4, 4), "float32"), np.zeros((4, 2), "float32"))
        assert np.isfinite(float(loss))


def _names_an_argument(message: str, names) -> bool:
    return any(f"`{n}" in message or f"{n}=" in message or f"`{n}[" in message for n in names)


# Building a Keras layer draws its seed from `random`; harmless here.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@settings(
    max_examples=150 if FULL else 12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=not FULL,
)
@given(data=st.data())
def test_constructor_refuses_clearly_or_builds_finite(cls, data):
    parameters = [
        p
        for p in inspect.signature(cls).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    kwargs = {}
    for p in parameters:
        required = p.default is inspect.Parameter.empty
        if required or data.draw(st.booleans(), label=f"pass {p.name}"):
            kwargs[p.name] = data.draw(_strategy(p), label=p.name)
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        assert _names_an_argument(str(e), [p.name for p in parameters]), (
            f"{cls.__name__}({kwargs!r:.300}) raised {type(e).__name__} naming no argument: {e}"
        )
        return
    _check_outputs(obj)


def test_schedule_argument_that_is_no_schedule_is_named():
    for bad in (object(), "not-a-schedule", {"class_name": "Nope"}):
        with pytest.raises(TypeError, match="`schedule`"):
            tfkit.schedules.Warmup(bad, 10)


def test_every_public_package_is_discovered():
    names = {c.__name__ for c in CLASSES}
    assert {
        "EarlyStopping",
        "BackupAndRestore",
        "GradientAccumulator",
        "LossScaleOptimizer",
        "CosineDecay",
        "OneCycle",
        "Recompute",
        "TrainStep",
    } <= names


# --------------------------------------------------------- targeted findings


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda v: tfkit.callbacks.EarlyStopping(restore_best_weights=v), "restore_best_weights"),
        (lambda v: tfkit.callbacks.NaNGuard(restore=v), "restore"),
        (lambda v: tfkit.callbacks.UpdateRatioMonitor(per_batch=v), "per_batch"),
        (lambda v: tfkit.callbacks.HyperparameterLogger(per_batch=v), "per_batch"),
        (lambda v: tfkit.callbacks.BackupAndRestore("b", double_checkpoint=v), "double_checkpoint"),
    ],
)
@pytest.mark.parametrize("value", ["no", "False", 1, 0, None])
def test_booleans_only_from_bool(build, argument, value):
    with pytest.raises(TypeError, match=f"`{argument}`"):
        build(value)


@pytest.mark.parametrize("steps", [2**70, 10**400, np.uint64(2**64 - 1)])
def test_accumulation_steps_beyond_int64_are_refused(steps):
    with pytest.raises(ValueError, match="accumulation_steps"):
        tfkit.GradientAccumulator(keras.optimizers.SGD(0.1), steps)


def test_accumulation_steps_numpy_integer_accepted():
    assert tfkit.GradientAccumulator(keras.optimizers.SGD(0.1), np.int64(4)).accumulation_steps == 4


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(min_scale=1e-38), "min_scale"),  # subnormal in float32: the scale could reach 0
        (dict(min_scale=1e-45), "min_scale"),
        (dict(max_scale=1e39), "max_scale"),  # inf in float32: every step skipped
        (dict(initial_scale=10**400), "initial_scale"),
        (dict(dynamic_growth_steps=2**70), "dynamic_growth_steps"),
    ],
)
def test_loss_scale_bounds_are_normal_float32(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        tfkit.LossScaleOptimizer(keras.optimizers.SGD(0.1), **kwargs)


def test_loss_scale_smallest_normal_bound_keeps_weights_finite():
    tiny = float(np.finfo(np.float32).tiny)
    opt = tfkit.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=tiny, min_scale=tiny)
    variable = keras.Variable(np.ones(2, "float32"))
    for grad in ([np.inf, 1.0], [1.0, 1.0], [np.nan, 0.0], [1.0, 2.0]):
        opt.apply([tf.constant(grad, tf.float32)], [variable])
    assert np.all(np.isfinite(variable.numpy())) and float(opt.dynamic_scale) >= tiny


def test_train_step_checks_the_strategy_type():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(TypeError, match="`strategy`.*'mirrored'"):
        tfkit.TrainStep(model, "mse", keras.optimizers.SGD(0.1), strategy="mirrored")


def test_lr_find_checks_data_lengths_up_front():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="same number of examples.*x has 10, y has 7"):
        tfkit.tuning.lr_find(model, (np.ones((10, 2)), np.ones((7, 1))), verbose=0)


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_huge_integers_give_a_named_value_error_not_overflow(value):
    with pytest.raises(ValueError, match="patience"):
        tfkit.callbacks.EarlyStopping(patience=value)
    with pytest.raises(ValueError, match="initial_learning_rate"):
        tfkit.schedules.CosineDecay(value, 10)
    with pytest.raises(ValueError, match="min_lr"):
        tfkit.tuning.lr_find(keras.Sequential(), (np.ones((2, 1)),), min_lr=value)


def test_shared_validators():
    assert _validation.check_int("O", "n", np.int32(3)) == 3
    assert _validation.check_float("O", "x", np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match=r"`n`.*<an integer of 401 digits>"):
        _validation.check_int("O", "n", 10**400)
    with pytest.raises(ValueError, match="`x`.*float32"):
        _validation.check_float("O", "x", 1e39, float_dtype="float32")
    with pytest.raises(TypeError, match="`flag`"):
        _validation.check_bool("O", "flag", "yes")
