"""ReduceLROnPlateau with PyTorch's argument names gives PyTorch's rates, epoch by epoch.

Golden values: tests/golden/reduce_lr_torch.json, made once by
tests/golden/make_reduce_lr_torch_golden.py with torch 2.13 (every group's lr
after each ``scheduler.step(metric)``): min/max, rel/abs, cooldown, patience,
thresholds, near-ties, NaN, ``min_lr`` (scalar and per group) and ``eps``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import keras
import numpy as np
import pytest

from tfkit.callbacks import ReduceLROnPlateau
from tfkit.optimizers import control

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "reduce_lr_torch.json").read_text())
CASES = GOLDEN["cases"]
BASE_LRS = GOLDEN["base_lrs"]
FULL = os.environ.get("TFKIT_FULL") == "1"


def test_golden_file_is_pinned():
    assert GOLDEN["versions"]["torch"].startswith("2.13")
    modes = {(c["kwargs"].get("mode"), c["kwargs"].get("threshold_mode")) for c in CASES.values()}
    assert {("min", "rel"), ("min", "abs"), ("max", "rel"), ("max", "abs")} <= modes


def tfkit_kwargs(torch_kwargs: dict) -> dict:
    """The same arguments; ``threshold`` (PyTorch's name) selects PyTorch's rule."""
    kwargs = {"monitor": "val_loss", "threshold": 1e-4, "factor": 0.1, "patience": 10}
    kwargs.update(torch_kwargs)
    kwargs.setdefault("mode", "min")  # PyTorch's default mode
    return kwargs


def metric(value):
    return math.nan if value == "nan" else value


class _Model:
    """One compiled model per optimizer layout, reset between cases (keeps the test fast)."""

    def __init__(self, groups: int):
        inputs = keras.Input((2,))
        a = keras.layers.Dense(1, name="a")(inputs)
        b = keras.layers.Dense(1, name="b")(inputs)
        self.model = keras.Model(inputs, keras.layers.Add()([a, b]))
        if groups == 1:
            optimizer = keras.optimizers.SGD(BASE_LRS[0])
        else:
            optimizer = keras.optimizers.MultiOptimizer(
                keras.optimizers.OptimizerMap(
                    keras.optimizers.SGD(BASE_LRS[1], name="sgd_b"),
                    {"a/.*": keras.optimizers.SGD(BASE_LRS[0], name="sgd_a")},
                )
            )
        self.model.compile(optimizer, "mse")

    def run(self, callback, sequence):
        for state in control(self.model.optimizer).values() if _installed(self.model) else ():
            state.learning_rate_multiplier.assign(1.0)
        callbacks = keras.callbacks.CallbackList([callback], model=self.model)
        callbacks.on_train_begin()
        rates = []
        for epoch, value in enumerate(sequence):
            callbacks.on_epoch_begin(epoch)
            callbacks.on_epoch_end(epoch, {"val_loss": metric(value)})
            states = control(self.model.optimizer)
            rates.append([s.next_learning_rate() for s in states.values()])
        callbacks.on_train_end()
        return rates


def _installed(model) -> bool:
    try:
        control(model.optimizer)
    except (TypeError, ValueError):
        return False
    return True


def single_group_cases():
    names = sorted(CASES)
    return names if FULL else names[::6] + ["min_lr_scalar", "eps_large", "defaults"]


def test_single_group_equals_torch_every_epoch():
    runner = _Model(groups=1)
    for name in single_group_cases():
        case = CASES[name]
        kwargs = tfkit_kwargs(case["kwargs"])
        if isinstance(kwargs.get("min_lr"), list):
            kwargs["min_lr"] = kwargs["min_lr"][:1]
        got = [r[0] for r in runner.run(ReduceLROnPlateau(**kwargs), case["sequence"])]
        expected = [lrs[0] for lrs in case["lrs"]]
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "name", ["min_lr_per_group", "eps_large", "eps_and_min_lr", "min_lr_scalar"]
)
def test_two_groups_min_lr_and_eps_per_group_equal_torch(name):
    if not hasattr(keras.optimizers, "MultiOptimizer"):
        pytest.skip(f"keras.optimizers.MultiOptimizer is not in Keras {keras.__version__}")
    runner = _Model(groups=2)
    case = CASES[name]
    kwargs = tfkit_kwargs(case["kwargs"])
    got = runner.run(ReduceLROnPlateau(**kwargs), case["sequence"])
    names = list(control(runner.model.optimizer))
    by_base = {round(got[0][i], 12): i for i in range(2)}
    order = [by_base[lr] for lr in BASE_LRS]  # torch's group order
    got = [[r[i] for i in order] for r in got]
    np.testing.assert_allclose(got, case["lrs"], rtol=1e-6, err_msg=f"{name} {names}")


def test_torch_cooldown_is_keras_cooldown_plus_one():
    """The documented mapping: torch(patience=p, cooldown=c) == Keras rule (p + 1, c + 1)."""
    runner = _Model(groups=1)
    sequence = [1.0] + [1.0] * 30  # never improves: reductions every (cooldown + patience + 1)
    for p, c in [(0, 1), (1, 2), (2, 0)]:
        torch_rule = runner.run(
            ReduceLROnPlateau(threshold=0.0, threshold_mode="abs", patience=p, cooldown=c,
                              factor=0.5, mode="min"),
            sequence,
        )
        keras_rule = runner.run(
            ReduceLROnPlateau(min_delta=0.0, patience=p + 1, cooldown=c + 1, factor=0.5,
                              mode="min"),
            sequence,
        )
        np.testing.assert_allclose(torch_rule, keras_rule, err_msg=str((p, c)))
        assert min(r[0] for r in torch_rule) < 0.1


def test_arguments_and_config():
    cb = ReduceLROnPlateau(threshold=0.01, cooldown=2, min_lr=[0.1, 0.0])
    assert cb.torch_rule and cb.threshold_mode == "rel" and cb.eps == 1e-8
    config = cb.get_config()
    assert config["threshold"] == 0.01 and config["min_delta"] is None
    clone = ReduceLROnPlateau.from_config(config)
    assert clone.get_config() == config
    assert not ReduceLROnPlateau().torch_rule and ReduceLROnPlateau().threshold_mode == "abs"
    with pytest.raises(ValueError, match="`min_delta`"):
        ReduceLROnPlateau(min_delta=0.1, threshold=0.1)
    with pytest.raises(TypeError, match="`min_lr`"):
        ReduceLROnPlateau(min_lr=[0.1])  # per group is PyTorch's rule
    with pytest.raises(ValueError, match="`eps`"):
        ReduceLROnPlateau(eps=-1.0)
    with pytest.raises(ValueError, match="`threshold`"):
        ReduceLROnPlateau(threshold=math.nan)
    with pytest.raises(ValueError, match=r"`min_lr\[1\]`"):
        ReduceLROnPlateau(threshold=0.1, min_lr=[0.1, -1])
    runner = _Model(groups=1)
    with pytest.raises(ValueError, match="one bound per parameter group"):
        runner.run(ReduceLROnPlateau(threshold=0.1, min_lr=[0.1, 0.2]), [1.0])
