"""The keras-tuner search space: each tfkit choice lands in the compiled model, and a
real (tiny) tuner search runs end to end."""

from __future__ import annotations

import keras
import numpy as np
import pytest

kt = pytest.importorskip("keras_tuner")

from tfkit.optimizers import innermost  # noqa: E402
from tfkit.tuning.hypermodel import (  # noqa: E402
    DEFAULT_SCHEDULES,
    TfkitHyperModel,
    allow_missing_tensorboard,
)


def _build(hp):
    units = hp.Choice("units", [4, 8])
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(units, activation="relu"), keras.layers.Dense(3)]
    )


def _hypermodel(**kwargs):
    defaults = dict(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        decay_steps=50,
    )
    return TfkitHyperModel(_build, **{**defaults, **kwargs})


def _hp(**values):
    hp = kt.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    return hp


def test_is_a_keras_tuner_hypermodel_with_tfkit_choices():
    hm = _hypermodel(
        policies=("float32", "mixed_float16"),
        accumulation_steps=(1, 2),
        learning_rate=(1e-3, 1e-1),
    )
    assert isinstance(hm, kt.HyperModel)
    hp = kt.HyperParameters()
    hm.build(hp)
    names = {p.name for p in hp.space}
    assert {"precision", "learning_rate", "schedule", "accumulation_steps", "units"} <= names
    assert hp.get("schedule") in DEFAULT_SCHEDULES
    lr = next(p for p in hp.space if p.name == "learning_rate")
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-3, 1e-1, "log")


def test_choices_reach_the_compiled_model():
    hm = _hypermodel(policies=("float32", "mixed_float16"), accumulation_steps=(1, 4))
    hp = _hp(
        precision="mixed_float16",
        schedule="cosine",
        learning_rate=0.05,
        accumulation_steps=4,
        cosine_alpha=0.1,
    )
    policy = keras.config.dtype_policy().name
    model = hm.build(hp)
    assert keras.config.dtype_policy().name == policy  # global policy put back
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = innermost(model.optimizer)
    schedule = inner._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    # 50 batches per trial with 4 micro-batches per update: 13 real updates (README "Step"),
    # unless the accumulator is Keras' own, whose schedule counts micro-batches (keras-defects.md#schedule-at-micro-step).
    from tfkit.tuning.hypermodel import _default_accumulator

    expected = 50 if getattr(_default_accumulator(), "counts_micro_batches", False) else 13
    assert (schedule.initial_learning_rate, schedule.decay_steps, schedule.alpha) == (
        0.05,
        expected,
        0.1,
    )
    steps = [
        getattr(o, "accumulation_steps", None) or getattr(o, "gradient_accumulation_steps", None)
        for o in (model.optimizer, model.optimizer.inner_optimizer, inner)
    ]
    assert 4 in steps

    model = hm.build(
        _hp(precision="float32", schedule="constant", learning_rate=0.02, accumulation_steps=1)
    )
    assert model.dtype_policy.name == "float32"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.02, rtol=1e-6)
    assert not model.optimizer.gradient_accumulation_steps


def test_pluggable_schedule_declares_its_own_hyperparameters():
    calls = []

    def step_decay(hp, learning_rate, decay_steps):
        factor = hp.Choice("step_factor", [0.1, 0.5])
        calls.append((learning_rate, decay_steps, factor))
        return keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps, factor, staircase=True
        )

    hm = _hypermodel(schedules={"step": step_decay}, learning_rate=0.01)
    hp = kt.HyperParameters()
    model = hm.build(hp)
    assert calls == [(0.01, 50, hp.get("step_factor"))]
    assert isinstance(model.optimizer._learning_rate, keras.optimizers.schedules.ExponentialDecay)


def test_random_search_two_trials(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    tuner = allow_missing_tensorboard(
        kt.RandomSearch(
            _hypermodel(accumulation_steps=(1, 2), compile_kwargs={"jit_compile": False}),
            objective="val_accuracy",
            max_trials=2,
            seed=0,
            directory=str(tmp_path),
            project_name="t",
        )
    )
    tuner.search(x, y, validation_split=0.25, epochs=2, batch_size=16, verbose=0)
    trials = tuner.oracle.get_best_trials(2)
    assert len(trials) == 2 and all(t.score is not None for t in trials)
    best = tuner.get_best_hyperparameters(1)[0]
    assert best.get("schedule") in DEFAULT_SCHEDULES


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"learning_rate": 0.0}, ValueError, "learning_rate.*> 0"),
        ({"learning_rate": (1e-2, 1e-3)}, ValueError, "learning_rate.*low < high"),
        ({"policies": ("float64",)}, ValueError, "policies.*float64"),
        ({"policies": ()}, ValueError, "policies.*at least one"),
        ({"accumulation_steps": (0,)}, ValueError, "accumulation_steps.*>= 1"),
        ({"accumulation_steps": (1.5,)}, TypeError, "accumulation_steps.*int"),
        ({"schedules": {}}, ValueError, "schedules.*at least one"),
        ({"schedules": {"x": 3}}, TypeError, "schedule 'x' is not callable"),
        ({"decay_steps": 0}, ValueError, "decay_steps.*>= 1"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _hypermodel(**kwargs)


def test_cosine_without_decay_steps_is_an_error():
    hm = _hypermodel(decay_steps=None, schedules={"cosine": DEFAULT_SCHEDULES["cosine"]})
    with pytest.raises(ValueError, match="decay_steps"):
        hm.build(kt.HyperParameters())


def test_missing_tensorboard_is_reported_only_when_a_tensorboard_callback_is_used(tmp_path):
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed: allow_missing_tensorboard does nothing")
    except ImportError:
        pass
    tuner = allow_missing_tensorboard(
        kt.RandomSearch(_hypermodel(), objective="val_loss", max_trials=1, directory=str(tmp_path))
    )
    trial = tuner.oracle.create_trial("t0")
    assert tuner._configure_tensorboard_dir([], trial) is None
    with pytest.raises(ImportError, match="tensorboard"):
        tuner._configure_tensorboard_dir([keras.callbacks.TensorBoard(str(tmp_path))], trial)


def test_custom_accumulator_and_decay_steps_in_real_updates():
    wrapped = []

    def accumulator(optimizer, steps):
        wrapped.append(steps)
        return optimizer

    hm = _hypermodel(accumulation_steps=(4,), accumulator=accumulator)
    model = hm.build(_hp(schedule="cosine", cosine_alpha=0.0))
    assert wrapped == [4]
    assert model.optimizer._learning_rate.decay_steps == 13  # ceil(50 / 4) real updates


def test_one_cycle_from_tfkit_schedules():
    schedules = pytest.importorskip("tfkit.schedules")
    assert "one_cycle" in DEFAULT_SCHEDULES
    hm = _hypermodel(accumulation_steps=(2,), accumulator=lambda opt, steps: opt)
    model = hm.build(_hp(schedule="one_cycle", learning_rate=0.1, one_cycle_pct_start=0.25))
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, schedules.OneCycle)
    assert (schedule.max_learning_rate, schedule.total_steps, schedule.pct_start) == (0.1, 25, 0.25)
