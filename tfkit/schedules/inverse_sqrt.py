"""``InverseSqrtDecay``: the Transformer / T5 inverse-square-root decay."""

from __future__ import annotations

import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_name,
    check_number,
    check_rate,
    register,
    resolve_dtype,
)


@register
class InverseSqrtDecay(ScheduleBase):
    """Inverse-square-root decay: ``lr / sqrt(1 + step / timescale)``.

    Formula::

        lr(step) = initial_learning_rate * sqrt(timescale / (step + timescale))

    ``step`` counts real optimizer updates from 0; the rate is
    ``initial_learning_rate`` at step 0 and halves by step ``3 * timescale``.
    It never ends (it tends to 0). After ``Warmup(..., warmup_steps=W)`` with
    ``timescale=W`` it is the original Transformer schedule
    ``peak * sqrt(W / step)`` for ``step >= W`` (Vaswani et al. write it as
    ``d_model**-0.5 * min(step**-0.5, step * W**-1.5)``).

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        timescale: steps over which the decay acts, >= 1 (default 10000,
            Hugging Face's default without warmup).
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = InverseSqrtDecay(0.1, timescale=100)
        >>> [round(float(s(t)), 4) for t in (0, 300, 9900)]
        [0.1, 0.05, 0.01]

    Reference: Hugging Face ``get_inverse_sqrt_schedule`` (equal after its
    warmup, see ``get_scheduler``); big_vision's ``rsqrt`` schedule; Vaswani et
    al., "Attention Is All You Need" (2017), section 5.3.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        timescale: float = 10_000,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.timescale = check_number(owner, "timescale", timescale, low=1)
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return self.initial_learning_rate

    def _compute(self, step):
        factor = tf.math.rsqrt(1.0 + step / tf.constant(self.timescale, tf.float64))
        return tf.constant(self.initial_learning_rate, self.dtype) * tf.cast(factor, self.dtype)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "timescale": self.timescale,
            "name": self.name,
            "dtype": self.dtype,
        }
