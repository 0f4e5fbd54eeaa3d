"""``tfkit plot`` (tfkit/cli/plot.py): options from the schedule's signature, errors, drawing."""

from __future__ import annotations

import sys

import pytest

from tfkit import plot as draw
from tfkit.cli import ArgumentParser, main, plot
from tfkit.schedules import OneCycle, PiecewiseConstantDecay, Warmup


def _parser():
    parser = ArgumentParser(prog="tfkit")
    plot.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_onecycle_writes_png_with_momentum(tmp_path, capsys):
    out = tmp_path / "onecycle.png"
    argv = ["plot", "onecycle", "--max-learning-rate", "0.1", "--total-steps", "40", "-o", str(out)]
    assert _run(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out


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
def test_bad_options_exit_2_on_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tfkit plot") and ": error: " in err and err.count("\n") == 1, err


def test_bad_values_exit_2_naming_the_argument(capsys):
    from tfkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "plot",
                "onecycle",
                "--max-learning-rate",
                "0.1",
                "--total-steps",
                "10",
                "--pct-start",
                "1.5",
            ]
        )
    assert exc.value.code == 2
    assert "pct_start" in capsys.readouterr().err


def test_missing_matplotlib_exits_1_with_one_line(monkeypatch, tmp_path, capsys):
    from tfkit.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = "plot onecycle --max-learning-rate 0.1 --total-steps 10 -o".split()
    with pytest.raises(SystemExit) as exc:
        main([*argv, str(tmp_path / "x.png")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_every_schedule_has_a_subcommand(capsys):
    for cli_name, class_name in plot.SCHEDULES.items():
        for name in (cli_name, class_name):
            with pytest.raises(SystemExit) as exc:  # --help works and exits 0
                _run(["plot", name, "--help"])
            assert exc.value.code == 0, name
    assert "usage: tfkit plot onecycle" in capsys.readouterr().out


def test_through_tfkit_cli_once_registered(monkeypatch, tmp_path, capsys):
    from tfkit import cli

    assert "tfkit.cli.plot" in cli.COMMAND_MODULES
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
    assert draw.default_steps(s) == 89
    bad = tmp_path / "bad.json"
    bad.write_text('{"class_name": "NoSuchSchedule", "config": {}}')
    with pytest.raises(SystemExit) as exc:
        main(["plot", str(bad)])
    assert exc.value.code == 2 and "bad.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _run(["plot", "Join"])
    assert exc.value.code == 2 and "JSON" in capsys.readouterr().err
    with pytest.raises(TypeError, match="log_scale"):
        draw.plot_schedule(OneCycle(0.1, 10), log_scale="yes")
