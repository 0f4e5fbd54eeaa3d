"""Copies of a model's variables kept on the device (or on disk) for later restore.

Private to ``tfkit.callbacks``. Keras' ``EarlyStopping`` calls
``model.get_weights()`` at every improvement, which copies every weight to host
memory as NumPy arrays. Here a snapshot is a list of ``tf.Variable`` mirrors
created once, on the variables' own devices (under the model's distribution
strategy), and refreshed with ``assign``: a device-to-device copy, no host
transfer. For models that do not fit twice in device memory, ``storage="disk"``
writes ``model.save_weights`` files instead: each snapshot goes to a temporary
file next to the target, is fsynced and replaces the previous one with one
atomic ``os.replace`` (a kill mid-write never leaves a half-written snapshot in
its place), and ``release()`` deletes it (and the temporary directory tfkit
created for it) when training ends.
"""

from __future__ import annotations

import os
import tempfile

import tensorflow as tf

from tfkit.callbacks import _atomic

STORAGES = ("device", "disk")


def _strategy_scope(model):
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy.scope()


class DeviceSnapshot(tf.Module):
    """Device-resident copy of ``variables``; a tf.Module so checkpoints include it."""

    def __init__(self, name: str = "snapshot"):
        super().__init__(name=name)
        self.copies = []
        self.taken = tf.Variable(0, dtype=tf.int64, trainable=False, name="taken")
        self._sources = None
        self._copy_fn = None
        self._restore_fn = None

    def bind(self, variables, model=None) -> None:
        """Attach to ``variables`` (Keras variables), creating mirrors on first use.

        Mirrors are created under ``model``'s distribution strategy, so they live
        where the variables live (mirrored across replicas under MirroredStrategy).
        """
        variables = list(variables)
        if self._sources is not None and len(self._sources) == len(variables) and all(
            a is b for a, b in zip(self._sources, variables, strict=True)
        ):
            return
        self._sources = variables
        if len(self.copies) != len(variables) or any(
            tuple(c.shape) != tuple(v.shape) or c.dtype != tf.as_dtype(v.dtype)
            for c, v in zip(self.copies, variables, strict=True)
        ):
            # Appended one by one to the tracked list, so values waiting in a
            # checkpoint restored before this point (deferred restoration) land here.
            del self.copies[:]
            with _strategy_scope(model):
                for i, v in enumerate(variables):
                    self.copies.append(tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=f"copy_{i}"))
        sources = variables
        copies = list(self.copies)

        # One graph for all assigns instead of one eager dispatch per variable.
        @tf.function(autograph=False)
        def copy():
            for c, s in zip(copies, sources, strict=True):
                c.assign(s.value)

        @tf.function(autograph=False)
        def restore():
            for c, s in zip(copies, sources, strict=True):
                s.assign(c.read_value())

        self._copy_fn, self._restore_fn = copy, restore

    def take(self) -> None:
        self._copy_fn()
        self.taken.assign(1)

    def restore(self) -> bool:
        if not int(self.taken.numpy()):
            return False
        self._restore_fn()
        return True

    def clear(self) -> None:
        self.taken.assign(0)

    def release(self) -> None:
        """Nothing to free on disk; the mirrors are reused by the next fit."""


class DiskSnapshot:
    """Snapshot written with ``model.save_weights`` (for models too large to hold twice)."""

    def __init__(self, path: str | os.PathLike | None = None):
        if path is not None and (
            not isinstance(path, str | os.PathLike) or not os.fspath(path).endswith(".weights.h5")
        ):
            raise ValueError(f"`snapshot_path` must end with '.weights.h5'; received snapshot_path={path!r}.")
        self.requested_path = None if path is None else os.fspath(path)
        self.path = self.requested_path
        self._owned_dir = None  # a temporary directory created here, removed by release()
        self._model = None

    def bind_model(self, model) -> None:
        self._model = model
        if self.path is None:
            self._owned_dir = tempfile.mkdtemp(prefix="tfkit_snapshot_")
            self.path = os.path.join(self._owned_dir, "best.weights.h5")

    def take(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".tmp-", suffix=".weights.h5", dir=directory)
        os.close(fd)
        try:
            self._model.save_weights(temp, overwrite=True)
            _atomic.fsync_path(temp)
            os.replace(temp, self.path)
            _atomic.fsync_path(directory)
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def restore(self) -> bool:
        if not os.path.exists(self.path):
            return False
        self._model.load_weights(self.path)
        return True

    def clear(self) -> None:
        if self.path and os.path.exists(self.path):
            os.remove(self.path)

    def release(self) -> None:
        """Delete the snapshot file, and the temporary directory if tfkit created it."""
        self.clear()
        if self._owned_dir is not None:
            _atomic.remove_tree(self._owned_dir)
            self._owned_dir = None
            self.path = self.requested_path
