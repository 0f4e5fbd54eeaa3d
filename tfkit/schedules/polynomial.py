"""``PolynomialDecay``: polynomial interpolation to an end rate, optionally cyclic."""

from __future__ import annotations

import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_bool,
    check_name,
    check_number,
    check_rate,
    register,
    resolve_dtype,
)


@register
class PolynomialDecay(ScheduleBase):
    """Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate``.

    Formula (Keras ``PolynomialDecay``)::

        cycle=False:  s = min(step, decay_steps);  D = decay_steps
        cycle=True:   s = step;  D = decay_steps * max(1, ceil(step / decay_steps))
        lr(step) = (initial_learning_rate - end_learning_rate) * (1 - s / D) ** power
                   + end_learning_rate

    ``step`` counts real optimizer updates from 0. Without ``cycle`` the
    schedule holds ``end_learning_rate`` past ``decay_steps``. With ``cycle``
    it restarts from a lower rate at every multiple of ``decay_steps`` (the
    decay is stretched over the next multiple, as in TF1/Keras).

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        decay_steps: >= 1.
        end_learning_rate: final rate, >= 0 (default 1e-4). May exceed the
            initial rate, which turns the schedule into a polynomial ramp.
        power: exponent, > 0 (default 1.0: linear).
        cycle: restart after ``decay_steps`` (see formula).
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = PolynomialDecay(1.0, decay_steps=100, end_learning_rate=0.0, power=2.0)
        >>> round(float(s(50)), 6), float(s(1000))
        (0.25, 0.0)

    Reference: ``keras.optimizers.schedules.PolynomialDecay`` (equal, cycle too).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate, end_learning_rate)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.decay_steps = check_number(owner, "decay_steps", decay_steps, low=1)
        self.end_learning_rate = check_rate(
            owner, "end_learning_rate", end_learning_rate, self.dtype
        )
        self.power = check_number(owner, "power", power, low=0, low_open=True)
        self.cycle = check_bool(owner, "cycle", cycle)
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return max(self.initial_learning_rate, self.end_learning_rate)

    def _compute(self, step):
        decay_steps = tf.constant(self.decay_steps, tf.float64)
        # (D - s) / D rather than 1 - s / D: XLA turns a division by a constant
        # into a product with its reciprocal, and 1 - s * (1 / D) misses 0 at the
        # end by an ulp (a rate of 1e-20 where the formula says 0).
        if self.cycle:
            span = decay_steps * tf.maximum(tf.math.ceil(step / decay_steps), 1.0)
            remaining = (span - step) / span
        else:
            remaining = (decay_steps - tf.minimum(step, decay_steps)) / decay_steps
        factor = tf.cast(tf.pow(tf.maximum(remaining, 0.0), self.power), self.dtype)
        start = tf.constant(self.initial_learning_rate, self.dtype)
        end = tf.constant(self.end_learning_rate, self.dtype)
        return (start - end) * factor + end

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
            "dtype": self.dtype,
        }
