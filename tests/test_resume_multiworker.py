"""Two-process MultiWorkerMirroredStrategy: kill one worker mid-epoch, restart both, resume exactly.

Only the chief writes backups (``strategy.extended.should_checkpoint``); both
workers verify and load the same one. The distributed iterator cannot be
checkpointed by TensorFlow, so ``backup.iterator`` positions it by replaying
the batches already trained (the pipeline is seeded, so that is exact).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import FULL
from multiworker import free_ports, run_workers

HERE = pathlib.Path(__file__).resolve().parent
WORKER = str(HERE / "mw_worker_resume.py")


def _launch(root, args_for):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
        )  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, WORKER, *args_for(index)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )  # fmt: skip
    return procs


def _weights(path):
    with np.load(path) as f:
        keys = sorted((k for k in f.files if k.startswith("arr_")), key=lambda k: int(k[4:]))
        return [f[k] for k in keys], {k: int(f[k]) for k in ("updates", "resumed", "chief")}


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="three 2-process runs (~3 min): TFKIT_FULL=1")
def test_killed_worker_then_both_restarted_resume_exactly(tmp_path, root):
    run_workers(WORKER, lambda i: [str(tmp_path / "ref_backup"), str(tmp_path / f"ref{i}.npz")],
                root=root, timeout=300)  # fmt: skip
    backup = tmp_path / "backup"
    # Worker 1 SIGKILLs itself after 10 batches (epoch 1, batch 4; last backup at 9);
    # worker 0 then waits on a collective forever: killed too.
    procs = _launch(root, lambda i: [str(backup), str(tmp_path / f"w{i}.npz"), "10" if i else "0"])
    try:
        out1 = procs[1].communicate(timeout=300)[0].decode(errors="replace")
        assert procs[1].returncode == -signal.SIGKILL, out1[-3000:]
    finally:
        procs[0].kill()
        procs[0].communicate()
    assert [n for n in os.listdir(backup) if n.startswith("backup-")]
    run_workers(WORKER, lambda i: [str(backup), str(tmp_path / f"w{i}.npz")], root=root,
                timeout=300)  # fmt: skip
    for i in range(2):
        expected, ref = _weights(tmp_path / f"ref{i}.npz")
        got, info = _weights(tmp_path / f"w{i}.npz")
        assert info["resumed"] == 9  # both workers loaded the chief's last backup
        assert info["chief"] == int(i == 0)
        assert info["updates"] == ref["updates"] == 9
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert not backup.exists()
