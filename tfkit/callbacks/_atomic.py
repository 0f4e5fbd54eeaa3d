"""Crash-safe file writing for backups and snapshots: fsync, checksums, atomic commit.

Private to ``tfkit.callbacks``. A writer puts every file of a backup into a
fresh temporary directory, fsyncs each file and the directory, writes a
manifest (size and SHA-256 of every file) last, and commits with one
``os.rename`` of the directory: a reader sees either the whole backup or none
of it, whatever instant a ``SIGKILL`` hits. A half-written temporary
directory has no committed name and is removed by the next writer.

Fault injection: every stage of a write calls ``fault.at(stage)`` on a
:class:`Fault` (a no-op here). The kill-anywhere tests pass their own subclass
to the writer (``BackupAndRestore._fault``); library code never reads the
environment for it. Stages: a file name (called after half of that file is
written and fsynced), ``"manifest"``, ``"commit"`` (before the rename) and
``"cleanup"`` (after it, before older backups are removed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

MANIFEST = "manifest.json"
FORMAT = "tfkit-backup-1"


class Fault:
    """No fault: the hook the writer calls at every stage of a backup.

    ``save`` is the number of the backup being written in this process
    (counted from 1 by the writer); tests override :meth:`at` to kill, raise or
    interrupt at one ``(save, stage)``.
    """

    save = 0

    def next_save(self) -> None:
        self.save += 1

    def at(self, stage: str) -> None:
        """Called at ``stage`` of backup number ``self.save``; does nothing here."""


def fsync_path(path: str) -> None:
    """Flush a file or a directory entry to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes, fault: Fault | None = None) -> None:
    # Two halves, so that a fault hook can stop the write half-way through.
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        if fault is not None:
            f.flush()
            os.fsync(f.fileno())
            fault.at(os.path.basename(path))
        f.write(data[len(data) // 2 :])
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
    if fault is not None:
        fault.at("manifest")


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
