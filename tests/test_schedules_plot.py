"""``tfkit.plot``: drawing schedules and the ``tfkit plot`` subcommand."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tfkit import plot
from tfkit.schedules import OneCycle, Warmup


def test_figure_shows_schedule_and_momentum_values():
    s = OneCycle(0.1, total_steps=30, three_phase=True)
    fig = plot.plot_schedule(s)
    lr_axis, momentum_axis = fig.axes
    expected_lr = [float(s(k)) for k in range(30)]
    np.testing.assert_allclose(lr_axis.lines[0].get_ydata(), expected_lr, rtol=1e-7)
    expected_m = [float(s.momentum_schedule(k)) for k in range(30)]
    np.testing.assert_allclose(momentum_axis.lines[0].get_ydata(), expected_m, rtol=1e-7)


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'tfkit\[examples\]'"):
        plot.plot_schedule(OneCycle(0.1, 10))


def test_default_length_covers_the_whole_shape():
    from tfkit.schedules import CosineDecay, CosineDecayRestarts, Cyclic, MultiStepDecay

    assert plot.default_steps(OneCycle(0.1, 500)) == 500
    assert plot.default_steps(CosineDecay(0.1, 1000, warmup_target=0.2, warmup_steps=100)) == 1201
    assert plot.default_steps(Warmup(CosineDecay(0.1, 1000), 100)) == 1201
    assert plot.default_steps(CosineDecayRestarts(0.1, 100, t_mul=2.0)) == 700
    assert plot.default_steps(Cyclic(0.1, 1.0, step_size=10, step_size_down=20)) == 120
    assert plot.default_steps(MultiStepDecay(0.1, [100, 300])) == 391


@pytest.mark.parametrize("log_scale", [False, True])
def test_join_and_product_are_drawn_with_their_values(log_scale):
    from tfkit.schedules import Constant, CosineDecay, ExponentialDecay, Join, Product

    join = Join([Constant(0.01), CosineDecay(0.1, 40)], boundaries=[10])
    product = Product([join, ExponentialDecay(1.0, 10, 0.5)])
    for s in (join, product):
        assert plot.default_steps(s) == 55
        fig = plot.plot_schedule(s, log_scale=log_scale)
        ax = fig.axes[0]
        expected = np.array([float(s(k)) for k in range(55)])
        if log_scale:
            assert ax.get_yscale() == "log"
            expected = np.where(expected > 0, expected, np.nan)  # 0 has no place on a log axis
        np.testing.assert_allclose(ax.lines[0].get_ydata(), expected, rtol=1e-6)


def test_keras_schedule_inside_a_product_is_drawn():
    import keras

    from tfkit.schedules import Constant, Product

    piecewise = keras.optimizers.schedules.PiecewiseConstantDecay([5], [1.0, 0.5])
    s = Product([Constant(0.1), piecewise])
    np.testing.assert_allclose(plot.schedule_values(s, 8), [0.1] * 6 + [0.05] * 2, rtol=1e-6)


def test_every_contract_schedule_is_drawn_with_its_values():
    from test_schedules_contract import CASES

    plt = plot._pyplot()
    for name, make in sorted(CASES.items()):
        s = make()
        steps = plot.default_steps(s)
        assert 1 <= steps <= 10_000, (name, steps)
        fig = plot.plot_schedule(s, steps=40, log_scale=name.startswith("Product"))
        expected = np.array([float(s(k)) for k in range(40)])
        if name.startswith("Product"):
            expected = np.where(expected > 0, expected, np.nan)
        np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), expected, rtol=1e-6)
        plt.close(fig)
