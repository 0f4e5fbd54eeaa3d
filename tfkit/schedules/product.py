"""``Product``: the pointwise product of schedules (PyTorch ``ChainedScheduler``)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfkit.schedules._base import (
    LearningRateSchedule,
    ScheduleBase,
    check_name,
    check_sequence,
    deserialize,
    peak_of,
    register,
    serialize,
)


@register
class Product(ScheduleBase):
    """The pointwise product of two or more schedules.

    Formula::

        lr(step) = schedules[0](step) * schedules[1](step) * ... * schedules[-1](step)

    Every factor sees the same ``step`` (the number of real optimizer updates
    from 0); none is shifted. Write the learning rate into one factor and
    unit-peak multipliers into the others. PyTorch's ``ChainedScheduler`` of
    multiplicative schedulers is such a product: ``ConstantLR(factor,
    total_iters)`` is ``Join([Constant(factor), Constant(1.0)], [total_iters])``,
    ``ExponentialLR(gamma)`` is ``ExponentialDecay(lr, 1, gamma)``. Finite
    factors hold their final value, so the product does too. The result has
    the dtype of the first schedule.

    Args:
        schedules: two or more ``LearningRateSchedule`` objects. When every
            factor is a tfkit schedule, the product of their peaks (of every
            leading run of them) must be representable in the result's dtype
            (else ``ValueError``), so the product is finite at every step.
            With a Keras schedule among them the bound is unknown and not checked.
        name: optional name scope.

    Example:
        >>> from tfkit.schedules import Constant, ExponentialDecay, Join
        >>> warm = Join([Constant(0.1), Constant(1.0)], boundaries=[2])  # ConstantLR(0.1, 2)
        >>> s = Product([warm, ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)])
        >>> [round(float(s(t)), 4) for t in (0, 1, 2, 3)]
        [0.1, 0.05, 0.25, 0.125]

    Reference: ``torch.optim.lr_scheduler.ChainedScheduler`` (equal for
    multiplicative schedulers such as ``ConstantLR``, ``LinearLR``,
    ``ExponentialLR``, ``MultiStepLR``).
    """

    def __init__(self, schedules: Sequence[LearningRateSchedule], name: str | None = None):
        owner = type(self).__name__
        schedules = [
            deserialize(s) for s in check_sequence(owner, "schedules", schedules, min_len=2)
        ]
        for i, s in enumerate(schedules):
            if not isinstance(s, LearningRateSchedule):
                raise TypeError(
                    f"{owner}: `schedules[{i}]` must be a keras.optimizers.schedules."
                    f"LearningRateSchedule; received schedules[{i}]={s!r}."
                )
        self.schedules = schedules
        self.name = check_name(owner, name)
        # Every partial product must fit, or inf * 0 would give NaN.
        peaks = [peak_of(s) for s in schedules]
        partial = [] if None in peaks else np.cumprod(np.asarray(peaks, np.float64))
        if not all(p <= float(np.finfo(self.dtype).max) for p in partial):
            raise ValueError(
                f"{owner}: `schedules` must have a product of peak rates that {self.dtype} "
                f"can represent; "
                f"received schedules={schedules!r} (peaks {peaks})."
            )

    @property
    def dtype(self) -> str:
        return getattr(self.schedules[0], "dtype", "float32")

    def _peak(self) -> float | None:
        peaks = [peak_of(s) for s in self.schedules]
        return None if None in peaks else float(np.prod(np.asarray(peaks, np.float64)))

    def _compute(self, step):
        result = self.schedules[0](step)
        for schedule in self.schedules[1:]:
            result = result * tf.cast(schedule(step), result.dtype)
        return result

    def get_config(self) -> dict:
        return {"schedules": [serialize(s) for s in self.schedules], "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> Product:
        config = dict(config)
        config["schedules"] = [
            keras.saving.deserialize_keras_object(s) for s in config["schedules"]
        ]
        return cls(**config)
