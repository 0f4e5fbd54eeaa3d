"""A learning-rate schedule multiplied by a factor (used by ``tfkit.optimizers.layerwise_decay``)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfkit import _validation
from tfkit.schedules._base import peak_of, with_step_contract
from tfkit.schedules.finished import warn_if_finished

__all__ = ["ScaledSchedule"]


@keras.saving.register_keras_serializable(package="tfkit")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``multiplier * schedule(step)``, with the multiplier in a ``tf.Variable``.

    The schedule keeps its shape (warmup, cosine, OneCycle, ...), scaled by a
    constant factor: ``layerwise_decay`` builds its deeper groups' schedules
    this way. The multiplier is a variable read inside the traced step
    (changing it never retraces); ``get_config`` stores its current value.
    (``ReduceLROnPlateau`` no longer wraps schedules: it scales the
    optimizer's ``HyperparameterState``.)

    Formula: ``lr(step) = multiplier * schedule(step)``.

    Args:
        schedule: A ``keras.optimizers.schedules.LearningRateSchedule``.
        multiplier: Initial value of the multiplier (finite, > 0). Default 1.0.

    Example:
        >>> import keras
        >>> from tfkit.schedules import ScaledSchedule
        >>> s = ScaledSchedule(keras.optimizers.schedules.CosineDecay(0.1, 100), 0.5)
        >>> round(float(s(0)), 6)
        0.05
        >>> _ = s.multiplier.assign(0.25)
        >>> round(float(s(0)), 6)
        0.025
    """

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, multiplier: float = 1.0):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError("ScaledSchedule: `schedule` must be a keras LearningRateSchedule; "
                            f"received schedule={schedule!r} of type {type(schedule).__name__}.")
        # Held in a float32 variable: 1e39 would silently become inf there.
        value = _validation.check_float(
            "ScaledSchedule", "multiplier", multiplier, low=0, low_open=True, float_dtype="float32"
        )
        if np.float32(value) == 0:  # underflows the float32 variable: a silent rate of 0
            _validation.fail(
                "ScaledSchedule", "multiplier", multiplier, "a positive float32 (>= 1.4e-45)"
            )
        # A multiplier that would overflow the schedule's largest value is refused
        # here rather than training at inf (tfkit schedules know their peak).
        peak = peak_of(schedule)
        if peak is not None and peak * value > float(np.finfo(np.float32).max):
            _validation.fail(
                "ScaledSchedule",
                "multiplier",
                multiplier,
                f"at most {float(np.finfo(np.float32).max) / peak:g} for a schedule "
                f"whose largest value is {peak:g} (float32 overflows beyond)",
            )
        self.schedule = schedule
        self.multiplier = tf.Variable(value, dtype=tf.float32, trainable=False, name="lr_multiplier")

    def __call__(self, step):
        def scaled(step):
            lr = ops.convert_to_tensor(self.schedule(step))
            return lr * ops.cast(self.multiplier, lr.dtype)

        warn_if_finished(self, step)
        return with_step_contract("ScaledSchedule", step, scaled)

    def get_config(self) -> dict:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "multiplier": float(self.multiplier.numpy()),
        }

    @classmethod
    def from_config(cls, config: dict) -> ScaledSchedule:
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
