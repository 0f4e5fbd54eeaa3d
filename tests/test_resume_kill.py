"""Kill-anywhere harness: SIGKILL a training run at seeded random instants, resume, compare.

Every scenario kills tests/resume_worker.py (a recipe with every stateful tfkit
piece) one or more times, resumes it until it completes, and requires the
final weights to equal an uninterrupted run's to 1e-6. Kinds of scenario:

* ``batch``: killed after a random number of batches;
* ``save``: killed inside its N-th backup at a chosen stage: half-way through
  writing one of the backup's files, before the manifest, before the commit
  rename, or after it (``_TFKIT_BACKUP_FAULT``, see tfkit/callbacks/_atomic.py);
* ``time``: killed after a random wall-clock delay with a backup at every batch,
  so the kill often lands inside a save;
* ``twice``: two kills in a row (the second in the resumed run), mixing the above;
* ``corrupt``: killed, then the newest backup is damaged (a flipped byte, a
  truncated or missing file, out-of-range progress); the resume must report it
  and resume exactly from the previous one.

The default suite runs two scenarios; ``TFKIT_FULL=1`` runs 60.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FULL, ROOT

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
TOTAL_BATCHES = 48  # 4 epochs of 12
STAGES = (
    "model.npz",
    "metrics.npz",
    "optimizer.npz",
    "callbacks",
    "progress.json",
    "manifest.json",
    "commit",
    "cleanup",
)
DAMAGES = ("flip_model", "truncate_progress", "drop_manifest", "bad_batches", "flip_optimizer")


def _scenarios(count: int, seed: int = 2026) -> list[tuple]:
    rng = np.random.default_rng(seed)
    kinds = ("batch", "save", "time", "twice", "corrupt")
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "batch":
            kills = [("batch", int(rng.integers(1, TOTAL_BATCHES + 1)))]
        elif kind == "save":
            kills = [
                ("save", f"{int(rng.integers(1, 10))}:{STAGES[int(rng.integers(len(STAGES)))]}")
            ]
        elif kind == "time":
            kills = [("time", float(rng.uniform(0.0, 1.0)))]
        elif kind == "twice":
            first, second = rng.choice(["batch", "save", "time"], size=2)
            kills = []
            for k in (first, second):
                if k == "batch":
                    kills.append(("batch", int(rng.integers(1, TOTAL_BATCHES + 1))))
                elif k == "save":
                    kills.append(
                        (
                            "save",
                            f"{int(rng.integers(1, 5))}:{STAGES[int(rng.integers(len(STAGES)))]}",
                        )
                    )
                else:
                    kills.append(("time", float(rng.uniform(0.0, 1.0))))
        else:
            kills = [
                ("batch", int(rng.integers(12, TOTAL_BATCHES + 1))),
                ("damage", DAMAGES[int(rng.integers(len(DAMAGES)))]),
            ]
        out.append((f"{i:02d}-{kind}", kills))
    return out


# Two in CI: a kill half-way through writing a file of a backup, and two
# kills in a row within one epoch, with a backup written in between by the
# resumed run (Keras' callback records epoch 0 for it: 20 updates, not 16).
CI_SCENARIOS = [
    ("ci-save", [("save", "4:optimizer.npz")]),
    ("ci-twice", [("batch", 29), ("batch", 8)]),
]
SCENARIOS = _scenarios(60) if FULL else CI_SCENARIOS


def _env(root, fault=None):
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("_TFKIT_BACKUP_FAULT", None)
    if fault:
        env["_TFKIT_BACKUP_FAULT"] = fault
    return env


def _run(root, backup, out, *args, fault=None, kill_after=None, timeout=300):
    """Run the worker; with ``kill_after`` (seconds after training starts) SIGKILL it then."""
    cmd = [sys.executable, WORKER, str(backup), str(out), *map(str, args)]
    with open(str(out) + ".stderr", "w") as err:
        proc = subprocess.Popen(
            cmd, env=_env(root, fault), cwd=root, stdout=subprocess.PIPE, stderr=err, text=True
        )
        if kill_after is not None:
            for line in proc.stdout:
                if line.startswith("TRAINING"):
                    break
            time.sleep(kill_after)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=timeout)
    return proc.returncode


def _weights(path):
    with np.load(path) as f:
        keys = sorted((k for k in f.files if k.startswith("arr_")), key=lambda k: int(k[4:]))
        return [f[k] for k in keys], {k: f[k].item() for k in ("updates", "damaged")}


def _newest_backup(backup):
    names = sorted(n for n in os.listdir(backup) if n.startswith("backup-"))
    return os.path.join(backup, names[-1])


def _damage(backup, how):
    path = _newest_backup(backup)
    if how in ("flip_model", "flip_optimizer"):
        target = os.path.join(path, "model.npz" if how == "flip_model" else "optimizer.npz")
        with open(target, "r+b") as f:
            f.seek(os.path.getsize(target) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncate_progress":
        target = os.path.join(path, "progress.json")
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    elif how == "drop_manifest":
        os.remove(os.path.join(path, "manifest.json"))
    elif how == "bad_batches":
        # Out-of-range progress with a manifest rewritten to match: only the
        # content validation can catch it.
        from tfkit.callbacks import _atomic

        target = os.path.join(path, "progress.json")
        with open(target) as f:
            progress = json.load(f)
        progress["batches_done"] = -3
        with open(target, "w") as f:
            json.dump(progress, f)
        os.remove(os.path.join(path, "manifest.json"))
        _atomic.write_manifest(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    start = time.monotonic()
    assert _run(ROOT, tmp / "backup", tmp / "ref.npz") == 0, (tmp / "ref.npz.stderr").read_text()[
        -3000:
    ]
    return _weights(tmp / "ref.npz"), time.monotonic() - start


@pytest.mark.parametrize(("label", "kills"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_killed_runs_resume_exactly(tmp_path, root, reference, label, kills):
    (expected, ref_info), ref_seconds = reference
    backup, out = tmp_path / "backup", tmp_path / "out.npz"
    save_freq = "1" if any(kind == "time" for kind, _ in kills) else "5"
    args = ["--save-freq", save_freq, "--double-checkpoint"]
    damaged = 0
    for kind, value in kills:
        if kind == "damage":
            if any(n.startswith("backup-") for n in os.listdir(backup)):
                _damage(backup, value)
                damaged = 1
            continue
        if kind == "batch":
            code = _run(root, backup, out, *args, "--kill-at-batch", value)
        elif kind == "save":
            code = _run(root, backup, out, *args, fault=value)
        else:  # a fraction of the uninterrupted run's time (import time excluded roughly)
            code = _run(root, backup, out, *args, kill_after=value * ref_seconds * 0.6)
        assert code in (0, -signal.SIGKILL), (
            str(out) + ".stderr",
            open(str(out) + ".stderr").read()[-3000:],
        )
        if code == 0:
            out.unlink()  # finished before the kill: the next run starts afresh, still exact
    assert _run(root, backup, out, *args) == 0, open(str(out) + ".stderr").read()[-3000:]
    got, info = _weights(out)
    assert info["updates"] == ref_info["updates"] == 16
    assert info["damaged"] == damaged
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert not backup.exists()  # deleted after the completed run, temp dirs included
    report = os.environ.get("TFKIT_KILL_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(
                json.dumps({"scenario": label, "kills": kills, "damaged_detected": info["damaged"]})
                + "\n"
            )
