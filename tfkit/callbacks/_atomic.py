"""Crash-safe file writing for backups and snapshots: fsync, checksums, atomic commit.

Private to ``tfkit.callbacks``. A writer puts every file of a backup into a
fresh temporary directory, fsyncs each file and the directory, writes a
manifest (size and SHA-256 of every file) last, and commits with one
``os.rename`` of the directory: a reader sees either the whole backup or none
of it, whatever instant a ``SIGKILL`` hits. A half-written temporary
directory has no committed name and is removed by the next writer.

Fault injection for the kill-anywhere tests: ``_TFKIT_BACKUP_FAULT=N:STAGE``
makes the process SIGKILL itself during its N-th backup (counted from 1 in
this process) at ``STAGE``: a file name (killed after writing half of that
file), ``"manifest"``, ``"commit"`` (before the rename) or ``"cleanup"``
(after the rename, before older backups are removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile

MANIFEST = "manifest.json"
FORMAT = "tfkit-backup-1"
_FAULT_ENV = "_TFKIT_BACKUP_FAULT"


class Fault:
    """Reads ``_TFKIT_BACKUP_FAULT`` once; ``hit(stage)`` kills the process at that stage."""

    def __init__(self):
        spec = os.environ.get(_FAULT_ENV, "")
        self.target, self.stage = 0, None
        if spec:
            count, _, stage = spec.partition(":")
            self.target, self.stage = int(count), stage
        self.current = 0

    def next_save(self) -> None:
        self.current += 1

    def armed(self, stage: str) -> bool:
        return self.stage == stage and self.current == self.target

    def hit(self, stage: str) -> None:
        if self.armed(stage):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: str) -> None:
    """Flush a file or a directory entry to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes, fault: Fault | None = None) -> None:
    with open(path, "wb") as f:
        if fault is not None and fault.armed(os.path.basename(path)):
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            fault.hit(os.path.basename(path))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_temp_dir(parent: str, prefix: str) -> str:
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def write_manifest(directory: str, fault: Fault | None = None) -> None:
    """Fsync every file in ``directory``, then record its size and checksum in the manifest."""
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        fsync_path(path)
        files[name] = {"size": os.path.getsize(path), "sha256": sha256(path)}
    data = json.dumps({"format": FORMAT, "files": files}, sort_keys=True).encode()
    write_bytes(os.path.join(directory, MANIFEST), data, fault)
    fsync_path(directory)


def commit(temp_dir: str, final_dir: str) -> None:
    """Atomically give ``temp_dir`` its final name (which must not exist yet)."""
    os.rename(temp_dir, final_dir)
    fsync_path(os.path.dirname(os.path.abspath(final_dir)))


def verify(directory: str) -> str | None:
    """``None`` if the manifest of ``directory`` matches its files, else the first problem found."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != FORMAT or not isinstance(files, dict):
        return f"manifest is not in format {FORMAT!r}"
    present = set(os.listdir(directory)) - {MANIFEST}
    if present != set(files):
        return f"files {sorted(present)} do not match the manifest's {sorted(files)}"
    for name, entry in files.items():
        file_path = os.path.join(directory, name)
        if not isinstance(entry, dict) or os.path.getsize(file_path) != entry.get("size"):
            return f"{name}: size {os.path.getsize(file_path)} differs from the manifest's"
        if sha256(file_path) != entry.get("sha256"):
            return f"{name}: checksum differs from the manifest's"
    return None


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
