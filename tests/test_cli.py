import subprocess
import sys

import pytest

from tfkit import __version__
from tfkit.cli import main
from tfkit.cli_info import precision_support
from tfkit.devices import DeviceDescription


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
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: tfkit" in capsys.readouterr().err


def test_python_dash_m(root):
    out = subprocess.run(
        [sys.executable, "-m", "tfkit", "--version"], capture_output=True, text=True, cwd=root
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"tfkit {__version__}"


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
