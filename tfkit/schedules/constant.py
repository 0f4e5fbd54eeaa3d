"""``Constant``: the same learning rate at every step."""

from __future__ import annotations

import tensorflow as tf

from tfkit.schedules._base import ScheduleBase, check_name, check_rate, register, resolve_dtype


@register
class Constant(ScheduleBase):
    """A constant learning rate.

    Formula::

        lr(step) = learning_rate

    The neutral piece of the family: the stable phase of a ``Join``, a factor
    of 1 in a ``Product``, or a warmup target with ``Warmup(Constant(lr), W)``
    (Hugging Face's ``constant_with_warmup``).

    Args:
        learning_rate: the rate, >= 0.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = Constant(0.1)
        >>> [round(float(s(t)), 4) for t in (0, 10, 10**9)]
        [0.1, 0.1, 0.1]

    Reference: ``torch.optim.lr_scheduler.LambdaLR`` with ``lambda step: 1``
    (Hugging Face's ``get_constant_schedule``).
    """

    def __init__(
        self,
        learning_rate: float,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, learning_rate)
        self.learning_rate = check_rate(owner, "learning_rate", learning_rate, self.dtype)
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return self.learning_rate

    def _compute(self, step):
        # Elementwise like every tfkit schedule: one value per step given.
        return tf.fill(tf.shape(step), tf.constant(self.learning_rate, self.dtype))

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "name": self.name, "dtype": self.dtype}
