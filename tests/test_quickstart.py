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
    # Imported into this test process the BFC allocator is off: said, not faked
    # (TensorFlow 2.16 reports CPU memory without it).
    assert summary["peak_memory_mib"] is None or summary["peak_memory_mib"] > 0
    assert 0 <= summary["best_epoch"] < summary["epochs"]
    with open(summary["history_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["epochs"]
    # The logger's columns reach CSVLogger: the rate and momentum actually used.
    assert {"loss", "val_loss", "learning_rate", "momentum"} <= set(rows[0])
    assert "micro_step" not in rows[0]  # accumulator counters are opt-in (off the progress bar)
    assert float(rows[0]["momentum"]) > float(rows[len(rows) // 4]["momentum"])  # cycled down
    for path in summary["plots"]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_figures_cover_the_updates_that_ran_and_mark_the_best_epoch():
    import tfkit

    schedule = tfkit.schedules.OneCycle(0.05, total_steps=600)
    history = {"loss": [2.0, 0.5, 0.02, 0.01], "val_loss": [2.1, 0.6, 0.05, 0.06]}
    figs = quickstart.figures(
        history, schedule, updates=445, planned=600, best_epoch=2, best_update=300
    )
    lr_ax = figs["learning_rate"].axes[0]
    curve, best_line = lr_ax.lines
    assert len(curve.get_xdata()) == 445 and curve.get_xdata()[-1] == 444
    assert list(best_line.get_xdata()) == [300, 300] and "best epoch 3" in best_line.get_label()
    # 445 of 600 updates: 0.05/25 .. 0.05 .. ~0.006, one decade and a half: linear.
    assert lr_ax.get_yscale() == "linear"
    full = quickstart.figures(history, schedule, 600, 600, 2, 300)["learning_rate"].axes[0]
    assert full.get_yscale() == "log"  # the whole cycle ends at 0.05/25e4
    assert "445 of 600" in lr_ax.get_title()
    assert figs["momentum"].axes[0].get_yscale() == "linear"  # 0.85 .. 0.95
    loss_ax = figs["loss"].axes[0]
    assert loss_ax.get_yscale() == "log"
    assert list(loss_ax.lines[-1].get_xdata()) == [3, 3]  # epochs are numbered from 1
    import matplotlib.pyplot as plt

    plt.close("all")


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
        [
            sys.executable,
            "examples/quickstart.py",
            "--quiet",
            "--epochs",
            "2",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("peak memory"))
    assert float(line.split()[2]) > 0.1, line  # MiB
