"""PyTorch's per-epoch ``scheduler.step()`` for Keras: a factor per epoch, in-graph."""

from __future__ import annotations

import math

import keras

from tfkit.optimizers.hyperparameters import install_for

__all__ = ["EpochScheduler"]


@keras.saving.register_keras_serializable(package="tfkit")
class EpochScheduler(keras.callbacks.Callback):
    """Scale the learning rate once per epoch by ``schedule(epoch)``.

    Every update *applied* during epoch ``e`` uses, for every parameter group ``g``,

        lr_g = schedule(e) * rate_g(step) * plateau_multiplier

    where ``rate_g`` is the group's own rate (a float or a step schedule):
    PyTorch's ``LambdaLR``/``MultiStepLR`` rule (a factor on the initial rate),
    whatever the optimizer tree. At ``on_epoch_begin`` it writes
    ``schedule(e)`` into each group's ``epoch_scale`` (a variable of
    :class:`tfkit.optimizers.HyperparameterState`, read in-graph: no retrace);
    that knob means exactly this factor and nothing else. Under gradient
    accumulation an update belongs to the epoch in which it is applied.
    ``ReduceLROnPlateau`` reductions are kept (a separate multiplier), unlike
    Keras' ``LearningRateScheduler`` which overwrites them. Resuming with
    ``fit(initial_epoch=k)`` starts from ``schedule(k)``. The last epoch's
    factor stays in place after ``fit`` (as PyTorch's rate does).

    Args:
        schedule: callable ``epoch -> factor`` (e.g. a
            ``keras.optimizers.schedules.PiecewiseConstantDecay`` over epochs
            with values ``[1.0, 0.1, 0.01]`` for PyTorch's ``MultiStepLR``
            milestones); values finite and >= 0.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import EpochScheduler, HyperparameterLogger
        >>> steps = keras.optimizers.schedules.PiecewiseConstantDecay([1], [1.0, 0.1])  # epoch <= 1: 1.0
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.1), "mse")
        >>> h = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=4, verbose=0,
        ...               callbacks=[EpochScheduler(steps), HyperparameterLogger()])
        >>> [round(v, 6) for v in h.history["learning_rate"]]
        [0.1, 0.1, 0.01, 0.01]

    Reference: ``torch.optim.lr_scheduler.LambdaLR`` / ``MultiStepLR``
    (``scheduler.step()`` once per epoch).
    """

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"EpochScheduler: `schedule` must be callable (epoch -> factor); received schedule={schedule!r}."
            )
        self.schedule = schedule
        self._groups = {}

    def _factor(self, epoch: int) -> float:
        value = float(keras.ops.convert_to_numpy(self.schedule(epoch)))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"EpochScheduler: `schedule({epoch})` must be finite and >= 0; received {value!r}."
            )
        return value

    def on_train_begin(self, logs=None):
        self._groups = install_for("EpochScheduler", self.model)

    def on_epoch_begin(self, epoch, logs=None):
        factor = self._factor(epoch)
        for state in self._groups.values():
            state.epoch_scale.assign(factor)

    def get_config(self) -> dict:
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}

    @classmethod
    def from_config(cls, config: dict) -> EpochScheduler:
        return cls(keras.saving.deserialize_keras_object(config["schedule"]))
