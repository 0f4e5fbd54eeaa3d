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
