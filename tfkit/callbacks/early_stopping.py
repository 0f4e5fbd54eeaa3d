"""Early stopping with device-side best-weight snapshots, stop on NaN, resumable state."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np

from tfkit import _validation
from tfkit.callbacks import _monitor
from tfkit.callbacks._snapshot import STORAGES, DeviceSnapshot, DiskSnapshot
from tfkit.callbacks._state import CallbackState, MonitorStateMixin

__all__ = ["EarlyStopping"]


@keras.saving.register_keras_serializable(package="tfkit")
class EarlyStopping(MonitorStateMixin, keras.callbacks.Callback):
    """Stop training when a monitored quantity has stopped improving.

    A drop-in for ``keras.callbacks.EarlyStopping`` (same arguments, same
    decisions epoch by epoch) that fixes three defects (docs/keras-defects.md#early-stopping-state):

    * **Snapshots stay on the device.** With ``restore_best_weights=True`` the
      best weights are copied into ``tf.Variable`` mirrors with ``assign``
      (device to device) instead of ``model.get_weights()`` (a host copy of
      every weight at every improvement). ``snapshot="disk"`` writes
      ``model.save_weights`` files instead, for models that do not fit twice;
      each is written to a temporary file and atomically renamed into place,
      and the file is deleted when training ends.
    * **Non-finite monitor stops at once.** With ``stop_on_nonfinite=True``
      (default) a NaN/inf monitored value stops training in that epoch, and the
      best weights are restored if ``restore_best_weights`` is set.
    * **State survives a resume.** ``wait``, ``best``, ``best_epoch`` and the
      snapshot are ``tf.Variable`` objects in ``self.state`` (a ``tf.Module``):
      checkpoint them with the model, e.g.
      ``tf.train.Checkpoint(model=model, early_stopping=es.state)``. State
      restored from a checkpoint written mid-training is kept by the next
      ``on_train_begin``; otherwise ``on_train_begin`` resets it (Keras' rule, so
      an instance can be reused across ``fit`` calls). ``get_state()`` and
      ``set_state()`` give the scalar state as a plain dict.

    Decision rule (Keras'): at the end of each epoch ``>= start_from_epoch``,
    ``wait += 1``; if the value improves on ``best`` by more than ``min_delta``
    (``current + min_delta < best`` in min mode, compared as Keras compares:
    with ``keras.ops``, so Python floats in float32 and near-ties fall as in
    Keras; with ``threshold_mode="rel"``, PyTorch's ``current < best * (1 -
    min_delta)`` in float64), ``best`` is updated and ``wait`` is reset to 0
    (only if ``baseline`` is also beaten, by the same comparison). Training
    stops when ``wait >= patience`` and ``epoch > 0``. As in Keras 3, best
    weights are restored in ``on_train_end`` whether or not the stop was
    triggered. The one deliberate difference: with ``stop_on_nonfinite=True``
    (default) a NaN/inf value stops training at once; with ``False`` every
    decision is Keras' (``-inf`` counts as an improvement in min mode there).

    Args:
        monitor: Key of the logs to watch. Default ``"val_loss"``.
        min_delta: Minimum change counted as an improvement (``>= 0``). Default 0.
        patience: Epochs without improvement before stopping (``>= 0``). Default 0.
        verbose: 0 silent, 1 prints when stopping/restoring. Default 0.
        mode: ``"auto"``, ``"min"`` or ``"max"``. Default ``"auto"``.
        baseline: Value to beat before ``wait`` is reset; ``None`` for none.
        restore_best_weights: Restore the weights of the best epoch at the end. Default False.
        start_from_epoch: Epochs to ignore at the start (warm-up). Default 0.
        stop_on_nonfinite: Stop as soon as the monitored value is NaN/inf. Default True.
        threshold_mode: ``"abs"`` (Keras' ``min_delta``) or ``"rel"`` (PyTorch's). Default ``"abs"``.
        snapshot: ``"device"`` (tf.Variable mirrors) or ``"disk"``. Default ``"device"``.
        snapshot_path: File for ``snapshot="disk"`` (must end in ``.weights.h5``);
            a temporary file when ``None``.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import EarlyStopping
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> x, y = np.ones((8, 2)), np.ones((8, 1))
        >>> es = EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
        >>> _ = model.fit(x, y, epochs=3, verbose=0, callbacks=[es])
        >>> es.best_epoch >= 0
        True

    Reference: ``keras.callbacks.EarlyStopping`` (Keras 3.15).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        stop_on_nonfinite: bool = True,
        threshold_mode: str = "abs",
        snapshot: str = "device",
        snapshot_path: str | None = None,
    ):
        super().__init__()
        owner = "EarlyStopping"
        self._lookup = _monitor.MonitorLookup(owner, monitor)
        _monitor.check_choice(owner, "mode", mode, _monitor.MODES)
        _monitor.check_choice(owner, "threshold_mode", threshold_mode, _monitor.THRESHOLD_MODES)
        _monitor.check_choice(owner, "snapshot", snapshot, STORAGES)
        _monitor.check_number(owner, "min_delta", min_delta, low=0)
        _monitor.check_number(owner, "patience", patience, low=0, integer=True)
        _monitor.check_number(owner, "start_from_epoch", start_from_epoch, low=0, integer=True)
        if baseline is not None:
            _monitor.check_number(owner, "baseline", baseline)
        self.monitor = monitor
        self.min_delta = float(min_delta)
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = mode
        self.baseline = baseline
        self.restore_best_weights = _validation.check_bool(owner, "restore_best_weights", restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.stop_on_nonfinite = _validation.check_bool(owner, "stop_on_nonfinite", stop_on_nonfinite)
        self.threshold_mode = threshold_mode
        self.snapshot = snapshot
        self.snapshot_path = snapshot_path
        self.state = CallbackState(
            "early_stopping",
            wait=(0, "int64"),
            best=(math.nan, "float64"),  # NaN means "no best yet" (Keras' None)
            best_epoch=(0, "int64"),
            stopped_epoch=(0, "int64"),
            has_best_weights=(0, "int64"),
        )
        if snapshot == "device":
            self._snapshot = DeviceSnapshot("best_weights")
            self.state.best_weights = self._snapshot  # tracked: checkpoints include it
        else:
            self._snapshot = DiskSnapshot(snapshot_path)
        self._direction = None
        self._best_raw = None
        self.stopped_on_nonfinite = False

    # Keras-compatible read-only views of the state.
    @property
    def best_epoch(self) -> int:
        return self.state.get("best_epoch")

    @property
    def stopped_epoch(self) -> int:
        return self.state.get("stopped_epoch")

    def _bind_snapshot(self):
        if isinstance(self._snapshot, DeviceSnapshot):
            self._snapshot.bind(self.model.weights, self.model)
        else:
            self._snapshot.bind_model(self.model)

    def on_train_begin(self, logs=None):
        resuming = self.state.begin()
        if not resuming:
            self._snapshot.clear()
            self._best_raw = None
        self.stopped_on_nonfinite = False
        if self.restore_best_weights:
            self._bind_snapshot()

    def _take_snapshot(self, epoch: int) -> None:
        self.state.set("best_epoch", epoch)
        if self.restore_best_weights:
            self._snapshot.take()
            self.state.set("has_best_weights", 1)

    def on_epoch_end(self, epoch, logs=None):
        current = self._lookup(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self._direction is None:
            self._direction = _monitor.resolve_direction("EarlyStopping", self.monitor, self.mode, self.model)
        if not math.isfinite(current) and self.stop_on_nonfinite:
            self.state.set("stopped_epoch", epoch)
            self.stopped_on_nonfinite = True
            self.model.stop_training = True
            if self.verbose:
                print(f"Epoch {epoch + 1}: EarlyStopping: {self.monitor}={current}; stopping.")
            return
        if self.restore_best_weights and not self.state.get("has_best_weights"):
            # Keras: before any improvement, the current weights count as the best.
            self._take_snapshot(epoch)
        wait = self.wait + 1
        # Keras compares the logged value itself (dtype included) with its best.
        raw = logs.get(self.monitor)
        if self._improves(raw, current, self._best_reference()):
            self.state.set("best", current)
            self._best_raw = raw
            self._take_snapshot(epoch)
            if self.baseline is None or self._improves(raw, current, self.baseline):
                wait = 0
            self.state.set("wait", wait)
            return
        self.state.set("wait", wait)
        if wait >= self.patience and epoch > 0:
            self.state.set("stopped_epoch", epoch)
            self.model.stop_training = True

    def _best_reference(self):
        """Keras' ``self.best``: the logged value, or (after a resume) the stored float."""
        best = self.best
        if best is None:
            return None
        raw = getattr(self, "_best_raw", None)
        return raw if raw is not None and float(np.asarray(raw)) == best else best

    def _improves(self, raw, current: float, reference) -> bool:
        if self.threshold_mode == "rel":  # PyTorch's rule (float64, as PyTorch)
            if reference is None:
                return _monitor.is_improvement(current, None, self._direction, 0.0, "rel")
            return _monitor.is_improvement(
                current, float(np.asarray(reference)), self._direction, self.min_delta, "rel"
            )
        return _monitor.keras_is_improvement(raw, reference, self._direction, self.min_delta)

    def on_train_end(self, logs=None):
        if self.verbose and self.stopped_epoch > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.state.get("has_best_weights"):
            if self._snapshot.restore() and self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
        elif self.stopped_on_nonfinite:
            warnings.warn(
                f"EarlyStopping stopped on a non-finite `{self.monitor}` without a snapshot to "
                "restore (restore_best_weights=False); the model's weights may be non-finite.",
                stacklevel=2,
            )
        # A disk snapshot is deleted with its temporary directory: nothing leaks
        # from one fit to the next (the device mirrors stay for reuse).
        self._snapshot.release()
        self.state.end()

    def get_config(self) -> dict:
        return {
            "monitor": self.monitor, "min_delta": self.min_delta, "patience": self.patience,
            "verbose": self.verbose, "mode": self.mode, "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch, "stop_on_nonfinite": self.stop_on_nonfinite,
            "threshold_mode": self.threshold_mode, "snapshot": self.snapshot,
            "snapshot_path": self.snapshot_path,
        }

    @classmethod
    def from_config(cls, config: dict) -> EarlyStopping:
        return cls(**config)
