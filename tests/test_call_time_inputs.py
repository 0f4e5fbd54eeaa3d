"""Call-time inputs of public functions and methods: a clear error naming the argument, or a result.

Hypothesis draws values of every kind (None, strings, bools, negative,
non-finite, 10**400, containers, objects) for the arguments of
``doctor.examine``, ``GradientAccumulator.apply(weight=)``, ``set_policy``,
``wrap``, ``layerwise_decay``, ``recompute_sequential``, ``lr_find`` and the
monitoring callbacks (a missing monitor key). Every refusal is a ``TypeError`` or
``ValueError`` with tfkit's message shape (``Owner: `name` must be ...;
received name=...``).
"""

from __future__ import annotations

import math
import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfkit
from tfkit.callbacks import EarlyStopping, ReduceLROnPlateau

EXAMPLES = 40 if os.environ.get("TFKIT_FULL") == "1" else 8
ANY = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.booleans(),
    st.integers(-5, 5),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(0, 3), max_size=2),
    st.just(object()),
)


def refused_clearly(error: Exception, owner: str, name: str) -> bool:
    # ``name[i]`` names one element of a sequence argument.
    arg = rf"{re.escape(name)}(\[\d+\])?"
    pattern = rf"^{re.escape(owner)}: `{arg}` must be .*; received {arg}="
    return re.search(pattern, str(error), flags=re.S) is not None


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


DATA = (np.ones((16, 3), "float32"), np.ones((16, 1), "float32"))
EXAMINE_NUMBERS = [
    "batch_size",
    "sample_size",
    "overfit_steps",
    "overfit_batch_size",
    "time_budget",
]


@pytest.mark.parametrize(
    "name",
    ["batch_size", "seed", "checks"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in EXAMINE_NUMBERS[1:] + ["learning_rate"]],
)
def test_doctor_examine_arguments(name):
    model = _model()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=ANY)
    def check(value):
        kwargs = {"checks": ["precision"], name: value}
        try:
            tfkit.doctor.examine(model, DATA, **kwargs)
        except (TypeError, ValueError) as e:
            if name == "checks" and "unknown check" in str(e):
                return
            assert refused_clearly(e, "examine", name), str(e)

    check()


def test_gradient_accumulator_apply_weight():
    v = keras.Variable(np.zeros(1, "float32"))
    optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(0.1), 2)
    optimizer.build([v])

    @settings(max_examples=3 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(weight=ANY)
    def check(weight):
        before = v.numpy().copy()
        try:
            optimizer.apply([tf.ones(1)], [v], weight=weight)
        except (TypeError, ValueError) as e:
            assert refused_clearly(e, "GradientAccumulator.apply", "weight"), str(e)
            return
        assert np.all(np.isfinite(v.numpy()))
        assert weight is None or float(weight) >= 0 or np.array_equal(v.numpy(), before)

    check()
    # Tensor weights: a non-finite or negative one drops the micro-batch, never a NaN weight.
    for bad in (np.nan, -1.0, np.inf):
        optimizer.apply([tf.ones(1)], [v], weight=tf.constant(bad))
        optimizer.apply([tf.ones(1)], [v], weight=tf.constant(1.0))
        assert np.all(np.isfinite(v.numpy()))
    with pytest.raises(TypeError, match="`weight`"):
        optimizer.apply([tf.ones(1)], [v], weight=tf.constant("x"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: EarlyStopping(monitor="val_missing", patience=0),
        lambda: ReduceLROnPlateau(monitor="val_missing", patience=0),
        lambda: ReduceLROnPlateau(monitor="val_missing", patience=0, threshold=0.1),
    ],
)
def test_callbacks_with_a_missing_monitor_key_warn_once_and_do_nothing(make):
    model = _model()
    callback = make()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(*DATA, epochs=3, verbose=0, callbacks=[callback])
    messages = [str(w.message) for w in record if "val_missing" in str(w.message)]
    assert len(messages) == 1 and "Available keys" in messages[0]
    assert not model.stop_training
    assert math.isclose(float(model.optimizer.learning_rate), 0.01, rel_tol=1e-6)


# --- set_policy, wrap, layerwise_decay, recompute_sequential, lr_find, training.install:
# any value of any kind for one argument, the others valid.


def _refuses_or_works(call, owner: str, name: str):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=ANY)
    def check(value):
        try:
            call(value)
        except (TypeError, ValueError) as e:
            assert refused_clearly(e, owner, name), str(e)

    check()


def _set_policy(value):
    with tfkit.precision.set_policy(value):
        pass


def _set_policy_devices(value):
    with tfkit.precision.set_policy("auto", devices=value):
        pass


def _layerwise(**kwargs):
    args = dict(layers=["d0/.*"], decay=0.5) | kwargs
    return tfkit.optimizers.layerwise_decay(keras.optimizers.SGD(0.1), **args)


def _lr_find(name):
    def call(value):
        model = _model()
        kwargs = {"steps": 3, "batch_size": 8, "verbose": 0} | {name: value}
        tfkit.tuning.lr_find(model, DATA, **kwargs)

    return call


@pytest.mark.parametrize(
    "call, owner, name",
    [
        (_set_policy, "set_policy", "policy"),
        (_set_policy_devices, "set_policy", "devices"),
        (lambda v: tfkit.precision.wrap(v), "wrap", "optimizer"),
        (lambda v: tfkit.precision.wrap(keras.optimizers.SGD(0.1), policy=v), "wrap", "policy"),
        (lambda v: _layerwise(decay=v), "layerwise_decay", "decay"),
        (lambda v: _layerwise(layers=v), "layerwise_decay", "layers"),
        (
            lambda v: tfkit.recompute_sequential([keras.layers.Dense(2) for _ in range(4)], v),
            "recompute_sequential",
            "segments",
        ),
        (lambda v: tfkit.recompute_sequential(v), "recompute_sequential", "layers"),
        pytest.param(_lr_find("min_lr"), "lr_find", "min_lr", marks=pytest.mark.slow),
        pytest.param(_lr_find("steps"), "lr_find", "steps", marks=pytest.mark.slow),
        pytest.param(_lr_find("beta"), "lr_find", "beta", marks=pytest.mark.slow),
    ],
    ids=lambda p: p if isinstance(p, str) else None,
)
def test_public_functions_refuse_clearly_or_work(call, owner, name):
    _refuses_or_works(call, owner, name)


@pytest.mark.parametrize("name", ["spike_guard", "weight_averaging"])
def test_install_arguments(name):
    _refuses_or_works(lambda v: tfkit.training.install(_model(), **{name: v}), "install", name)
    with pytest.raises(
        TypeError, match=r"^install: `model` must be a keras.Model; received model="
    ):
        tfkit.training.install(keras.layers.Dense(1))


@pytest.mark.parametrize(
    "name",
    [
        "target_batch",
        "start",
        "multiple_of",
        "min_micro_batch",
        "max_accumulation_steps",
        "safety_margin",
    ],
)
def test_find_micro_batch_arguments_refused_before_any_trial(name):
    # Bad values only (a valid one would run trials): every one refused by name.
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=st.one_of(st.none(), st.text(max_size=3), st.booleans(), st.integers(-5, 0),
                           st.just(10**400), st.just(math.nan), st.just(object())))  # fmt: skip
    def check(value):
        with pytest.raises((TypeError, ValueError)) as info:
            tfkit.tuning.find_micro_batch(_model(), DATA, **({"target_batch": 16} | {name: value}))
        assert refused_clearly(info.value, "find_micro_batch", name), str(info.value)

    check()
