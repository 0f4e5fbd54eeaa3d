"""Reduce the learning rate on a plateau, whatever the learning rate is (float, variable, schedule)."""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np

from tfkit.callbacks import _monitor
from tfkit.callbacks._optimizer_access import (
    base_optimizer,
    is_schedule,
    last_used_learning_rate,
    raw_learning_rate,
    refresh_train_function,
    to_numpy,
)
from tfkit.callbacks._state import CallbackState, MonitorStateMixin
from tfkit.callbacks.scaled_schedule import ScaledSchedule

__all__ = ["ReduceLROnPlateau"]


@keras.saving.register_keras_serializable(package="tfkit")
class ReduceLROnPlateau(MonitorStateMixin, keras.callbacks.Callback):
    """Reduce the learning rate when a monitored quantity stops improving.

    Keras' ``ReduceLROnPlateau`` raises ``TypeError`` when the optimizer's
    learning rate is a ``LearningRateSchedule`` (docs/keras-defects.md#reduce-lr-on-schedule). This one works
    for any learning rate:

    * **float / variable**: as Keras, ``lr <- max(lr * factor, min_lr)`` is
      assigned to the optimizer's learning-rate variable.
    * **schedule**: in ``on_train_begin`` the schedule is wrapped once in
      ``ScaledSchedule(schedule, multiplier)`` (before Keras traces the train
      step), and a reduction does ``multiplier <- multiplier * factor``. The
      schedule keeps its shape; the effective rate is
      ``multiplier * schedule(step)``. ``min_lr`` bounds the *reduction*: the
      multiplier is never lowered so far that the current effective rate falls
      below ``min_lr`` (the schedule's own decay is not clamped).

    The multiplier is a ``tf.Variable`` read in-graph (no retrace when it
    changes), stored in the optimizer's config (``.keras`` files reload the
    reduced rate) and mirrored in ``self.state`` with the counters (``wait``,
    ``best``, ``cooldown_counter``) for ``tf.train.Checkpoint`` resumes; see
    ``tfkit.callbacks.EarlyStopping`` for the resume rule.

    In a custom loop driven through ``keras.callbacks.CallbackList``, call
    ``on_train_begin`` before the step function is first traced: the wrapper
    must be in place when the graph reads the learning rate.

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
        _monitor.check_number(owner, "factor", factor, minimum=0, maximum=1,
                              min_inclusive=False, max_inclusive=False)
        _monitor.check_number(owner, "patience", patience, minimum=0, integer=True)
        _monitor.check_number(owner, "cooldown", cooldown, minimum=0, integer=True)
        _monitor.check_number(owner, "min_delta", min_delta, minimum=0)
        _monitor.check_number(owner, "min_lr", min_lr, minimum=0)
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
            multiplier=(1.0, "float64"),
        )
        self._direction = None
        self._scaled = None

    @property
    def cooldown_counter(self) -> int:
        return self.state.get("cooldown_counter")

    @property
    def multiplier(self) -> float:
        """Product of the reductions applied on top of a schedule (1.0 for a float rate)."""
        return self.state.get("multiplier")

    def on_train_begin(self, logs=None):
        resuming = self.state.begin()
        optimizer = base_optimizer(self.model)
        lr = raw_learning_rate(optimizer)
        self._scaled = None
        if is_schedule(lr):
            if not isinstance(lr, ScaledSchedule):
                strategy = getattr(self.model, "distribute_strategy", None)
                with strategy.scope() if strategy is not None else contextlib.nullcontext():
                    lr = ScaledSchedule(lr, 1.0)
                optimizer.learning_rate = lr
                refresh_train_function(self.model)
            self._scaled = lr
            if resuming:
                lr.multiplier.assign(self.multiplier)
            else:
                # A schedule reduced in an earlier fit stays reduced (as Keras' float rate does).
                self.state.set("multiplier", float(lr.multiplier.numpy()))
        elif callable(lr) and not isinstance(lr, keras.Variable):
            raise TypeError(
                "ReduceLROnPlateau: the optimizer's learning rate is a plain callable "
                f"({lr!r}); use a float, a variable or a keras LearningRateSchedule."
            )

    def on_epoch_end(self, epoch, logs=None):
        optimizer = base_optimizer(self.model)
        if logs is not None:
            # As Keras' callback, but the rate of the last update, and a
            # HyperparameterLogger placed earlier keeps its (identical) value.
            logs.setdefault("learning_rate", last_used_learning_rate(optimizer))
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
                if self._reduce(optimizer, epoch):
                    cooldown_counter = self.cooldown
                    wait = 0
        self.state.set("wait", wait)
        self.state.set("cooldown_counter", cooldown_counter)

    def _reduce(self, optimizer, epoch) -> bool:
        current_lr = float(to_numpy(optimizer.learning_rate))
        if not current_lr > np.float32(self.min_lr):
            return False
        if self._scaled is None:
            new_lr = max(current_lr * self.factor, self.min_lr)
            optimizer.learning_rate = new_lr
            message = f"learning rate to {new_lr}"
        else:
            multiplier = float(self._scaled.multiplier.numpy())
            schedule_now = current_lr / multiplier
            new_multiplier = max(multiplier * self.factor, self.min_lr / schedule_now)
            self._scaled.multiplier.assign(new_multiplier)
            self.state.set("multiplier", new_multiplier)
            message = f"learning-rate multiplier to {new_multiplier}"
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing {message}.")
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

