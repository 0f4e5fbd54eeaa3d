"""``tfkit.plot``: drawing schedules and the ``tfkit plot`` subcommand."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest

from tfkit import plot
from tfkit.schedules import OneCycle, PiecewiseConstantDecay, Warmup


def _parser():
    parser = argparse.ArgumentParser(prog="tfkit")
    plot.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv):
    """What `tfkit ARGV` does once the lead registers tfkit.plot in tfkit.cli."""
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_onecycle_writes_png_with_momentum(tmp_path, capsys):
    out = tmp_path / "onecycle.png"
    argv = ["plot", "onecycle", "--max-learning-rate", "0.1", "--total-steps", "40", "-o", str(out)]
    assert _run(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out


def test_figure_shows_schedule_and_momentum_values():
    s = OneCycle(0.1, total_steps=30, three_phase=True)
    fig = plot.plot_schedule(s)
    lr_axis, momentum_axis = fig.axes
    expected_lr = [float(s(k)) for k in range(30)]
    np.testing.assert_allclose(lr_axis.lines[0].get_ydata(), expected_lr, rtol=1e-7)
    expected_m = [float(s.momentum_schedule(k)) for k in range(30)]
    np.testing.assert_allclose(momentum_axis.lines[0].get_ydata(), expected_m, rtol=1e-7)


def test_cli_lists_booleans_aliases_and_warmup():
    args = plot.schedule_parser("PiecewiseConstantDecay").parse_args(
        "--boundaries 10,20 --values 0.1,0.01,0.001 --warmup-steps 5 --warmup-type constant --warmup-initial-learning-rate 0.02".split()
    )
    s = plot.build_schedule(args)
    assert isinstance(s, Warmup) and isinstance(s.schedule, PiecewiseConstantDecay)
    assert s.schedule.boundaries == [10, 20] and s.warmup_type == "constant"
    assert float(s(0)) == pytest.approx(0.02) and float(s(5)) == pytest.approx(0.1)
    args = plot.schedule_parser("onecycle").parse_args(
        "--max-learning-rate 1 --total-steps 9 --three-phase true --anneal-strategy linear".split()
    )
    s = plot.build_schedule(args)
    assert s.three_phase is True and s.anneal_strategy == "linear"


@pytest.mark.parametrize(
    "argv",
    [
        ["plot", "onecycle", "--max-learning-rate", "0.1", "--bogus", "3"],
        ["plot", "onecycle", "--max-learning-rate", "0.1"],  # --total-steps is required
        ["plot", "onecycle", "--max-learning-rate", "abc", "--total-steps", "10"],
        ["plot", "nosuchschedule"],
        ["plot", "cosine", "--initial-learning-rate", "0.1", "--decay-steps", "10", "--alpha", "x"],
    ],
)
def test_bad_options_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(argv)
    assert exc.value.code == 2
    assert "usage: tfkit plot" in capsys.readouterr().err


def test_bad_values_exit_2_naming_the_argument(capsys):
    with pytest.raises(SystemExit) as exc:
        plot.main(
            ["onecycle", "--max-learning-rate", "0.1", "--total-steps", "10", "--pct-start", "1.5"]
        )
    assert exc.value.code == 2
    assert "pct_start" in capsys.readouterr().err


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'tfkit\[examples\]'"):
        plot.plot_schedule(OneCycle(0.1, 10))
    argv = "plot onecycle --max-learning-rate 0.1 --total-steps 10 -o".split()
    assert _run([*argv, str(tmp_path / "x.png")]) == 1
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_every_schedule_has_a_subcommand(capsys):
    for cli_name, class_name in plot.SCHEDULES.items():
        for name in (cli_name, class_name):
            with pytest.raises(SystemExit) as exc:  # --help works and exits 0
                _run(["plot", name, "--help"])
            assert exc.value.code == 0, name
    assert "usage: tfkit plot onecycle" in capsys.readouterr().out


def test_default_length_covers_the_whole_shape():
    from tfkit.schedules import CosineDecay, CosineDecayRestarts, Cyclic, MultiStepDecay

    assert plot.default_steps(OneCycle(0.1, 500)) == 500
    assert plot.default_steps(CosineDecay(0.1, 1000, warmup_target=0.2, warmup_steps=100)) == 1201
    assert plot.default_steps(Warmup(CosineDecay(0.1, 1000), 100)) == 1201
    assert plot.default_steps(CosineDecayRestarts(0.1, 100, t_mul=2.0)) == 700
    assert plot.default_steps(Cyclic(0.1, 1.0, step_size=10, step_size_down=20)) == 120
    assert plot.default_steps(MultiStepDecay(0.1, [100, 300])) == 391


def test_through_tfkit_cli_once_registered(monkeypatch, tmp_path, capsys):
    from tfkit import cli

    assert "tfkit.plot" in cli._COMMAND_MODULES
    out = tmp_path / "c.png"
    assert (
        cli.main(
            [
                "plot",
                "cyclic",
                "--initial-learning-rate",
                "0.001",
                "--maximal-learning-rate",
                "0.01",
                "--step-size",
                "5",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert out.exists()
    with pytest.raises(SystemExit) as exc:  # a bad value: ValueError -> exit 2, argument named
        cli.main(
            [
                "plot",
                "cyclic",
                "--initial-learning-rate",
                "0.001",
                "--maximal-learning-rate",
                "0.01",
                "--step-size",
                "0",
            ]
        )
    assert exc.value.code == 2
    assert "step_size" in capsys.readouterr().err


def test_every_public_schedule_is_drawable_from_the_cli():
    import tfkit.schedules

    public = {n for n in tfkit.schedules.__all__ if isinstance(getattr(tfkit.schedules, n), type)}
    # OneCycleMomentum is drawn with OneCycle; composites are read from JSON.
    assert public - set(plot.SCHEDULES.values()) == {"OneCycleMomentum", *plot.COMPOSITE}


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


def test_cli_draws_a_serialized_composite_with_log_scale(tmp_path, capsys):
    import json

    import keras

    from tfkit.schedules import get_scheduler

    s = get_scheduler("cosine_with_restarts", 0.1, 10, 100, num_cycles=3)
    path = tmp_path / "hf.json"
    path.write_text(json.dumps(keras.saving.serialize_keras_object(s)))
    out = tmp_path / "hf.png"
    assert _run(["plot", str(path), "--log-scale", "--steps", "120", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = plot.schedule_parser(str(path)).parse_args(["--log-scale"])
    assert args.log_scale is True and args.output is None
    assert plot.build_schedule(args).get_config() == s.get_config()


def test_cli_new_schedules_and_bad_files(tmp_path, capsys):
    args = plot.schedule_parser("warmup-stable-decay").parse_args(
        "--learning-rate 0.1 --warmup-steps 10 --stable-steps 50 --decay-steps 20 "
        "--decay-type 1-sqrt --log-scale".split()
    )
    s = plot.build_schedule(args)
    assert type(s).__name__ == "WarmupStableDecay" and s.decay_type == "1-sqrt"
    assert plot.default_steps(s) == 89
    bad = tmp_path / "bad.json"
    bad.write_text('{"class_name": "NoSuchSchedule", "config": {}}')
    with pytest.raises(SystemExit) as exc:
        plot.main([str(bad)])
    assert exc.value.code == 2 and "bad.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _run(["plot", "Join"])
    assert exc.value.code == 2 and "JSON" in capsys.readouterr().err
    with pytest.raises(TypeError, match="log_scale"):
        plot.plot_schedule(OneCycle(0.1, 10), log_scale="yes")


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
