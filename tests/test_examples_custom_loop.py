"""examples/custom_loop.py: every tfkit piece by hand, callbacks through CallbackList."""

import os
import signal
import subprocess
import sys

import custom_loop
import pytest
from conftest import FULL


def test_custom_loop_example_trains_with_one_trace():
    out = custom_loop.main(["--epochs", "4"])
    assert out["trace_count"] == 1
    assert out["test_accuracy"] >= 0.9
    first, last = out["history"][0], out["history"][-1]
    assert last["loss"] < first["loss"]
    # The logger's values reach the loop's logs: rate and momentum actually used.
    assert {"learning_rate", "momentum", "val_loss"} <= set(last)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="two example runs in subprocesses: TFKIT_FULL=1")
def test_custom_loop_example_resumes_after_sigterm(tmp_path, root):
    """SIGTERM mid-run: a backup at the next batch, a clean exit; the re-run continues there."""
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, str(root / "examples" / "custom_loop.py"), "--epochs", "3",
           "--backup-dir", str(tmp_path / "backup")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=root / "examples", stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch  1"):
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0
    assert "test accuracy" not in out  # it stopped before the end
    assert any(n.startswith("backup-") for n in os.listdir(tmp_path / "backup"))
    again = subprocess.run(cmd, env=env, cwd=root / "examples", capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed at epoch 2, batch" in again.stdout
    assert "test accuracy" in again.stdout
    assert not (tmp_path / "backup").exists()  # deleted once the run completed
