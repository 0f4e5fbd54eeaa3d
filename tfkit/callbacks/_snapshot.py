"""Copies of a model's variables kept on the device (or on disk) for later restore.

Private to ``tfkit.callbacks``. Keras' ``EarlyStopping`` calls
``model.get_weights()`` at every improvement, which copies every weight to host
memory as NumPy arrays. Here a snapshot is a list of ``tf.Variable`` mirrors
created once, on the variables' own devices (under the model's distribution
strategy), and refreshed with ``assign``: a device-to-device copy, no host
transfer. For models that do not fit twice in device memory, ``storage="disk"``
writes ``model.save_weights`` files instead.
"""

from __future__ import annotations

import os
import tempfile

import tensorflow as tf

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


class DiskSnapshot:
    """Snapshot written with ``model.save_weights`` (for models too large to hold twice)."""

    def __init__(self, path: str | None = None):
        if path is not None and not str(path).endswith(".weights.h5"):
            raise ValueError(f"`snapshot_path` must end with '.weights.h5'; received snapshot_path={path!r}.")
        self.path = path
        self._model = None

    def bind_model(self, model) -> None:
        self._model = model
        if self.path is None:
            self.path = os.path.join(tempfile.mkdtemp(prefix="tfkit_snapshot_"), "best.weights.h5")

    def take(self) -> None:
        self._model.save_weights(self.path, overwrite=True)

    def restore(self) -> bool:
        if not os.path.exists(self.path):
            return False
        self._model.load_weights(self.path)
        return True

    def clear(self) -> None:
        if self.path and os.path.exists(self.path):
            os.remove(self.path)
