"""The `make demo` job: every tfkit piece in one model.fit, >= 97% on held-out digits."""

import csv
import os
import subprocess
import sys

import pytest
import quickstart


def test_quickstart_reaches_97_percent_and_writes_outputs(tmp_path):
    summary = quickstart.main(["--quiet", "--output-dir", str(tmp_path)])
    assert summary["test_accuracy"] >= 0.97
    assert summary["effective_batch"] == 64
    assert summary["precision"] == "float32"  # "auto" on a machine without a GPU
    # Imported into this test process the BFC allocator is off: said, not faked.
    assert summary["peak_memory_mib"] is None
    with open(summary["history_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["epochs"]
    # The logger's columns reach CSVLogger: the rate and momentum actually used.
    assert {"loss", "val_loss", "learning_rate", "momentum", "micro_step"} <= set(rows[0])
    assert float(rows[0]["momentum"]) > float(rows[len(rows) // 4]["momentum"])  # cycled down
    for path in summary["plots"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [(["--micro-batch", "0"], "--micro-batch"), (["--precision", "fp8"], "--precision")],
)
def test_quickstart_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        quickstart.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_program_reports_peak_memory(tmp_path, root):
    """As `make demo` runs it: a program that turns on the BFC allocator itself."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    out = subprocess.run(
        [sys.executable, "examples/quickstart.py", "--quiet", "--epochs", "2",
         "--output-dir", str(tmp_path)],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("peak memory"))
    assert float(line.split()[2]) > 0.1, line  # MiB
