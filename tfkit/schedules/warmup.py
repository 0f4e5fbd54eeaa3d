"""``Warmup``: prepend a linear or constant warmup to any schedule."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfkit.schedules._base import (
    LearningRateSchedule,
    ScheduleBase,
    check_choice,
    check_name,
    check_number,
    check_rate,
    deserialize,
    peak_of,
    register,
    serialize,
)

WARMUP_TYPES = ("linear", "constant")


def linear_ramp(step, warmup_steps: float, start, target):
    """``start + (target - start) * step / warmup_steps`` (float64 fraction, values in their dtype).

    At ``step == warmup_steps`` this is exactly ``target``, so a warmup joins
    the schedule after it without a jump.
    """
    frac = tf.minimum(step, tf.constant(float(warmup_steps), tf.float64)) / float(warmup_steps)
    return start + (target - start) * tf.cast(frac, target.dtype)


@register
class Warmup(ScheduleBase):
    """Run a warmup for ``warmup_steps`` updates, then ``schedule`` shifted by ``warmup_steps``.

    Formula (``target = schedule(0)``)::

        step <  warmup_steps, "linear":    initial_learning_rate
                                              + (target - initial_learning_rate) * step / warmup_steps
        step <  warmup_steps, "constant":  initial_learning_rate
        step >= warmup_steps:              schedule(step - warmup_steps)

    Offsets rule of tfkit: a schedule that starts later sees ``step - start``,
    so ``schedule`` starts at its own step 0 when the warmup ends and its
    ``decay_steps`` never include the warmup. For a total budget of ``T``
    updates use ``decay_steps = T - warmup_steps``. ``step`` counts real
    optimizer updates from 0; a linear warmup reaches ``target`` exactly at
    ``step == warmup_steps``.

    Linear warmup from a small rate is the "gradual warmup" of Goyal et al.
    (2017) (e.g. ``initial_learning_rate = target / k``); constant warmup is
    the ResNet-110 recipe of He et al. (2016) (0.01 for 400 updates, then 0.1).

    Args:
        schedule: any ``LearningRateSchedule`` (tfkit's or Keras').
        warmup_steps: number of warmup updates, >= 0 (0: ``schedule`` unchanged).
        initial_learning_rate: rate at step 0 (linear) or during the whole
            warmup (constant), >= 0. Default 0.0.
        warmup_type: ``"linear"`` (default) or ``"constant"``.
        name: optional name scope.

    Example:
        >>> from tfkit.schedules import CosineDecay
        >>> s = Warmup(CosineDecay(0.1, decay_steps=900), warmup_steps=100)
        >>> [round(float(s(t)), 4) for t in (0, 50, 100, 1000)]
        [0.0, 0.05, 0.1, 0.0]

    Reference: Goyal et al., "Accurate, Large Minibatch SGD" (2017); He et al.,
    "Deep Residual Learning" (2016), section 4.2.
    """

    def __init__(
        self,
        schedule: LearningRateSchedule,
        warmup_steps: int,
        initial_learning_rate: float = 0.0,
        warmup_type: str = "linear",
        name: str | None = None,
    ):
        owner = type(self).__name__
        schedule = deserialize(schedule)
        if not isinstance(schedule, LearningRateSchedule):
            raise TypeError(
                f"{owner}: `schedule` must be a keras.optimizers.schedules.LearningRateSchedule; "
                f"received schedule={schedule!r}."
            )
        self.schedule = schedule
        self.warmup_steps = check_number(owner, "warmup_steps", warmup_steps, low=0, integer=True)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.warmup_type = check_choice(owner, "warmup_type", warmup_type, WARMUP_TYPES)
        self.name = check_name(owner, name)

    @property
    def dtype(self) -> str:
        return getattr(self.schedule, "dtype", "float32")

    def _peak(self) -> float | None:
        inner = peak_of(self.schedule)
        return None if inner is None else max(inner, self.initial_learning_rate)

    def _compute(self, step):
        if self.warmup_steps == 0:
            return self.schedule(step)
        warmup_steps = tf.constant(float(self.warmup_steps), tf.float64)
        after = self.schedule(tf.maximum(step - warmup_steps, 0.0))
        start = tf.constant(self.initial_learning_rate, after.dtype)
        if self.warmup_type == "linear":
            during = linear_ramp(step, self.warmup_steps, start, self.schedule(0))
        else:
            during = start
        return tf.where(step < warmup_steps, during, after)

    def get_config(self) -> dict:
        return {
            "schedule": serialize(self.schedule),
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
            "warmup_type": self.warmup_type,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> Warmup:
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
