"""``tfkit.precision.wrap``: tfkit's bounded loss scaler exactly where float16 needs one."""

import keras
import numpy as np
import pytest

from tfkit.optimizers import GradientAccumulator
from tfkit.precision import LossScaleOptimizer, audit, set_policy, wrap


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", keras.DTypePolicy("float32")])
def test_no_loss_scaling_outside_float16(policy):
    sgd = keras.optimizers.SGD(0.1)
    assert wrap(sgd, policy=policy) is sgd
    assert wrap(sgd, policy=policy, min_scale=4.0) is sgd  # names checked, values unused


def test_float16_gets_tfkit_loss_scale_optimizer_with_its_arguments():
    acc = GradientAccumulator(keras.optimizers.SGD(0.1), 2)
    scaled = wrap(acc, policy="mixed_float16", initial_scale=8.0, min_scale=2.0, max_scale=2.0**10)
    assert type(scaled) is LossScaleOptimizer and scaled.inner_optimizer is acc
    assert (scaled.min_scale, scaled.max_scale, float(scaled.loss_scale)) == (2.0, 2.0**10, 8.0)


def test_default_policy_is_the_global_one_and_policy_change_works():
    sgd = keras.optimizers.SGD(0.1)
    assert wrap(sgd) is sgd  # the suite runs under float32
    with set_policy("mixed_float16") as change:
        assert isinstance(wrap(keras.optimizers.SGD(0.1)), LossScaleOptimizer)
    assert isinstance(wrap(keras.optimizers.SGD(0.1), policy=change), LossScaleOptimizer)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(optimizer="sgd"), TypeError, "`optimizer` must be a keras.optimizers.Optimizer"),
        (dict(policy=16), TypeError, "`policy` must be None, a policy name"),
        (dict(policy="fp8"), ValueError, "fp8"),
        (dict(min_scal=1.0), TypeError, r"unknown keyword argument\(s\) \['min_scal'\]"),
        (dict(policy="mixed_float16", min_scale=0.0), ValueError, "min_scale"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    optimizer = kwargs.pop("optimizer", keras.optimizers.SGD(0.1))
    with pytest.raises(error, match=match):
        wrap(optimizer, **kwargs)


def test_refuses_a_second_loss_scaler():
    with set_policy("mixed_float16"):
        once = wrap(keras.optimizers.SGD(0.1))
        keras_own = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    for optimizer in (once, keras_own):
        with pytest.raises(ValueError, match="already contains a LossScaleOptimizer"):
            wrap(optimizer, policy="mixed_float16")


def _model():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax", dtype="float32"),
        ],
        name="mlp",
    )


def test_recommended_recipe_ends_with_tfkit_scaler_and_a_clean_audit():
    """set_policy + wrap + compile: compile keeps tfkit's scaler; audit has nothing to say."""
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    with set_policy("mixed_float16") as change:
        model = _model()
        model.compile(
            wrap(keras.optimizers.SGD(0.01), policy=change), "sparse_categorical_crossentropy"
        )
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert type(model.optimizer) is LossScaleOptimizer
    assert int(model.optimizer.skipped_steps) >= 0 and int(model.optimizer.iterations) == 4
    scaling = {"no_loss_scaling", "unneeded_loss_scaling", "unbounded_loss_scale"}
    assert not scaling & {f.code for f in audit(model)}
    # The control: the same recipe without wrap gets Keras' scaler, which audit flags.
    with set_policy("mixed_float16"):
        plain = _model()
        plain.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    assert type(plain.optimizer) is keras.optimizers.LossScaleOptimizer
    assert "unbounded_loss_scale" in [f.code for f in audit(plain)]
