"""Crash-safe, verified backups that resume a killed ``model.fit`` exactly."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals, _validation
from tfkit.callbacks import _atomic
from tfkit.optimizers.hyperparameters import install_for, knob_variables

__all__ = ["BackupAndRestore"]

_log = logging.getLogger("tfkit")
_NAME = re.compile(r"^backup-(\d{12})$")
_TEMP_PREFIX = ".tmp-backup-"
_PROGRESS_KEYS = {"epoch", "batches_done", "model", "metrics", "optimizer", "callbacks"}


def _plain(variable):
    """The tf.Variable behind a Keras variable (checkpoints track tf.Variables)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _signature(variables) -> list:
    return [
        [list(map(int, v.shape)), np.dtype(keras.backend.standardize_dtype(v.dtype)).str]
        for v in variables
    ]


def _npz_bytes(variables) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *[keras.ops.convert_to_numpy(_plain(v).read_value()) for v in variables])
    return buffer.getvalue()


class _Damaged(Exception):
    """A backup that must not be loaded; the message says why."""


@keras.saving.register_keras_serializable(package="tfkit")
class BackupAndRestore(keras.callbacks.Callback):
    """Crash-safe, verified backups that resume a killed run exactly, mid-epoch included.

    Keras' ``BackupAndRestore`` writes a weights file and a JSON file one after
    the other, in place. A ``SIGKILL`` between or inside the two writes leaves a
    mixed or truncated backup; a garbled weights file loads without complaint
    (HDF5 keeps no checksum); a resumed run restarts the interrupted epoch at its
    first batch and loses the random-generator and callback state; and a second
    kill within the same epoch of a resumed run records epoch 0. This callback
    owns the whole backup instead:

    * **What is saved.** Every model variable (weights and the random-generator
      state that dropout draws from), the model's metric accumulators, every
      optimizer variable (slots, iteration counters, accumulation windows, loss
      scale, in-graph hyperparameters), the ``state`` of each callback passed in
      ``callbacks`` (tfkit's ``EarlyStopping``, ``ReduceLROnPlateau``), and the
      progress: the epoch and the number of its batches already trained.
    * **How.** Each backup is written into a fresh temporary directory, every file
      and the directory are fsynced, a manifest records each file's size and
      SHA-256, and one atomic ``rename`` commits it as ``backup-<n>``. The previous
      backup is removed only after the new one is committed (with
      ``double_checkpoint=True`` the last two are kept).
    * **Resume.** ``on_train_begin`` takes the newest backup whose manifest
      verifies and whose contents match the model (variable count, shapes and
      dtypes; progress within the run's epochs and steps). A damaged backup is
      reported in one warning line and skipped, never loaded; if backups exist but
      none verifies, a ``RuntimeError`` says so. The epoch restarts at the saved
      batch: batches already trained are drawn from the data iterator without
      training on them, and the metric accumulators are restored, so the epoch's
      logs (and the decisions of callbacks that read them) equal an uninterrupted
      run's.

    The resumed run ends with the same weights as an uninterrupted one provided
    the data order of an epoch does not depend on the process (``shuffle=False``,
    or a ``tf.data`` pipeline whose shuffle is seeded per epoch). Put this
    callback first in ``callbacks``: its ``on_train_begin`` must restore the other
    callbacks' state before they read it.

    Args:
        backup_dir: Directory for the backups (created if missing).
        save_freq: ``"epoch"`` (default) or a number of batches ``>= 1``.
        callbacks: Stateful callbacks (objects with a ``state`` ``tf.Module``)
            whose state is saved and restored with the model. Default ``()``.
        double_checkpoint: Keep the last two backups instead of one. Default False.
        delete_checkpoint: Delete the backups when ``fit`` completes. Default True.

    Example:
        >>> import keras, numpy as np, tempfile, tfkit
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> stop = tfkit.callbacks.EarlyStopping(patience=3)
        >>> backup = tfkit.callbacks.BackupAndRestore(
        ...     tempfile.mkdtemp(), save_freq=2, callbacks=[stop])
        >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=2,
        ...               shuffle=False, callbacks=[backup, stop], verbose=0)
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        callbacks=(),
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        super().__init__()
        owner = "BackupAndRestore"
        if not isinstance(backup_dir, str | os.PathLike) or not os.fspath(backup_dir):
            _validation.fail(owner, "backup_dir", backup_dir, "a non-empty path", TypeError)
        if save_freq != "epoch":
            if isinstance(save_freq, str):
                _validation.fail(owner, "save_freq", save_freq, "'epoch' or an integer >= 1")
            save_freq = _validation.check_int(owner, "save_freq", save_freq, low=1)
        self.double_checkpoint = _validation.check_bool(
            owner, "double_checkpoint", double_checkpoint
        )
        self.delete_checkpoint = _validation.check_bool(
            owner, "delete_checkpoint", delete_checkpoint
        )
        if isinstance(callbacks, str) or not hasattr(callbacks, "__iter__"):
            _validation.fail(owner, "callbacks", callbacks, "a list of callbacks", TypeError)
        callbacks = list(callbacks)
        for i, cb in enumerate(callbacks):
            if not isinstance(getattr(cb, "state", None), tf.Module):
                raise TypeError(
                    f"{owner}: `callbacks[{i}]` must keep its state in a tf.Module `state` "
                    f"attribute (tfkit's EarlyStopping, ReduceLROnPlateau); received "
                    f"{type(cb).__name__}."
                )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.stateful_callbacks = callbacks
        self._fault = _atomic.Fault()
        self._epoch = 0
        self._batches_done = 0
        self._since_save = 0
        self._last_batch = -1
        self._pending_epoch_save = None
        self._resume = None  # (epoch, batches_done, metric arrays) still to apply
        self._skip_remaining = 0
        self._skipped_in_epoch = 0
        self.skipped_batches = 0  # batches skipped on the last resume (for tests and logs)
        self.restored_from = None  # path of the backup the last resume loaded
        self.damaged_backups = []  # (path, reason) of backups skipped on the last resume

    def get_config(self) -> dict:
        """Constructor arguments except ``callbacks`` (live objects, passed again on load)."""
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
        }

    @classmethod
    def from_config(cls, config: dict) -> BackupAndRestore:
        return cls(**config)

    # -- what is saved -------------------------------------------------------
    def _optimizer(self):
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        return optimizer

    def _groups(self) -> dict:
        optimizer = self._optimizer()
        # The control plane's knobs (plateau multiplier, epoch scale, momentum
        # switch) live beside the optimizer's variables, not among them.
        optimizer_variables = (
            list(optimizer.variables) + knob_variables(optimizer) if optimizer is not None else []
        )
        return {
            "model": list(self.model.variables),
            "metrics": list(self.model.metrics_variables),
            "optimizer": optimizer_variables,
        }

    def _callback_checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            **{f"callback_{i}": cb.state for i, cb in enumerate(self.stateful_callbacks)}
        )

    def _backups(self) -> list[tuple[int, str]]:
        """Committed backups, newest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = []
        for name in os.listdir(self.backup_dir):
            match = _NAME.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.backup_dir, name)))
        return sorted(found, reverse=True)

    def _remove_temp_dirs(self) -> None:
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name.startswith(_TEMP_PREFIX):
                    _atomic.remove_tree(os.path.join(self.backup_dir, name))

    def _save(self, epoch: int, batches_done: int) -> None:
        fault = self._fault
        fault.next_save()
        backups = self._backups()
        number = backups[0][0] + 1 if backups else 0
        temp = _atomic.make_temp_dir(self.backup_dir, _TEMP_PREFIX)
        groups = self._groups()
        for key in ("model", "metrics", "optimizer"):
            _atomic.write_bytes(os.path.join(temp, f"{key}.npz"), _npz_bytes(groups[key]), fault)
        if self.stateful_callbacks:
            self._callback_checkpoint().write(os.path.join(temp, "callbacks"))
            fault.hit("callbacks")
        progress = {
            "epoch": int(epoch),
            "batches_done": int(batches_done),
            "callbacks": len(self.stateful_callbacks),
        }
        progress.update({key: _signature(variables) for key, variables in groups.items()})
        _atomic.write_bytes(
            os.path.join(temp, "progress.json"), json.dumps(progress).encode(), fault
        )
        _atomic.write_manifest(temp, fault)
        fault.hit("commit")
        _atomic.commit(temp, os.path.join(self.backup_dir, f"backup-{number:012d}"))
        fault.hit("cleanup")
        # Older backups go only now, after the commit; damaged ones never count
        # as the kept previous backup.
        damaged = {path for path, _ in self.damaged_backups}
        good = [path for _, path in backups if path not in damaged]
        keep = 2 if self.double_checkpoint else 1
        for path in sorted(damaged) + good[keep - 1 :]:
            _atomic.remove_tree(path)

    # -- what is read back ---------------------------------------------------
    def _read(self, path: str, groups: dict) -> tuple[dict, dict]:
        """Validated progress and arrays of the backup at ``path``; raises ``_Damaged``."""
        problem = _atomic.verify(path)
        if problem is not None:
            raise _Damaged(problem)
        try:
            with open(os.path.join(path, "progress.json"), "rb") as f:
                progress = json.loads(f.read().decode())
        except (OSError, ValueError) as e:
            raise _Damaged(f"unreadable progress.json ({e})") from None
        if not isinstance(progress, dict) or set(progress) != _PROGRESS_KEYS:
            raise _Damaged(f"progress.json must hold exactly the keys {sorted(_PROGRESS_KEYS)}")
        epochs = (self.params or {}).get("epochs")
        steps = (self.params or {}).get("steps")
        for key, high in (("epoch", epochs), ("batches_done", steps)):
            value = progress[key]
            if type(value) is not int or value < 0 or (high is not None and value > high):
                raise _Damaged(f"progress {key}={value!r} outside [0, {high}]")
        if progress["callbacks"] != len(self.stateful_callbacks):
            raise _Damaged(
                f"holds the state of {progress['callbacks']!r} callbacks, "
                f"{len(self.stateful_callbacks)} were passed in `callbacks`"
            )
        arrays = {}
        for key, variables in groups.items():
            if progress[key] != _signature(variables):
                raise _Damaged(
                    f"its {key} variables (count, shapes, dtypes) differ from this model's"
                )
            try:
                with np.load(os.path.join(path, f"{key}.npz"), allow_pickle=False) as f:
                    values = [f[f"arr_{i}"] for i in range(len(variables))]
            except (OSError, ValueError, KeyError) as e:
                raise _Damaged(f"unreadable {key}.npz ({e})") from None
            for v, a in zip(variables, values, strict=True):
                if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
                    raise _Damaged(f"non-finite values in {key} variable {v.path!r}")
            arrays[key] = values
        return progress, arrays

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "BackupAndRestore: the model must be built before `fit()` (call it on a batch "
                "or give it an Input)."
            )
        self._epoch, self._batches_done, self._since_save, self._last_batch = 0, 0, 0, -1
        self._pending_epoch_save = None
        self._resume, self._skip_remaining, self._skipped_in_epoch = None, 0, 0
        self.skipped_batches, self.restored_from, self.damaged_backups = 0, None, []
        self._remove_temp_dirs()  # leftovers of a write killed before its commit
        if self.model.optimizer is not None:
            # Every backup holds the control plane's knobs, so that its layout
            # does not depend on whether another callback installed it first.
            install_for("BackupAndRestore", self.model)
        backups = self._backups()
        if not backups:
            return
        groups = self._groups()
        for _, path in backups:
            try:
                progress, arrays = self._read(path, groups)
            except _Damaged as e:
                self.damaged_backups.append((path, str(e)))
                message = f"BackupAndRestore: skipping damaged backup {path}: {e}"
                _log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                continue
            self._load(path, progress, groups, arrays)
            return
        raise RuntimeError(
            f"BackupAndRestore: none of the {len(backups)} backup(s) in {self.backup_dir!r} "
            "verifies; refusing to load a damaged backup. Problems: "
            + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in self.damaged_backups)
        )

    def _load(self, path: str, progress: dict, groups: dict, arrays: dict) -> None:
        for key in ("model", "optimizer"):
            for v, a in zip(groups[key], arrays[key], strict=True):
                v.assign(a)
        if self.stateful_callbacks:
            status = self._callback_checkpoint().read(os.path.join(path, "callbacks"))
            status.assert_existing_objects_matched()
        self.restored_from = path
        _internals.set_initial_epoch(self.model, progress["epoch"])
        self._resume = (progress["epoch"], progress["batches_done"], arrays["metrics"])

    # -- bookkeeping ---------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batches_done, self._skipped_in_epoch = epoch, 0, 0
        if self._pending_epoch_save is not None:
            self._save(self._pending_epoch_save, 0)
            self._pending_epoch_save = None
        if self._resume is None:
            return
        resume_epoch, done, metric_values = self._resume
        self._resume = None
        if epoch != resume_epoch or done == 0:
            return
        # Keras reset the metrics just before this call; the interrupted epoch's
        # accumulators come back so its logs cover all of its batches.
        for v, a in zip(self.model.metrics_variables, metric_values, strict=True):
            v.assign(a)
        self._install_skip(done)

    def _install_skip(self, count: int) -> None:
        # Installed here, not in on_train_begin: other callbacks' on_train_begin
        # may still rebuild `model.train_function` after ours.
        self._skip_remaining = count
        model = self.model
        original = model.train_function
        per_call = int(getattr(model, "steps_per_execution", 1) or 1)

        def skipping_train_function(iterator):
            if self._skip_remaining <= 0:
                model.train_function = original
                return original(iterator)
            n = min(per_call, self._skip_remaining)
            for _ in range(n):
                next(iterator)  # draw the batch so the data order stays the same
            self._skip_remaining -= n
            self._skipped_in_epoch += n
            self.skipped_batches += n
            return model.get_metrics_result()

        model.train_function = skipping_train_function

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = batch + 1
        if self.save_freq == "epoch":
            return
        # Batches since the last call (more than one with steps_per_execution).
        step = batch + 1 if batch <= self._last_batch else batch - self._last_batch
        self._last_batch = batch
        if self._batches_done <= self._skipped_in_epoch:
            return  # a skipped batch: the weights are those of a later batch
        self._since_save += step
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(self._epoch, self._batches_done)

    def on_epoch_end(self, epoch, logs=None):
        self._last_batch = -1
        if self.save_freq == "epoch":
            # Saved at the next epoch's start, after every callback's
            # on_epoch_end has updated its state for this epoch.
            self._pending_epoch_save = epoch + 1

    def on_train_end(self, logs=None):
        _internals.set_initial_epoch(self.model, None)
        if self.delete_checkpoint:
            for _, path in self._backups():
                _atomic.remove_tree(path)
            self._remove_temp_dirs()
            try:
                os.rmdir(self.backup_dir)
            except OSError:
                pass  # not empty (the user's own files) or already gone
        elif self._pending_epoch_save is not None:
            self._save(self._pending_epoch_save, 0)
        self._pending_epoch_save = None
