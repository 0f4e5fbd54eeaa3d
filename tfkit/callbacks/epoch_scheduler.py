"""PyTorch's per-epoch ``scheduler.step()`` for Keras: a rate per epoch, in-graph."""

from __future__ import annotations

import math

import keras

from tfkit import _internals
from tfkit.optimizers.hyperparameters import install_for

__all__ = ["EpochScheduler"]


@keras.saving.register_keras_serializable(package="tfkit")
class EpochScheduler(keras.callbacks.Callback):
    """Set the learning rate once per epoch from ``schedule(epoch)``.

    Every update *applied* during epoch ``e`` uses

        lr = schedule(e) * plateau_multiplier                    (one optimizer, float rate)
        lr = schedule(e) * rate(step) * plateau_multiplier       (one optimizer, step schedule)
        lr_g = schedule(e) / schedule(0) * rate_g(step) * ...    (MultiOptimizer group g)

    i.e. the epoch rate replaces a constant rate, multiplies a step schedule
    (warmup inside epochs, say), and scales every parameter group keeping
    their ratios. At ``on_epoch_begin`` it writes the factor into each group's
    ``epoch_scale`` (a variable of :class:`tfkit.optimizers.HyperparameterState`,
    read in-graph: no retrace); under gradient accumulation an update belongs
    to the epoch in which it is applied, whatever epoch its first micro-batch
    came from. ``ReduceLROnPlateau`` reductions are kept (a separate
    multiplier), unlike Keras' ``LearningRateScheduler`` which overwrites
    them. Resuming with ``fit(initial_epoch=k)`` starts from ``schedule(k)``.
    The last epoch's factor stays in place after ``fit`` (as PyTorch's rate does).

    Args:
        schedule: callable ``epoch -> rate`` (e.g. a
            ``keras.optimizers.schedules.PiecewiseConstantDecay`` over epochs
            for PyTorch's ``MultiStepLR`` milestones); values finite and >= 0,
            ``schedule(0) > 0``.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import EpochScheduler, HyperparameterLogger
        >>> steps = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])  # epoch <= 1: 0.1
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(1.0), "mse")
        >>> h = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=4, verbose=0,
        ...               callbacks=[EpochScheduler(steps), HyperparameterLogger()])
        >>> [round(v, 6) for v in h.history["learning_rate"]]
        [0.1, 0.1, 0.01, 0.01]

    Reference: ``torch.optim.lr_scheduler`` (``scheduler.step()`` once per epoch).
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"EpochScheduler: `schedule` must be callable (epoch -> rate); received schedule={schedule!r}."
            )
        self.schedule = schedule
        self._groups = {}
        self._first = None

    def _rate(self, epoch: int) -> float:
        value = float(keras.ops.convert_to_numpy(self.schedule(epoch)))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"EpochScheduler: schedule({epoch}) must be finite and >= 0; received {value!r}."
            )
        return value

    def on_train_begin(self, logs=None):
        self._groups = install_for("EpochScheduler", self.model)
        self._first = self._rate(0)
        if not self._first > 0:
            raise ValueError(f"EpochScheduler: schedule(0) must be > 0; received {self._first!r}.")

    def on_epoch_begin(self, epoch, logs=None):
        rate = self._rate(epoch)
        if len(self._groups) > 1:
            for state in self._groups.values():
                state.epoch_scale.assign(rate / self._first)
            return
        (state,) = self._groups.values()
        leaf = state.optimizer
        if _internals.learning_rate_is_constant(leaf):
            base = float(keras.ops.convert_to_numpy(_internals.base_current_learning_rate(leaf)))
            if not base > 0:
                raise ValueError(
                    f"EpochScheduler: the optimizer's learning rate is {base!r}; it must be > 0 "
                    "to be replaced by schedule(epoch)."
                )
            state.epoch_scale.assign(rate / base)
        else:
            state.epoch_scale.assign(rate)

    def get_config(self) -> dict:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}

    @classmethod
    def from_config(cls, config: dict) -> EpochScheduler:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]))
