"""LossScaleOptimizer's ``growth_factor`` / ``backoff_factor`` against torch.amp.GradScaler.

Golden scales (tests/golden/hf_torch.json, made by make_hf_torch_golden.py
with torch 2.13.0) are GradScaler's scale after each update for a fixed
pattern of overflowing steps; the formula below restates the rule.
"""

from __future__ import annotations

import json
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.precision import LossScaleOptimizer

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "hf_torch.json").read_text())
SCALER = {k: v for k, v in GOLDEN.items() if k.startswith("torch_gradscaler_")}


def formula(overflow, init, growth, backoff, interval, lo=0.0, hi=math.inf):
    """The scale after each update: GradScaler's rule, with tfkit's bounds."""
    scale, run, out = init, 0, [init]
    for bad in overflow:
        if bad:
            scale, run = max(scale * backoff, lo), 0
        else:
            run += 1
            if run == interval:
                scale, run = min(scale * growth, hi), 0
        out.append(scale)
    return out


def run_scales(opt, overflow, jit_compile=False):
    w = keras.Variable(np.ones(2, "float32"))
    opt.build([w])

    @tf.function(jit_compile=jit_compile)
    def step(g):
        opt.apply([g], [w])

    scales = [float(opt.loss_scale)]
    for bad in overflow:
        step(tf.constant([math.inf if bad else 1.0, 0.0], tf.float32))
        scales.append(float(opt.loss_scale))
    return scales


@pytest.mark.parametrize("key", sorted(SCALER))
def test_matches_grad_scaler_golden(key):
    case = SCALER[key]
    kw = case["kwargs"]
    opt = LossScaleOptimizer(
        keras.optimizers.SGD(0.0),
        initial_scale=kw["init_scale"],
        dynamic_growth_steps=kw["growth_interval"],
        growth_factor=kw["growth_factor"],
        backoff_factor=kw["backoff_factor"],
        min_scale=1e-3,  # GradScaler has no bounds: keep tfkit's out of reach
        max_scale=1e30,
    )
    got = run_scales(opt, case["overflow"], jit_compile=key.endswith("1"))
    np.testing.assert_allclose(got, case["scales"], rtol=1e-6)
    expected = formula(
        case["overflow"],
        kw["init_scale"],
        kw["growth_factor"],
        kw["backoff_factor"],
        kw["growth_interval"],
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bounds_still_apply_with_other_factors():
    overflow = [True] * 4 + [False] * 11
    opt = LossScaleOptimizer(
        keras.optimizers.SGD(0.0),
        initial_scale=40.0,
        dynamic_growth_steps=2,
        growth_factor=3.0,
        backoff_factor=0.1,
        min_scale=0.5,
        max_scale=50.0,
    )
    got = run_scales(opt, overflow)
    np.testing.assert_allclose(got, formula(overflow, 40.0, 3.0, 0.1, 2, 0.5, 50.0), rtol=1e-6)
    assert min(got) == 0.5 and max(got[1:]) == 50.0


def test_defaults_and_config_symmetry():
    opt = LossScaleOptimizer(keras.optimizers.SGD())
    assert (opt.growth_factor, opt.backoff_factor) == (2.0, 0.5)
    opt = LossScaleOptimizer(keras.optimizers.SGD(), growth_factor=1.5, backoff_factor=0.25)
    config = opt.get_config()
    assert (config["growth_factor"], config["backoff_factor"]) == (1.5, 0.25)
    clone = LossScaleOptimizer.from_config(config)
    assert clone.get_config() == config
    blob = json.dumps(keras.saving.serialize_keras_object(opt))
    restored = keras.saving.deserialize_keras_object(json.loads(blob), safe_mode=True)
    assert restored.get_config() == config


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"growth_factor": 1.0}, "growth_factor"),
        ({"growth_factor": 0.5}, "growth_factor"),
        ({"growth_factor": math.inf}, "growth_factor"),
        ({"growth_factor": 1e39}, "growth_factor"),
        ({"backoff_factor": 1e-39}, "backoff_factor"),
        ({"growth_factor": math.nan}, "growth_factor"),
        ({"growth_factor": True}, "growth_factor"),
        ({"growth_factor": "2"}, "growth_factor"),
        ({"backoff_factor": 0.0}, "backoff_factor"),
        ({"backoff_factor": 1.0}, "backoff_factor"),
        ({"backoff_factor": -0.5}, "backoff_factor"),
        ({"backoff_factor": math.nan}, "backoff_factor"),
        ({"backoff_factor": False}, "backoff_factor"),
    ],
)
def test_invalid_factors_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument) as err:
        LossScaleOptimizer(keras.optimizers.SGD(), **kwargs)
    assert "Received" in str(err.value)


def test_extreme_factors_keep_the_scale_finite_and_bounded():
    overflow = [False, False, True, True, False, False]
    opt = LossScaleOptimizer(
        keras.optimizers.SGD(0.0),
        initial_scale=8.0,
        dynamic_growth_steps=2,
        growth_factor=3e38,  # the product overflows float32 and saturates at max_scale
        backoff_factor=1.2e-38,  # the product underflows and floors at min_scale
        min_scale=2.0,
        max_scale=2.0**20,
    )
    got = run_scales(opt, overflow, jit_compile=True)
    assert got == [8.0, 8.0, 2.0**20, 2.0, 2.0, 2.0, 2.0**20]
