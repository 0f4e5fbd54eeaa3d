"""``BackupAndRestore`` that resumes a killed run exactly, mid-epoch included.

Keras' ``BackupAndRestore`` saves the weights and the optimizer every
``save_freq`` batches, but a resumed run (1) restarts the interrupted epoch at
its first batch, replaying batches already applied, (2) loses the state of
the random-number generators that dropout draws from (their state variables
are not in ``save_weights``), and (3) loses the state of other callbacks
(EarlyStopping's patience counter, ReduceLROnPlateau's multiplier). Any of
the three makes the resumed run diverge from an uninterrupted one.

This subclass saves, next to Keras' backup, a ``tf.train.Checkpoint`` of

* every model variable that ``save_weights`` leaves out (dropout and other
  ``SeedGenerator`` states),
* the ``state`` of each callback passed in ``callbacks`` (tfkit's
  ``EarlyStopping`` and ``ReduceLROnPlateau`` keep theirs in variables),

and the number of batches already done in the current epoch. On resume it
restores all of it and skips those batches (it draws them from the data
iterator without training on them), so that a run killed with ``SIGKILL`` at
any batch ends with the same weights as an uninterrupted run — provided the
data order of an epoch does not depend on the process (``shuffle=False``, or
a ``tf.data`` pipeline whose shuffle is seeded per epoch). Optimizer state,
including ``GradientAccumulator`` windows and the loss scale of a
``LossScaleOptimizer``, lives in optimizer variables and is saved by Keras.

Metrics of the interrupted epoch restart from the resumed batch: the epoch's
logged averages cover only the batches trained after the resume.

Args:
    backup_dir: where to keep the backup (as in Keras).
    save_freq: ``"epoch"`` or a number of batches (as in Keras).
    callbacks: stateful callbacks (objects with a ``state`` ``tf.Module``)
        whose state is saved and restored with the model.
    double_checkpoint, delete_checkpoint: as in Keras.

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

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

__all__ = ["BackupAndRestore"]


class _Holder(tf.Module):
    """Tracks a list of variables under one name in a checkpoint."""

    def __init__(self, variables, name: str):
        super().__init__(name=name)
        self.variables_list = list(variables)


def _unsaved_model_variables(model: keras.Model) -> list:
    """Model variables that ``save_weights`` does not write (RNG states)."""
    saved = {id(v) for v in model.weights}
    return [v.value if hasattr(v, "value") else v for v in model.variables if id(v) not in saved]


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    def __init__(
        self,
        backup_dir: str,
        save_freq="epoch",
        callbacks=(),
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        callbacks = list(callbacks)
        for i, cb in enumerate(callbacks):
            if not isinstance(getattr(cb, "state", None), tf.Module):
                raise TypeError(
                    f"`callbacks[{i}]` must keep its state in a tf.Module `state` attribute "
                    f"(tfkit's EarlyStopping, ReduceLROnPlateau); received {type(cb).__name__}"
                )
        self.stateful_callbacks = callbacks
        self._state_prefix = os.path.join(backup_dir, "tfkit_state")
        self._progress_path = os.path.join(backup_dir, "tfkit_progress.json")
        self._batches_done = 0
        self._skip_remaining = 0
        self._skipped_in_epoch = 0
        self.skipped_batches = 0  # batches skipped on the last resume (for tests and logs)

    # -- what is saved beside Keras' backup ---------------------------------
    def _checkpoint(self) -> tf.train.Checkpoint:
        parts = {"rng": _Holder(_unsaved_model_variables(self.model), "rng")}
        for i, cb in enumerate(self.stateful_callbacks):
            parts[f"callback_{i}"] = cb.state
        return tf.train.Checkpoint(**parts)

    def _save_model(self):
        super()._save_model()
        self._checkpoint().write(self._state_prefix)
        with open(self._progress_path, "w") as f:
            json.dump({"batches_done": self._batches_done}, f)

    def _load_model(self):
        super()._load_model()
        self.skipped_batches = 0
        if not os.path.exists(self._progress_path):
            return
        self._checkpoint().read(self._state_prefix).assert_consumed()
        with open(self._progress_path) as f:
            done = int(json.load(f)["batches_done"])
        if done:
            self._skip_batches(done)

    # -- skipping the batches already trained in the interrupted epoch -------
    def _skip_batches(self, count: int) -> None:
        # Installed at the next epoch start, not here: other callbacks'
        # on_train_begin may still rebuild `model.train_function` after us.
        self._skip_remaining = count

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self._skip_remaining <= 0:
            return
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
            return {}

        model.train_function = skipping_train_function

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = batch + 1
        if self._batches_done <= self._skipped_in_epoch:
            # A skipped batch: keep Keras' save counter in step, but never save
            # here: the weights are those of a later batch than `batch`.
            self._should_save_on_batch(batch)
            return
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._batches_done = 0
        self._skipped_in_epoch = 0
        super().on_epoch_end(epoch, logs)
