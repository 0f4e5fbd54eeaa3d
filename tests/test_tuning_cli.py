"""``tfkit lr-find`` (tfkit/cli/lr_find.py) through its own ``register``."""

from __future__ import annotations

import argparse

import pytest

from tfkit.cli import lr_find as cli


def _parser():
    parser = argparse.ArgumentParser(prog="tfkit")
    cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_lr_find_command_prints_both_suggestions_and_writes_png(tmp_path, capsys):
    out_png = tmp_path / "lr.png"
    args = _parser().parse_args(
        ["lr-find", "--steps", "30", "--min-lr", "1e-5", "--output", str(out_png), "--quiet"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "suggested learning rate (steepest): " in out
    assert "suggested learning rate (min_over_10): " in out
    suggestions = [line for line in out.splitlines() if line.startswith("suggested")]
    assert len(suggestions) == 2 and not any(line.endswith(": none") for line in suggestions)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_suggestion_exits_1(tmp_path, capsys):
    args = _parser().parse_args(
        [
            "lr-find",
            "--steps",
            "8",
            "--min-lr",
            "1e3",
            "--max-lr",
            "1e6",
            "--output",
            str(tmp_path / "x.png"),
            "--quiet",
        ]
    )
    assert args.func(args) == 1
    assert "(min_over_10): none" in capsys.readouterr().out


def test_bad_values_raise_value_error(tmp_path):
    # tfkit's main() turns ValueError into a usage error (exit status 2).
    args = _parser().parse_args(["lr-find", "--min-lr", "1", "--max-lr", "0.1", "--quiet"])
    with pytest.raises(ValueError, match="min_lr"):
        args.func(args)


def test_lr_find_and_the_example_share_one_model():
    import quickstart  # examples/ is on sys.path (conftest)

    from tfkit.cli import quickstart_model

    assert quickstart.build_model is quickstart_model.build_model
    model = quickstart_model.build_model(recompute=False)
    assert [type(lay).__name__ for lay in model.layers][-3:] == ["MaxPooling2D", "Flatten", "Dense"]


def test_package_exports():
    import tfkit.tuning as tuning

    assert tuning.lr_find.__module__ == "tfkit.tuning.lr_find"
    assert tuning.find_micro_batch.__module__ == "tfkit.tuning.micro_batch"
    assert tuning.scale_learning_rate(0.1, 1, 2) == pytest.approx(0.2)
