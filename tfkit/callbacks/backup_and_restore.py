"""Crash-safe, verified backups that resume a killed ``model.fit`` exactly."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import tempfile
import threading
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals, _validation
from tfkit.callbacks import _atomic, _fingerprint
from tfkit.optimizers.gradient_accumulator import GradientAccumulator
from tfkit.optimizers.hyperparameters import attached_optimizer, install_for, knob_variables
from tfkit.optimizers.tree import optimizer_chain

__all__ = ["BackupAndRestore"]

_log = logging.getLogger("tfkit")
_NAME = re.compile(r"^backup-(\d{12})$")
_TEMP_PREFIX = ".tmp-backup-"
_PROGRESS_KEYS = {
    "epoch", "batches_done", "model", "metrics", "optimizer", "callbacks", "config", "data",
}  # fmt: skip
_DATA_ITERATOR, _DATA_REPLAY, _DATA_NONE = "iterator", "replay", "none"
_ON_CHANGE = ("refuse", "adapt")


def _plain(variable):
    """The tf.Variable behind a Keras variable (checkpoints track tf.Variables)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _npz_bytes(variables) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *[keras.ops.convert_to_numpy(_plain(v).read_value()) for v in variables])
    return buffer.getvalue()


def _spec_zeros(spec):
    """A batch of zeros matching ``spec`` (unknown dimensions 1), to build metrics from."""
    return tf.nest.map_structure(
        lambda s: tf.zeros([d if d is not None else 1 for d in s.shape], s.dtype), spec
    )


class _Damaged(Exception):
    """A backup that must not be loaded; the message says why."""


class _Changed(Exception):
    """A sound backup of a different configuration; ``args[0]`` maps item -> (saved, now)."""


@keras.saving.register_keras_serializable(package="tfkit")
class BackupAndRestore(keras.callbacks.Callback):
    """Crash-safe, verified backups that resume a killed run exactly, mid-epoch included.

    Keras' ``BackupAndRestore`` writes a weights file and a JSON file one after
    the other, in place, restarts the interrupted epoch at its first batch and
    loses the data position, the random-generator and the callback state. This
    callback owns the whole backup instead:

    * **What is saved.** Every model variable (weights and the random-generator
      state that dropout draws from), the model's metric accumulators, every
      optimizer variable (slots, iteration counters, accumulation windows, loss
      scale, in-graph hyperparameters), the state of each callback passed in
      ``callbacks``, the **data position** (a ``tf.train.Checkpoint`` of the
      input iterator: shuffle buffers, the reshuffle-each-epoch seed, ``repeat``
      counts, prefetched batches), the progress (epoch, batches of it trained)
      and a **configuration fingerprint**.
    * **How.** Each backup is written into a fresh temporary directory, every file
      and the directory are fsynced, a manifest records each file's size and
      SHA-256, and one atomic ``rename`` commits it as ``backup-<n>``. Older
      backups are removed only after the commit (``double_checkpoint=True``
      keeps two). A write that fails (a full disk) is a warning: training goes
      on and the last committed backup stays as it was.
    * **Verification.** ``on_train_begin`` takes the newest backup whose
      manifest verifies (checksums, sizes, no truncation), whose arrays match
      the layout its progress file records, and whose weights and optimizer
      slots are finite. A damaged backup is reported in one warning line and
      skipped; if none verifies, a ``RuntimeError`` says why. Metric totals may
      hold ``inf``/``NaN`` in a healthy run (a loss-scaler's skipped step, a
      micro-batch dropped by ``GradientAccumulator``): they are restored as
      saved, never a reason to refuse. Verification does not need the
      compiled metrics to be built: they are compared when ``fit`` builds them.
    * **Configuration.** The fingerprint holds the model's and the optimizer
      tree's variable layout, the optimizer classes and constructor
      hyperparameters, the accumulation steps, the steps per epoch, the replica
      count, the number of carried callbacks and the input's element spec
      (batch size included when static). A backup whose fingerprint differs is
      refused with a ``RuntimeError`` naming every differing item with both
      values. ``on_change="adapt"`` accepts a changed replica count: with
      ``fit``'s global batch kept, every update is unchanged (only the
      all-reduce's summation order is); with the per-replica batch kept
      (elastic resume), the steps per epoch change by a factor ``r`` and the
      ``GradientAccumulator``'s steps are re-derived as ``k * r`` before the
      step is traced, so that each update holds the same samples. That needs
      a whole ``k * r``, whole windows per epoch, and full micro-batches (a
      static batch dimension) or ``tfkit.training.install`` (each weighed by
      its size); the global batch measured at the first step must match. It
      still refuses every other change, and a replica change while an
      accumulation window is open (its partial sums are per replica).
    * **Data position, inside ``fit``.** ``fit`` hands its data iterator only to
      ``model.train_function``; this callback routes the steps through a thin
      wrapper (``tfkit._internals.intercept_train_function``) to checkpoint
      that iterator and restore it on resume. ``tf.data`` pipelines (shuffle
      reshuffled each epoch, ``repeat`` with ``steps_per_epoch``, ``map`` /
      ``batch`` / ``prefetch``) and NumPy input (Keras' own pipeline) resume at
      the exact element. An input whose iterator cannot be checkpointed
      (``from_generator``, ``py_function``) gets one warning naming it at the
      first step (``fit`` shows a callback its input no earlier); its position
      is then kept as a batch count and a resume replays that many batches,
      which is exact only if the input yields the same order in every process.
    * **Interrupts.** ``SIGKILL``, ``SIGINT`` (``KeyboardInterrupt``) or a
      failure at any instant, a save included, leaves the last committed backup;
      the next start removes temporary directories. ``SIGTERM`` (preemption)
      is caught: a backup is written at the next batch boundary, then
      ``SystemExit(0)`` ends the process cleanly (a second ``SIGTERM`` before
      that takes the previous handler's action).
    * **Custom loops.** Works with ``tfkit.TrainStep`` on an uncompiled model
      (the optimizer attached by ``TrainStep``). After ``on_train_begin``,
      :attr:`initial_epoch` and :attr:`initial_step` say where to continue and
      :meth:`iterator` returns the input iterator positioned there.
    * **Multi-worker.** Only the worker that should checkpoint
      (``strategy.extended.should_checkpoint``, the chief) writes; every worker
      verifies and loads the same backup.

    **Carrying another callback's state** (the protocol for ``callbacks``): a
    callback is carried if it has a ``state`` attribute that is a
    ``tf.Module`` whose ``tf.Variable`` attributes hold everything it must
    keep (tfkit's ``CallbackState`` is one, with an ``in_progress`` flag). Its
    variables are saved with ``tf.train.Checkpoint`` in every backup and
    restored in this callback's ``on_train_begin``, before the carried
    callback's own ``on_train_begin`` runs (so put this callback first in
    ``fit``'s list); the callback must then keep, not reset, a state restored
    mid-run (``CallbackState.begin`` decides this from ``in_progress``).

    Args:
        backup_dir: Directory for the backups (created if missing; must be
            writable, checked before training).
        save_freq: ``"epoch"`` (default) or a number of batches ``>= 1``.
        callbacks: Callbacks whose ``state`` (see above) is carried. Default ``()``.
        double_checkpoint: Keep the last two backups instead of one. Default False.
        delete_checkpoint: Delete the backups when ``fit`` completes. Default True.
        on_change: ``"refuse"`` (default) or ``"adapt"``: what a backup of a
            different configuration does (see above).

    Example:
        >>> import keras, numpy as np, tempfile, tfkit
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> stop = tfkit.callbacks.EarlyStopping(patience=3)
        >>> backup = tfkit.callbacks.BackupAndRestore(
        ...     tempfile.mkdtemp(), save_freq=2, callbacks=[stop])
        >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=2,
        ...               shuffle=False, callbacks=[backup, stop], verbose=0)
        >>> backup.initial_epoch, backup.initial_step  # nothing to resume: a fresh start
        (0, 0)
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        callbacks=(),
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        on_change: str = "refuse",
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
        self.on_change = _validation.check_choice(owner, "on_change", on_change, _ON_CHANGE)
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
        # Test seam: the kill-anywhere harness passes a Fault subclass here.
        self._fault = _atomic.Fault()
        self._previous_sigterm = None
        self._reset()

    def _reset(self) -> None:
        self._epoch = 0
        self._batches_done = 0
        self._since_save = 0
        self._last_batch = -1
        self._last_saved = None
        self._pending_epoch_save = None
        self._resume = None  # the loaded backup's position, still to apply
        self._data_resume = None  # the same, for a custom loop's iterator()
        self._skip_draws = False
        self._defer_to_next_step = False
        self._skip_remaining = 0
        self._skipped_in_epoch = 0
        self._first_step = False  # the next train_function call is an epoch's first
        self._iterator = None  # fit's iterator (seen in train_function) or the loop's own
        self._owned_iterator = False
        self._data_mode = None
        self._input_items = None
        self._config = {}
        self._preempted = False
        self._write_failures = 0
        self.initial_epoch = 0
        self.initial_step = 0
        self.skipped_batches = 0  # train_function calls skipped on the last resume
        self.restored_from = None  # path of the backup the last resume loaded
        self.damaged_backups = []  # (path, reason) of backups skipped on the last resume
        self.adapted = {}  # items that differed and were adapted on the last resume
        # The global batch fit trains on, measured once per run at its first
        # real step (the loss tracker's sample count), and the loaded backup's.
        self._batch_pending = True
        self._resume_batch = None
        self._elastic = None  # (k of the backup, k of this run) when re-derived

    def get_config(self) -> dict:
        """Constructor arguments except ``callbacks`` (live objects, passed again on load)."""
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "double_checkpoint": self.double_checkpoint,
            "delete_checkpoint": self.delete_checkpoint,
            "on_change": self.on_change,
        }

    @classmethod
    def from_config(cls, config: dict) -> BackupAndRestore:
        return cls(**config)

    # -- the run this callback watches ---------------------------------------
    def _optimizer(self):
        model = self.model
        optimizer = getattr(model, "optimizer", None) or attached_optimizer(model)
        if optimizer is not None and not optimizer.built:
            with self._strategy().scope():
                optimizer.build(model.trainable_variables)
        return optimizer

    def _strategy(self) -> tf.distribute.Strategy:
        return getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()

    def _writer(self) -> bool:
        """Whether this worker writes backups (the chief under multi-worker strategies)."""
        return bool(getattr(self._strategy().extended, "should_checkpoint", True))

    def _groups(self) -> dict:
        optimizer = self._optimizer()
        # The control plane's knobs (plateau multiplier, epoch scale, momentum
        # switch) live beside the optimizer's variables, not among them.
        optimizer_variables = (
            list(optimizer.variables) + knob_variables(optimizer) if optimizer is not None else []
        )
        return {
            "model": list(self.model.variables),
            "metrics": list(getattr(self.model, "metrics_variables", [])),
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

    def _check_writable(self) -> None:
        try:
            os.makedirs(self.backup_dir, exist_ok=True)
            probe = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=self.backup_dir)
            self._fault.at("probe")
            os.rmdir(probe)
        except OSError as e:
            raise OSError(
                e.errno,
                f"BackupAndRestore: cannot write backups to backup_dir={self.backup_dir!r} "
                f"({e.strerror or e}); pass a writable directory",
            ) from None

    # -- the data position ---------------------------------------------------
    def _see_input(self, iterator, dataset=None) -> None:
        """Decide (once per run) whether ``iterator``'s position can be checkpointed."""
        self._iterator = iterator
        if self._data_mode is not None:
            return
        self._input_items = _fingerprint.of_input(
            iterator.element_spec, _fingerprint.cardinality(dataset)
        )
        probe = tempfile.mkdtemp(prefix="tfkit-data-probe-")
        try:
            tf.train.Checkpoint(iterator=iterator).write(os.path.join(probe, "data"))
            self._data_mode = _DATA_ITERATOR
        except (tf.errors.OpError, TypeError, ValueError) as e:
            self._data_mode = _DATA_REPLAY
            if isinstance(iterator, tf.distribute.DistributedIterator):
                # TensorFlow (2.17 through 2.21) cannot checkpoint the iterator
                # of a distributed dataset, whatever the pipeline.
                reason = "TensorFlow cannot checkpoint a distributed dataset's iterator"
            else:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            message = (
                f"BackupAndRestore: the training input (element_spec={iterator.element_spec}) "
                f"cannot be checkpointed ({reason}); backups keep its position as a batch "
                "count and a resume replays that many batches, which is exact only if the "
                "input yields the same order in every process. Build it with tf.data "
                "(from_tensor_slices, TFRecord, map without py_function) for an exact resume."
            )
            _log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        finally:
            _atomic.remove_tree(probe)

    def iterator(self, dataset):
        """An iterator over ``dataset`` for a custom loop, at the resumed position.

        Call it after ``on_train_begin``. Its position is saved in every backup
        and, when a backup was loaded, restored now: the loop continues with the
        batch after the last one trained. Use one iterator for the whole run
        (``dataset.repeat()`` with a fixed number of steps per epoch), as
        ``fit(steps_per_epoch=...)`` does; a reshuffle-each-epoch shuffle then
        resumes with its epoch's order. A distributed dataset works the same way.

        Args:
            dataset: a ``tf.data.Dataset`` or a ``tf.distribute.DistributedDataset``.

        Returns:
            The iterator (``iter(dataset)``, possibly restored).
        """
        if not isinstance(dataset, tf.data.Dataset | tf.distribute.DistributedDataset):
            _validation.fail(
                "BackupAndRestore", "dataset", dataset,
                "a tf.data.Dataset or a tf.distribute.DistributedDataset", TypeError,
            )  # fmt: skip
        iterator = iter(dataset)
        self._owned_iterator = True
        self._see_input(iterator, dataset)
        resume, self._data_resume = self._data_resume, None
        if resume is not None:
            self._check_input_against(resume)
            if resume["data"] == _DATA_ITERATOR:
                self._restore_iterator(iterator, resume["path"])
            else:
                self._replay(iterator, resume)
        return iterator

    def _replay(self, iterator, resume: dict) -> None:
        """Position a loop's non-checkpointable iterator by drawing the batches already trained."""
        steps = (self.params or {}).get("steps")
        if not (resume["epoch"] or resume["done"]):
            return
        if not steps:
            raise RuntimeError(
                "BackupAndRestore: the loop's input cannot be checkpointed, so its position is "
                "replayed from the epoch and batch; pass the steps per epoch to the CallbackList "
                "(`CallbackList(..., steps=steps_per_epoch)`)."
            )
        count = resume["epoch"] * steps + resume["done"]
        message = (
            f"BackupAndRestore: resuming an input that cannot be checkpointed by replaying "
            f"{count} batches (exact only if it yields the same order in every process)."
        )
        _log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        for _ in range(count):
            next(iterator)

    def _check_input_against(self, resume: dict) -> None:
        diffs = _fingerprint.differences(resume["config"], self._input_items or {})
        if "replicas" in self.adapted:
            diffs.pop("input", None)  # a per-replica spec: the global batch is unchanged
        if resume["data"] == _DATA_ITERATOR and self._data_mode != _DATA_ITERATOR:
            diffs["data position"] = ("an iterator checkpoint", "an input that has none")
        if diffs:
            raise self._refusal(resume["path"], diffs)

    def _restore_iterator(self, iterator, path: str) -> None:
        status = tf.train.Checkpoint(iterator=iterator).read(os.path.join(path, "data"))
        status.assert_consumed()

    # -- writing -------------------------------------------------------------
    def _save(self, epoch: int, batches_done: int) -> bool:
        """Write and commit one backup; False (and a warning) if the write failed."""
        if self._last_saved == (epoch, batches_done):
            return True
        if not self._writer():
            # Reading a variable synchronized on read (an accumulator's partial
            # sums) all-reduces it across workers: every worker reads, in the
            # writer's order, so that the collectives match; only the chief writes.
            groups = self._groups()
            for key in ("model", "metrics", "optimizer"):
                _npz_bytes(groups[key])
            self._last_saved = (epoch, batches_done)
            return True
        fault = self._fault
        fault.next_save()
        backups = self._backups()
        number = backups[0][0] + 1 if backups else 0
        temp = None
        try:
            temp = _atomic.make_temp_dir(self.backup_dir, _TEMP_PREFIX)
            groups = self._groups()
            for key in ("model", "metrics", "optimizer"):
                _atomic.write_bytes(
                    os.path.join(temp, f"{key}.npz"), _npz_bytes(groups[key]), fault
                )
            if self.stateful_callbacks:
                self._callback_checkpoint().write(os.path.join(temp, "callbacks"))
                fault.at("callbacks")
            data = _DATA_NONE
            if self._iterator is not None and self._data_mode == _DATA_ITERATOR:
                tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(temp, "data"))
                data = _DATA_ITERATOR
                fault.at("data")
            elif self._iterator is not None:
                data = _DATA_REPLAY
            config = dict(self._config, **(self._input_items or {}))
            progress = {
                "epoch": int(epoch),
                "batches_done": int(batches_done),
                "callbacks": len(self.stateful_callbacks),
                "config": config,
                "data": data,
            }
            progress.update(
                {key: _fingerprint.signature(variables) for key, variables in groups.items()}
            )
            _atomic.write_bytes(
                os.path.join(temp, "progress.json"), json.dumps(progress).encode(), fault
            )
            _atomic.write_manifest(temp, fault)
            fault.at("commit")
            _atomic.commit(temp, os.path.join(self.backup_dir, f"backup-{number:012d}"))
            temp = None
        except (OSError, tf.errors.OpError) as e:
            # A full disk or a failing device: keep training, keep the last backup.
            if temp is not None:
                _atomic.remove_tree(temp)
            self._write_failures += 1
            last = backups[0][1] if backups else None
            message = (
                f"BackupAndRestore: the backup of epoch {epoch}, batch {batches_done} was not "
                f"written ({type(e).__name__}: {e}); training continues and the last good "
                f"backup ({last or 'none yet'}) is intact."
            )
            _log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return False
        except BaseException:
            # KeyboardInterrupt (SIGINT) or any error mid-write: nothing half-written stays.
            if temp is not None:
                _atomic.remove_tree(temp)
            raise
        self._last_saved = (epoch, batches_done)
        fault.at("cleanup")
        # Older backups go only now, after the commit; damaged ones never count
        # as the kept previous backup.
        damaged = {path for path, _ in self.damaged_backups}
        good = [path for _, path in backups if path not in damaged]
        keep = 2 if self.double_checkpoint else 1
        for path in sorted(damaged) + good[keep - 1 :]:
            _atomic.remove_tree(path)
        return True

    # -- reading -------------------------------------------------------------
    def _read(self, path: str, groups: dict) -> tuple[dict, dict]:
        """Verified progress and arrays of the backup at ``path``.

        Raises ``_Damaged`` (corrupt: skip it) or ``_Changed`` (sound, but of
        another configuration: refuse).
        """
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
        for key in ("epoch", "batches_done"):
            value = progress[key]
            if type(value) is not int or value < 0:
                raise _Damaged(f"progress {key}={value!r} is not an integer >= 0")
        if not isinstance(progress["config"], dict) or progress["data"] not in (
            _DATA_ITERATOR, _DATA_REPLAY, _DATA_NONE,
        ):  # fmt: skip
            raise _Damaged("progress.json holds no configuration or data position")
        arrays = {}
        for key in groups:
            recorded = progress[key]
            try:
                with np.load(os.path.join(path, f"{key}.npz"), allow_pickle=False) as f:
                    values = [f[f"arr_{i}"] for i in range(len(recorded))]
                    extra = len(f.files) - len(recorded)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise _Damaged(f"unreadable {key}.npz ({e})") from None
            layout = [[list(a.shape), a.dtype.str] for a in values]
            if extra or layout != recorded:
                raise _Damaged(f"{key}.npz does not hold the arrays progress.json records")
            if key != "metrics":  # metric totals may be inf/NaN in a healthy run
                for i, a in enumerate(values):
                    if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
                        raise _Damaged(f"non-finite values in {key} array {i}")
            arrays[key] = values
        diffs = _fingerprint.differences(progress["config"], self._config)
        for key in ("model", "optimizer"):
            if progress[key] != _fingerprint.signature(groups[key]):
                diffs[f"{key} variables (count, shapes, dtypes)"] = (
                    f"{len(progress[key])} variables", f"{len(groups[key])} variables"
                )
        epochs, steps = (self.params or {}).get("epochs"), self._config.get("steps per epoch")
        if epochs is not None and progress["epoch"] > epochs:
            diffs["epochs"] = (f">= {progress['epoch']}", epochs)
        if steps is not None and progress["batches_done"] > steps and not diffs:
            raise _Damaged(f"progress batches_done={progress['batches_done']} > steps {steps}")
        if diffs:
            raise _Changed(diffs)
        return progress, arrays

    def _refusal(self, path: str, diffs: dict) -> RuntimeError:
        return RuntimeError(
            f"BackupAndRestore: the backup {path} was written by a run configured differently "
            f"(the backup's variables differ from this model's, or its settings differ): "
            f"{_fingerprint.explain(diffs)}. Resuming would not continue that run exactly; "
            f"restore the configuration, or use another backup_dir to start afresh "
            "(on_change='adapt' continues only across a changed replica count, re-deriving "
            "the accumulation steps when the per-replica batch is kept)."
        )

    def _accept_changes(self, path: str, diffs: dict) -> None:
        adaptable = _fingerprint.ADAPTABLE
        if "replicas" in diffs:
            adaptable = adaptable + _fingerprint.ELASTIC
        refused = {k: v for k, v in diffs.items() if k not in adaptable}
        if self.on_change == "refuse" or refused:
            raise self._refusal(path, refused or diffs)
        self._elastic = self._elastic_steps(path, diffs)
        self.adapted = dict(diffs)
        if self._elastic is not None:
            self.adapted["accumulation steps"] = self._elastic
        _log.warning("BackupAndRestore: adapting to %s", _fingerprint.explain(self.adapted))

    def _elastic_steps(self, path: str, diffs: dict) -> tuple[int, int] | None:
        """``(k of the backup, k now)`` that keep every update's samples, or None if k stays.

        fit's global batch follows the replica count when the per-replica batch
        is kept: the steps per epoch then change by ``r = steps_now /
        steps_backup`` and the accumulation steps by the same factor, so that
        each update still holds the same samples in the same order.
        """
        config = self._config
        steps_old, steps_new = diffs.get("steps per epoch", (None, None))
        if steps_old is None:
            steps_old = steps_new = config.get("steps per epoch")
        k_old, _ = diffs.get("accumulation steps", (config.get("accumulation steps"), None))
        if steps_old == steps_new:
            changed_k = {
                key: diffs[key]
                for key in ("accumulation steps", "GradientAccumulator.accumulation_steps")
                if key in diffs
            }
            if changed_k:  # the global batch per update would change
                raise self._refusal(path, changed_k)
            return None

        def refuse(why):
            raise self._refusal(path, {
                "steps per epoch (elastic resume)": (
                    f"{steps_old} steps of {k_old} micro-batches per update",
                    f"{steps_new} steps: {why}",
                )
            })  # fmt: skip

        if steps_old is None or steps_new is None:
            refuse("the steps per epoch must be known on both sides")
        if steps_old % k_old:
            refuse(f"the backup's {steps_old} steps are not whole windows of {k_old}")
        if (k_old * steps_new) % steps_old:
            refuse(
                f"{k_old} * {steps_new} / {steps_old} is not a whole number of accumulation steps"
            )
        k_new = k_old * steps_new // steps_old
        accumulators = [
            n for n in optimizer_chain(self._optimizer()) if isinstance(n, GradientAccumulator)
        ]
        if len(accumulators) != 1:
            refuse(
                f"re-deriving {k_old} accumulation steps as {k_new} needs exactly one "
                f"GradientAccumulator in the optimizer chain (found {len(accumulators)})"
            )
        return k_old, k_new

    def _check_elastic_exact(self, element_spec) -> None:
        """Re-derived windows equal the old ones only if no micro-batch is ragged, or each is weighed by its size."""
        from tfkit import training  # training imports the callbacks package

        specs = tf.nest.flatten(element_spec, expand_composites=True)  # PerReplicaSpec too
        static = all(
            isinstance(s, tf.TensorSpec) and s.shape.rank and s.shape[0] is not None
            for s in specs
        )
        if static or training.is_installed(self.model):
            return
        k_old, k_new = self._elastic
        raise RuntimeError(
            f"BackupAndRestore: elastic resume ({k_old} -> {k_new} accumulation steps) is exact "
            "only if every micro-batch is full or weighed by its size; this input's batch size "
            f"is not static (element_spec={element_spec}). Call tfkit.training.install(model) "
            "(ragged micro-batches weighed exactly), or batch with drop_remainder=True."
        )

    def _apply_elastic(self, optimizer) -> None:
        """Set the re-derived accumulation steps before fit traces its first step."""
        k_old, k_new = self._elastic
        for node in optimizer_chain(optimizer):
            if isinstance(node, GradientAccumulator):
                node.accumulation_steps = k_new
        message = (
            f"BackupAndRestore: elastic resume: {self.adapted['replicas'][0]} -> "
            f"{self.adapted['replicas'][1]} replicas, accumulation steps {k_old} -> {k_new} "
            "(every update keeps its samples)."
        )
        _log.warning(message)
        if getattr(self.model, "train_function", None) is not None:
            # A step traced before (an earlier fit of this model) holds the old k.
            self.model.make_train_function(force=True)

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "BackupAndRestore: the model must be built before training (call it on a "
                "batch or give it an Input)."
            )
        self._reset()
        if self._writer():
            self._check_writable()
            self._remove_temp_dirs()  # leftovers of a write killed before its commit
        optimizer = self._optimizer()
        if optimizer is not None:
            # Every backup holds the control plane's knobs, so that its layout
            # does not depend on whether another callback installed it first.
            install_for("BackupAndRestore", self.model)
        self._config = _fingerprint.of_run(
            self.model, optimizer, self.params, self._strategy(), len(self.stateful_callbacks)
        )
        self._install_sigterm()
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
            except _Changed as e:
                self._accept_changes(path, e.args[0])
                progress, arrays = self._read_adapted(path, groups)
            self._load(path, progress, groups, arrays)
            if self._elastic is not None:
                self._apply_elastic(optimizer)
                self._config = _fingerprint.of_run(
                    self.model, optimizer, self.params, self._strategy(),
                    len(self.stateful_callbacks),
                )  # fmt: skip
            return
        raise RuntimeError(
            f"BackupAndRestore: none of the {len(backups)} backup(s) in {self.backup_dir!r} "
            "verifies; refusing to load a damaged backup. Problems: "
            + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in self.damaged_backups)
        )

    def _read_adapted(self, path, groups):
        saved, self._config = self._config, dict(self._config)
        for key, (old, _) in self.adapted.items():
            self._config[key] = old
        try:
            return self._read(path, groups)
        finally:
            self._config = saved

    def _load(self, path: str, progress: dict, groups: dict, arrays: dict) -> None:
        for key in ("model", "optimizer"):
            for v, a in zip(groups[key], arrays[key], strict=True):
                v.assign(a)
        if "replicas" in self.adapted:
            self._check_windows_closed(path)
        self._resume_batch = progress["config"].get("batch size")
        if self._elastic is not None:
            k_old, k_new = self._elastic
            done = progress["batches_done"]
            if done % k_old:
                raise self._refusal(path, {
                    "batches done (elastic resume)": (
                        f"{done}, not whole windows of {k_old}", f"windows of {k_new}"
                    )
                })  # fmt: skip
            # Closed windows aligned with the epoch: a whole number of them is done.
            progress = dict(progress, batches_done=done // k_old * k_new)
        if self.stateful_callbacks:
            status = self._callback_checkpoint().read(os.path.join(path, "callbacks"))
            status.assert_existing_objects_matched()
        self.restored_from = path
        self.initial_epoch = progress["epoch"]
        self.initial_step = progress["batches_done"]
        _internals.set_initial_epoch(self.model, progress["epoch"])
        self._resume = {
            "path": path,
            "epoch": progress["epoch"],
            "done": progress["batches_done"],
            "metrics": arrays["metrics"],
            "metrics_layout": progress["metrics"],
            "config": progress["config"],
            "data": progress["data"],
        }
        self._data_resume = self._resume
        self._last_saved = (progress["epoch"], progress["batches_done"])

    def _check_windows_closed(self, path: str) -> None:
        """An open accumulation window holds per-replica partial sums: not continuable."""
        for node in optimizer_chain(self._optimizer()):
            if isinstance(node, GradientAccumulator):
                done = int(node.micro_step.numpy()) % int(node.accumulation_steps)
                if done:
                    raise self._refusal(
                        path,
                        {
                            "replicas with an open accumulation window": (
                                f"{self.adapted['replicas'][0]} replicas, {done} of "
                                f"{node.accumulation_steps} micro-batches accumulated",
                                f"{self.adapted['replicas'][1]} replicas",
                            )
                        },
                    )

    def _restore_metrics(self, resume: dict, element_spec=None) -> None:
        model = self.model
        if not _internals.metrics_built(model) and element_spec is not None:
            # fit builds compiled metrics only when it traces its first step.
            _internals.symbolic_build(model, _spec_zeros(element_spec))
        variables = list(getattr(model, "metrics_variables", []))
        if _fingerprint.signature(variables) != resume["metrics_layout"]:
            raise self._refusal(
                resume["path"],
                {
                    "metrics variables": (
                        f"{len(resume['metrics_layout'])} variables", f"{len(variables)} variables"
                    )
                },
            )
        for v, a in zip(variables, resume["metrics"], strict=True):
            v.assign(a)

    # -- fit's steps ---------------------------------------------------------
    def _wrap_step(self, original):
        per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)

        def train_function(iterator):
            if self._first_step:
                self._first_step = False
                self._epoch_first_step(iterator)
            if self._skip_remaining > 0:
                n = min(per_call, self._skip_remaining)
                if self._skip_draws:
                    for _ in range(n):
                        next(iterator)  # draw the batch so the data order stays the same
                self._skip_remaining -= n
                self._skipped_in_epoch += n
                self.skipped_batches += n
                return self.model.get_metrics_result()
            if not self._batch_pending:
                return original(iterator)
            return self._measured_step(original, iterator, per_call)

        return train_function

    def _measured_step(self, original, iterator, per_call: int):
        """Run one step and read fit's global batch off the loss tracker's sample count.

        Keras' ``train_step`` (and ``tfkit.training.install``'s) weighs the
        ``loss`` log by each batch's size, so the tracker's ``count`` grows by
        the global batch per step. Read once per run (two host reads); a step
        that may hold an epoch's ragged last batch is not used.
        """
        steps = (self.params or {}).get("steps")
        tracker = _internals.loss_tracker(self.model)
        count = getattr(tracker, "count", None)
        usable = count is not None and (steps is None or self._batches_done + per_call < steps)
        before = float(count.numpy()) if usable else None
        logs = original(iterator)
        if usable:
            after = float(count.numpy())
            batch = (after - before) / per_call
            if after >= 2.0**24:  # float32 counts: no longer exact
                return logs
            self._batch_pending = False
            if batch >= 1 and batch == int(batch):
                self._check_batch(int(batch))
        return logs

    def _check_batch(self, batch: int) -> None:
        """Record the global batch; refuse an elastic resume whose updates would hold other samples.

        Only an elastic resume compares it: elsewhere a batch size may vary by
        design (bucketing by length), and a ``tf.data`` iterator restored from a
        backup is the backup's own pipeline (TensorFlow's iterator checkpoint
        holds it), batch size included.
        """
        self._config["batch size"] = batch
        saved, self._resume_batch = self._resume_batch, None
        if saved is None or self._elastic is None:
            return
        k_old, k_new = self._elastic
        if batch * k_new != saved * k_old:
            raise RuntimeError(
                f"BackupAndRestore: elastic resume from {self.restored_from}: the backup's "
                f"updates held {saved} x {k_old} = {saved * k_old} samples, this run's would "
                f"hold {batch} x {k_new} = {batch * k_new} (global batch {batch}, "
                f"{k_new} accumulation steps derived from the steps per epoch). Keep the "
                "per-replica batch and let fit derive the steps per epoch (measured at the "
                "first step after the resume; no backup was written since)."
            )

    def _epoch_first_step(self, iterator) -> None:
        self._see_input(iterator)
        resume, self._resume = self._resume, None
        self._data_resume = None
        if self._elastic is not None:
            self._check_elastic_exact(iterator.element_spec)
        if resume is not None and resume["epoch"] == self._epoch:
            self._check_input_against(resume)
            self._skip_draws = resume["data"] != _DATA_ITERATOR
            if resume["data"] == _DATA_ITERATOR:
                self._restore_iterator(iterator, resume["path"])
            elif resume["done"]:
                message = (
                    f"BackupAndRestore: resuming an input that cannot be checkpointed by "
                    f"replaying {resume['done']} batches of epoch {resume['epoch']}."
                )
                _log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            if resume["done"]:
                self._restore_metrics(resume, iterator.element_spec)
                self._skip_remaining = resume["done"]
        if self._pending_epoch_save is None and self._defer_to_next_step:
            self._pending_epoch_save = self._epoch
        self._defer_to_next_step = False
        if self._pending_epoch_save is not None:
            # The epoch's backup, taken now so that it holds this epoch's fresh
            # iterator (its reshuffle seed) and every callback's on_epoch_end.
            self._save(self._pending_epoch_save, 0)
            self._pending_epoch_save = None
        if self._preempted:
            self._exit_preempted()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batches_done, self._skipped_in_epoch = epoch, 0, 0
        # Wrapped here, not in on_train_begin: other callbacks' on_train_begin
        # may still rebuild `model.train_function` after ours.
        _internals.intercept_train_function(self.model, self._wrap_step)
        hooked = _internals.is_intercepted(self.model)
        self._first_step = hooked
        if not hooked:  # a custom loop: its iterator is its own
            if self._pending_epoch_save is not None:
                self._save(self._pending_epoch_save, 0)
                self._pending_epoch_save = None
            resume, self._resume = self._resume, None
            if resume is not None and resume["epoch"] == epoch and resume["done"]:
                if _internals.metrics_built(self.model):
                    self._restore_metrics(resume)
                # The loop starts this epoch at batch `initial_step`.
                self._last_batch = resume["done"] - 1

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = batch + 1
        # Batches since the last call (more than one with steps_per_execution).
        step = batch + 1 if batch <= self._last_batch else batch - self._last_batch
        self._last_batch = batch
        if self._batches_done <= self._skipped_in_epoch:
            return  # a skipped batch: the weights are those of a later batch
        steps = (self.params or {}).get("steps")
        if _internals.is_intercepted(self.model) and self._batches_done == steps:
            # fit's last batch of the epoch: the backup is taken at the next
            # epoch's first step instead (as an epoch backup), because an
            # iterator checkpointed after its last batch does not restore the
            # reshuffle seed of the epochs after it (TensorFlow 2.17-2.21,
            # found by the kill harness).
            if self.save_freq != "epoch":
                self._since_save += step
                if self._since_save >= self.save_freq or self._preempted:
                    self._since_save = 0
                    self._defer_to_next_step = True
            elif self._preempted:
                self._defer_to_next_step = True
            return
        if self.save_freq != "epoch":
            self._since_save += step
            if self._since_save >= self.save_freq:
                self._since_save = 0
                self._save(self._epoch, self._batches_done)
        if self._preempted:
            self._save(self._epoch, self._batches_done)
            self._exit_preempted()

    def _exit_preempted(self):
        self._release_sigterm()
        _log.warning(
            "BackupAndRestore: SIGTERM received; backup of epoch %d, batch %d written; exiting.",
            *(self._last_saved or (self._epoch, self._batches_done)),
        )
        raise SystemExit(0)

    def on_epoch_end(self, epoch, logs=None):
        self._last_batch = -1
        if self.save_freq == "epoch":
            # Saved at the next epoch's first step, after every callback's
            # on_epoch_end has updated its state for this epoch.
            self._pending_epoch_save = epoch + 1

    def on_train_end(self, logs=None):
        _internals.set_initial_epoch(self.model, None)
        _internals.release_train_function(self.model)
        self._release_sigterm()
        if self.delete_checkpoint:
            if self._writer():
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
        self._iterator = None

    # -- preemption ----------------------------------------------------------
    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._release_sigterm()
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _release_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _on_sigterm(self, signum, frame):
        if not self._preempted:
            self._preempted = True  # handled at the next batch boundary
            return
        previous = self._previous_sigterm
        self._release_sigterm()
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
