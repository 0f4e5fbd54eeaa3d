"""tfkit.recompute.plan: budgets met in fresh BFC processes, the knapsack, bad budgets.

The measured tests run in fresh processes with the BFC CPU allocator: one plans
and saves the planned model (and compares its gradients with the original's,
graph and XLA), another loads it with ``safe_mode=True`` and measures its peak.
The choice logic is tested with an injected measurement (as on a GPU).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import FULL

import tfkit
from tfkit.memory import measure_in_subprocess
from tfkit.recompute import Recompute
from tfkit.recompute.planning import _choose

ROOT_TESTS = __file__.rsplit("/", 1)[0]
_FULL_ONLY = pytest.mark.skipif(not FULL, reason="TFKIT_FULL=1: ~1 min per shape")
_SHAPES = [
    ("residual_mlp", 0.6),
    pytest.param("transformer", 0.7, marks=_FULL_ONLY),
    pytest.param("cnn", 0.7, marks=_FULL_ONLY),
]


@pytest.mark.slow
@pytest.mark.parametrize("shape, budget", _SHAPES)
def test_plan_meets_budget_in_a_fresh_process(tmp_path, shape, budget):
    path = str(tmp_path / "planned.keras")
    # oneDNN stays on: without it TensorFlow's own convolution gradients take
    # workspaces larger than the activations, and no plan helps the CNN.
    env = {"PYTHONPATH": ROOT_TESTS}
    got = measure_in_subprocess(
        f"{ROOT_TESTS}/recompute_shapes.py:make_plan",
        {"shape": shape, "budget": budget, "path": path}, env=env,
    )  # fmt: skip
    assert got["budget"] == int(budget * got["baseline"])
    assert got["measured"] <= got["budget"]
    assert got["extra"] <= got["full"]  # never more than recomputing every block
    assert got["grad_rel_err"] <= 1.0, got["grad_rel_err"]  # rtol=1e-6, atol=1e-6
    assert got["same_weights"]
    fresh = measure_in_subprocess(
        f"{ROOT_TESTS}/recompute_shapes.py:measure_saved", {"shape": shape, "path": path}, env=env
    )
    assert fresh["peak"] <= 1.05 * got["budget"], (fresh["peak"], got)
    assert "Recompute" in fresh["config"]


# ------------------------------------------------------- injected measurement


def _model():
    keras.utils.set_random_seed(0)
    blocks = [
        keras.Sequential(
            [keras.layers.Dense(32), keras.layers.ReLU(), keras.layers.Dense(8)], name=f"b{i}"
        )
        for i in range(3)
    ]
    return keras.Sequential([keras.Input((8,)), *blocks, keras.layers.Dense(1)])


SAVINGS = {"b0": {"full": 40, "selective": 25}, "b1": {"full": 30, "selective": 20},
           "b2": {"full": 10, "selective": 8}}  # fmt: skip


def _fake_measure(calls=None):
    """Peak = 100 minus the savings of the recomputed blocks (adds exactly)."""

    def measure(model):
        peak = 100
        for layer in model.layers:
            if isinstance(layer, Recompute):
                saving = SAVINGS.get(layer.name, {"full": 0, "selective": 0})
                peak -= saving["selective" if layer.save else "full"]
        if calls is not None:
            calls.append(peak)
        return peak

    return measure


@pytest.mark.parametrize(
    "budget, options",
    [
        (1.0, ["none", "none", "none", "none"]),
        (0.8, ["selective", "none", "none", "none"]),  # 25 >= 20 at the least cost
        (0.5, ["selective", "selective", "selective", "none"]),  # 53 for 3 x 128 multiply-adds
        (30, ["full", "full", "none", "none"]),  # 70 = 40 + 30: the cheapest way to 70
    ],
)
def test_knapsack_choice_with_injected_measurement(budget, options):
    model = _model()
    x = np.ones((4, 8), "float32")
    p = tfkit.recompute.plan(model, (x, np.ones((4, 1), "float32")), budget, measure=_fake_measure())
    assert [b.option for b in p.blocks] == options
    assert p.baseline_peak == 100 and p.measured_peak <= p.budget
    assert p.predicted_peak == 100 - sum(b.saving for b in p.blocks)
    assert p.extra_compute <= p.full_extra_compute
    assert "predicted peak" in str(p) and "extra compute" in str(p)
    planned = p.apply()
    for a, b in zip(planned.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_budget_below_any_plan_gives_the_smallest_reachable_peak():
    with pytest.raises(ValueError, match="smallest reachable peak is about 20 bytes"):
        tfkit.recompute.plan(
            _model(), (np.ones((4, 8), "float32"),), 19, measure=_fake_measure()
        )


def test_accepts_models_with_recompute_blocks_already():
    """A model built with Recompute (or under keras.RematScope) is planned afresh."""
    model = _model()
    wrapped = keras.Sequential(
        [keras.Input((8,))] + [Recompute(layer, name=layer.name) for layer in model.layers[:3]]
        + [model.layers[3]]
    )  # fmt: skip
    p = tfkit.recompute.plan(wrapped, (np.ones((4, 8), "float32"),), 1.0, measure=_fake_measure())
    assert [b.option for b in p.blocks] == ["none"] * 4  # baseline unwraps them


@pytest.mark.parametrize("budget", [0, -1, float("nan"), True, "1"])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        tfkit.recompute.plan(_model(), (np.ones((4, 8), "float32"),), budget,
                             measure=_fake_measure())  # fmt: skip


def test_choose_is_exact():
    options = [
        [(0, 0, "a0"), (5, 3, "a1"), (9, 10, "a2")],
        [(0, 0, "b0"), (4, 2, "b1"), (6, 9, "b2")],
    ]
    assert _choose(options, 9)[2] == ("a1", "b1")  # 9 saved for 5, not a2 alone for 10
    assert _choose(options, 16) is None
