"""Reduce the learning rate on a plateau, whatever the learning rate is (float, schedule, groups)."""

from __future__ import annotations

import math

import keras
import numpy as np

from tfkit.callbacks import _monitor
from tfkit.callbacks._state import CallbackState, MonitorStateMixin
from tfkit.callbacks.hyperparameter_logger import learning_rate_logs
from tfkit.optimizers.hyperparameters import install_for

__all__ = ["ReduceLROnPlateau"]


@keras.saving.register_keras_serializable(package="tfkit")
class ReduceLROnPlateau(MonitorStateMixin, keras.callbacks.Callback):
    """Reduce the learning rate when a monitored quantity stops improving.

    Keras' ``ReduceLROnPlateau`` raises ``TypeError`` when the optimizer's
    learning rate is a ``LearningRateSchedule``
    (docs/keras-defects.md#reduce-lr-on-schedule), and ``AttributeError`` on a
    ``MultiOptimizer``. This one works on any optimizer tree: a reduction
    multiplies the ``learning_rate_multiplier`` of every parameter group's
    :class:`tfkit.optimizers.HyperparameterState` by the same factor, so the
    groups keep their ratios and every schedule keeps its shape; the rate an
    update applies is ``multiplier * rate(step)``. ``min_lr`` bounds the
    *reduction*: the factor is never so small that the largest group's current
    rate falls below ``min_lr`` (the schedule's own decay is not clamped).

    The product of the reductions lives in one place, the groups' multiplier:
    a variable read in-graph (no retrace when it changes), tracked by the
    optimizer (``tf.train.Checkpoint(optimizer=...)`` saves it) and carried by
    ``BackupAndRestore`` with the other knobs. ``self.state`` holds the
    counters (``wait``, ``best``, ``cooldown_counter``) for resumes; see
    ``tfkit.callbacks.EarlyStopping`` for the resume rule.

    In a custom loop driven through ``keras.callbacks.CallbackList``, call
    ``on_train_begin`` before the step function is first traced (with an
    uncompiled model, create ``tfkit.TrainStep`` first).

    Decision rule (Keras'): at each epoch end, in cooldown the counter
    decreases and ``wait = 0``; an improvement (``min_delta``, ``threshold_mode``
    as in ``EarlyStopping``) resets ``wait``; otherwise, out of cooldown,
    ``wait += 1`` and when ``wait >= patience`` the rate is reduced, the
    cooldown starts and ``wait = 0``. (PyTorch reduces when ``wait > patience``:
    PyTorch's ``patience=p`` is ``patience=p + 1`` here.)

    Args:
        monitor: Key of the logs to watch. Default ``"val_loss"``.
        factor: Multiplier applied at each reduction, ``0 < factor < 1``. Default 0.1.
        patience: Epochs without improvement before a reduction (``>= 0``). Default 10.
        verbose: 0 silent, 1 prints each reduction. Default 0.
        mode: ``"auto"``, ``"min"`` or ``"max"``. Default ``"auto"``.
        min_delta: Threshold for an improvement (``>= 0``). Default 1e-4.
        cooldown: Epochs to wait after a reduction before counting again (``>= 0``). Default 0.
        min_lr: Lower bound on the (effective) learning rate (``>= 0``). Default 0.
        threshold_mode: ``"abs"`` (Keras) or ``"rel"`` (PyTorch's default). Default ``"abs"``.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import ReduceLROnPlateau
        >>> sched = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(sched), "mse")
        >>> cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
        >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, verbose=0, callbacks=[cb])
        >>> cb.multiplier  # first epoch sets `best`, the next two reduce
        0.25

    Reference: ``keras.callbacks.ReduceLROnPlateau``;
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (``threshold_mode``).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        threshold_mode: str = "abs",
    ):
        super().__init__()
        owner = "ReduceLROnPlateau"
        self._lookup = _monitor.MonitorLookup(owner, monitor)
        _monitor.check_choice(owner, "mode", mode, _monitor.MODES)
        _monitor.check_choice(owner, "threshold_mode", threshold_mode, _monitor.THRESHOLD_MODES)
        _monitor.check_number(owner, "factor", factor, low=0, high=1,
                              low_open=True, high_open=True)
        _monitor.check_number(owner, "patience", patience, low=0, integer=True)
        _monitor.check_number(owner, "cooldown", cooldown, low=0, integer=True)
        _monitor.check_number(owner, "min_delta", min_delta, low=0)
        _monitor.check_number(owner, "min_lr", min_lr, low=0)
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = mode
        self.min_delta = float(min_delta)
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.threshold_mode = threshold_mode
        self.state = CallbackState(
            "reduce_lr_on_plateau",
            wait=(0, "int64"),
            best=(math.nan, "float64"),
            cooldown_counter=(0, "int64"),
        )
        self._direction = None
        self._groups = {}

    @property
    def cooldown_counter(self) -> int:
        return self.state.get("cooldown_counter")

    @property
    def multiplier(self) -> float:
        """The groups' ``learning_rate_multiplier``: the product of the reductions (1.0 before fit)."""
        if not self._groups:
            return 1.0
        return float(next(iter(self._groups.values())).learning_rate_multiplier.numpy())

    def on_train_begin(self, logs=None):
        self.state.begin()
        # A rate reduced in an earlier fit stays reduced (as Keras' float rate does).
        self._groups = install_for("ReduceLROnPlateau", self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            # As Keras' callback: the rate(s) before this epoch's reduction; a
            # HyperparameterLogger placed earlier wrote the same values.
            for key, value in learning_rate_logs(self._groups).items():
                logs.setdefault(key, value)
        current = self._lookup(logs)
        if current is None:
            return
        if self._direction is None:
            self._direction = _monitor.resolve_direction("ReduceLROnPlateau", self.monitor, self.mode, self.model)
        wait, cooldown_counter = self.wait, self.cooldown_counter
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if _monitor.is_improvement(current, self.best, self._direction, self.min_delta, self.threshold_mode):
            self.state.set("best", current)
            wait = 0
        elif cooldown_counter <= 0:
            wait += 1
            if wait >= self.patience:
                if self._reduce(epoch):
                    cooldown_counter = self.cooldown
                    wait = 0
        self.state.set("wait", wait)
        self.state.set("cooldown_counter", cooldown_counter)

    def _reduce(self, epoch) -> bool:
        largest = max(state.learning_rate() for state in self._groups.values())
        if not largest > np.float32(self.min_lr):
            return False
        factor = max(self.factor, self.min_lr / largest)
        for state in self._groups.values():
            multiplier = float(state.learning_rate_multiplier.numpy()) * factor
            if not (math.isfinite(multiplier) and multiplier > 0):
                raise ValueError(f"ReduceLROnPlateau: the learning-rate multiplier became {multiplier!r}.")
            state.learning_rate_multiplier.assign(multiplier)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing the learning rate(s) by {factor:g} "
                  f"(multiplier {self.multiplier:g}).")
        return True

    def on_train_end(self, logs=None):
        self.state.end()

    def get_config(self) -> dict:
        return {
            "monitor": self.monitor, "factor": self.factor, "patience": self.patience,
            "verbose": self.verbose, "mode": self.mode, "min_delta": self.min_delta,
            "cooldown": self.cooldown, "min_lr": self.min_lr, "threshold_mode": self.threshold_mode,
        }

    @classmethod
    def from_config(cls, config: dict) -> ReduceLROnPlateau:
        return cls(**config)

