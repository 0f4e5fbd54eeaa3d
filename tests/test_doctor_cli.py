"""``tfkit doctor`` end to end: the quickstart model, a saved model with data, usage errors."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfkit.cli import main

pytest.importorskip("sklearn")  # the quickstart data (extra "examples")


def test_quickstart_is_healthy_and_writes_markdown_and_plots(tmp_path, capsys):
    code = main(
        [
            "doctor",
            "--time-budget",
            "10",
            "--markdown",
            str(tmp_path / "r.md"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("tfkit doctor: 0 error(s), 0 warning(s) from 10 check(s)")
    assert "[overfit_batch]" in out and "memorised" in out
    assert (tmp_path / "r.md").read_text().startswith("# tfkit doctor report")
    assert sorted(os.listdir(tmp_path / "plots")) == ["activations.png", "gradient_flow.png"]


def _save_broken(tmp_path):
    """A softmax output compiled with from_logits=True, saved with its data."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="probs")]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 3, size=64).astype("int32")
    model.optimizer.build(model.trainable_variables)  # saved with its (empty) slots
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path / "m.keras", tmp_path / "d.npz"


def test_saved_model_with_npz_in_a_subprocess(tmp_path, root):
    model, data = _save_broken(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfkit",
            "doctor",
            "--model",
            str(model),
            "--data",
            str(data),
            "--checks",
            "initial_loss,nonfinite",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "ERROR   [initial_loss] (probs)" in out.stdout
    assert "from_logits" in out.stdout


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "m.keras"], "--model and --data go together"),
        (["--model", "{tmp}/missing.keras", "--data", "{tmp}/d.npz"], "no such file"),
        (["--model", "{tmp}/m.keras", "--data", "{tmp}/bad.npz"], "lacks array(s) ['y']"),
        (
            ["--model", "{tmp}/m.keras", "--data", "{tmp}/d.npz", "--checks", "bogus"],
            "unknown check",
        ),
        (["--time-budget", "-1"], "time_budget"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, match, tmp_path, capsys):
    _save_broken(tmp_path)
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 4)))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(["doctor", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tfkit doctor: error:"), err
    assert match in err


def test_help_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "doctor" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--help"])
    assert exc.value.code == 0
    assert "initial_loss" in capsys.readouterr().out


def test_check_ids_in_help_match_the_api():
    from tfkit import doctor
    from tfkit.cli import doctor as cli

    assert cli.ALL_CHECKS is doctor.ALL_CHECKS
