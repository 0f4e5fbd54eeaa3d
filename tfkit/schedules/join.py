"""``Join``: run schedules one after another, each from its own step 0."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfkit.schedules._base import (
    LearningRateSchedule,
    ScheduleBase,
    check_increasing,
    check_name,
    check_number,
    check_sequence,
    deserialize,
    peak_of,
    register,
    serialize,
)


@register
class Join(ScheduleBase):
    """Schedule ``i`` runs on ``[boundaries[i-1], boundaries[i])`` and sees ``step - boundaries[i-1]``.

    Formula (``b_0 = 0``, ``b_i = boundaries[i-1]``)::

        lr(step) = schedules[i](step - b_i)   for b_i <= step < b_{i+1}

    Offsets rule of tfkit: a schedule that starts later sees ``step - start``,
    so every joined schedule begins at its own step 0 and its ``decay_steps``
    count only its own segment. ``step`` counts real optimizer updates from 0.
    The last schedule runs forever (a finite one holds its final value).
    The result has the dtype of the first schedule.

    Args:
        schedules: two or more ``LearningRateSchedule`` objects.
        boundaries: ``len(schedules) - 1`` strictly increasing positive steps
            at which the next schedule takes over.
        name: optional name scope.

    Example:
        >>> from tfkit.schedules import CosineDecay, PolynomialDecay
        >>> warm = PolynomialDecay(0.0, 100, end_learning_rate=0.1)  # linear ramp
        >>> s = Join([warm, CosineDecay(0.1, decay_steps=900)], boundaries=[100])
        >>> [round(float(s(t)), 4) for t in (0, 50, 100, 1000)]
        [0.0, 0.05, 0.1, 0.0]

    Reference: ``optax.join_schedules`` (same offset rule).
    """

    def __init__(
        self,
        schedules: Sequence[LearningRateSchedule],
        boundaries: Sequence[int],
        name: str | None = None,
    ):
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
        boundaries = check_sequence(owner, "boundaries", boundaries)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"{owner}: `boundaries` must have len(schedules) - 1 = {len(schedules) - 1} "
                f"elements; received {len(boundaries)} boundaries={boundaries!r}."
            )
        self.boundaries = [
            check_number(owner, f"boundaries[{i}]", b, low=0, low_open=True, integer=True)
            for i, b in enumerate(boundaries)
        ]
        check_increasing(owner, "boundaries", self.boundaries)
        self.schedules = schedules
        self.name = check_name(owner, name)

    @property
    def dtype(self) -> str:
        return getattr(self.schedules[0], "dtype", "float32")

    def _peak(self) -> float | None:
        peaks = [peak_of(s) for s in self.schedules]
        return None if any(p is None for p in peaks) else max(peaks)

    def _compute(self, step):
        starts = [0, *self.boundaries]
        # Every piece is evaluated (scalar ops, no branches: XLA-friendly);
        # the last one whose start has been reached wins.
        result = None
        for start, schedule in zip(starts, self.schedules, strict=True):
            start = tf.constant(float(start), tf.float64)
            value = schedule(tf.maximum(step - start, 0.0))
            if result is None:
                result = value
            else:
                result = tf.where(step >= start, tf.cast(value, result.dtype), result)
        return result

    def get_config(self) -> dict:
        return {
            "schedules": [serialize(s) for s in self.schedules],
            "boundaries": self.boundaries,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> Join:
        config = dict(config)
        config["schedules"] = [
            keras.saving.deserialize_keras_object(s) for s in config["schedules"]
        ]
        return cls(**config)
