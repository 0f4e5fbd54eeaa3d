"""The ``tfkit`` command: fast and quiet start, one-line user errors, subcommand registry."""

import os
import subprocess
import sys

import pytest

from tfkit import __version__
from tfkit.cli import command_modules, main
from tfkit.cli.info import precision_support
from tfkit.devices import DeviceDescription


def _tfkit(args, root, env=None, timeout=300):
    """Run ``python -m tfkit ARGS`` in a fresh interpreter (nothing imported yet)."""
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=root,
        env=full_env,
        timeout=timeout,
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tfkit {__version__}"


def test_info_reports_versions_devices_xla(capsys):
    import keras
    import tensorflow as tf

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"tensorflow  {tf.__version__}" in out
    assert f"keras       {keras.__version__}" in out
    assert "CPU:0" in out
    assert "xla         usable" in out
    assert "mixed_float16" in out and "mixed_bfloat16" in out
    assert "auto policy     float32" in out  # no GPU here


@pytest.mark.parametrize("argv", [["frobnicate"], ["info", "--bogus"], []])
def test_usage_errors_exit_2_on_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tfkit") and ": error: " in err, err


def test_python_dash_m(root):
    out = _tfkit(["-m", "tfkit", "--version"], root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"tfkit {__version__}"


def _imported_modules(importtime_stderr: str) -> set[str]:
    # -X importtime lines: "import time: self | cumulative | module" (module indented).
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_help_version_and_every_subcommand_help_import_no_tensorflow(root):
    commands = [
        ["--help"],
        ["--version"],
        *([name, "--help"] for name in ("info", "plot", "lr-find")),
    ]
    assert {m.rsplit(".", 1)[-1] for m in command_modules()} >= {"info", "plot", "lr_find"}
    for args in commands:
        out = _tfkit(["-X", "importtime", "-m", "tfkit", *args], root)
        assert out.returncode == 0, (args, out.stderr[-2000:])
        modules = _imported_modules(out.stderr)
        assert "tfkit.cli" in modules, args  # the probe itself works
        heavy = sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not heavy, (args, heavy[:5])


def test_every_registered_subcommand_help_imports_no_tensorflow(root):
    """Subcommands added later (tfkit.doctor, ...) are held to the same rule."""
    import argparse

    from tfkit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        out = _tfkit(["-X", "importtime", "-m", "tfkit", name, "--help"], root)
        assert out.returncode == 0, (name, out.stderr[-2000:])
        modules = _imported_modules(out.stderr)
        assert not any(m.split(".")[0] == "tensorflow" for m in modules), name


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["plot", "onecycle", "--max-learning-rate", "abc", "--total-steps", "10"],
            "argument --max-learning-rate: invalid number value: 'abc'",
        ),
        (
            [
                "plot",
                "onecycle",
                "--max-learning-rate",
                "0.1",
                "--total-steps",
                "10",
                "-o",
                "/missing/dir/x.png",
            ],
            "directory /missing/dir does not exist",
        ),
        (
            [
                "plot",
                "onecycle",
                "--max-learning-rate",
                "0.1",
                "--total-steps",
                "10",
                "--pct-start",
                "1.5",
            ],
            "pct_start",
        ),
        (["lr-find", "--max-lr", "abc"], "argument --max-lr: invalid float value: 'abc'"),
        (["lr-find", "--min-lr", "1", "--max-lr", "0.1", "--quiet"], "min_lr"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_user_errors_are_one_line_exit_2_without_traceback(args, expected, root):
    out = _tfkit(["-m", "tfkit", *args], root)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr[-2000:]  # no traceback, no TensorFlow start-up log
    assert lines[0].startswith("tfkit") and ": error: " in lines[0] and expected in lines[0]
    assert "_number" not in lines[0]


def test_verbose_lets_tensorflow_log_through(root):
    # -v only stops tfkit from filtering; TensorFlow >= 2.17 logs its start-up
    # on CPU (oneDNN, CUDA probing), older versions may log nothing.
    quiet = _tfkit(
        [
            "-m",
            "tfkit",
            "plot",
            "onecycle",
            "--max-learning-rate",
            "0.1",
            "--total-steps",
            "10",
            "--pct-start",
            "1.5",
        ],
        root,
    )
    loud = _tfkit(
        [
            "-m",
            "tfkit",
            "-v",
            "plot",
            "onecycle",
            "--max-learning-rate",
            "0.1",
            "--total-steps",
            "10",
            "--pct-start",
            "1.5",
        ],
        root,
    )
    assert quiet.returncode == loud.returncode == 2
    assert len(quiet.stderr.splitlines()) == 1
    assert loud.stderr.splitlines()[-1] == quiet.stderr.splitlines()[0]
    assert len(loud.stderr.splitlines()) >= 1


@pytest.mark.parametrize(
    "cc, f16, bf16",
    [((8, 0), "fast", "fast"), ((7, 5), "fast", "runs"), ((6, 1), "runs", "runs")],
)
def test_precision_support_for_injected_gpus(cc, f16, bf16):
    gpu = DeviceDescription("GPU:0", "GPU", "Some GPU", cc)
    verdict = precision_support([DeviceDescription("CPU:0", "CPU"), gpu])
    assert verdict["mixed_float16"].startswith(f16)
    assert verdict["mixed_bfloat16"].startswith(bf16)


def test_precision_support_cpu_only():
    verdict = precision_support([DeviceDescription("CPU:0", "CPU")])
    assert "no GPU" in verdict["mixed_float16"]
