"""``LinearCosineDecay`` (TF1 ``linear_cosine_decay``)."""

from __future__ import annotations

import math

import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_name,
    check_number,
    check_rate,
    check_representable,
    fraction,
    register,
    resolve_dtype,
)
from tfkit.schedules.cosine import MAX_CYCLES


@register
class LinearCosineDecay(ScheduleBase):
    """Linear decay multiplied by a cosine (Bello et al., Neural Optimizer Search).

    Formula (TF1 ``linear_cosine_decay``; ``f = min(step, decay_steps) / decay_steps``)::

        linear = 1 - f
        cosine = 0.5 * (1 + cos(pi * 2 * num_periods * f))
        lr = initial_learning_rate * ((alpha + linear) * cosine + beta)

    ``step`` counts real optimizer updates from 0. Past ``decay_steps`` the
    rate holds ``initial_learning_rate * (alpha * cosine(1) + beta)``.

    Args:
        initial_learning_rate: >= 0.
        decay_steps: >= 1.
        num_periods: cosine periods over the decay, in [0, 1e300] (default 0.5).
        alpha: added to the linear part, >= 0 (default 0.0).
        beta: constant floor factor, >= 0 (default 0.001). The largest rate,
            ``initial_learning_rate * (alpha + 1 + beta)``, and the factor
            ``alpha + 1 + beta`` must be representable in ``dtype``.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = LinearCosineDecay(0.1, decay_steps=100)
        >>> round(float(s(0)), 6), round(float(s(100)), 6)
        (0.1001, 0.0001)

    Reference: TF1 ``tf.compat.v1.train.linear_cosine_decay`` (equal); Bello
    et al., "Neural Optimizer Search with Reinforcement Learning" (2017).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        num_periods: float = 0.5,
        alpha: float = 0.0,
        beta: float = 0.001,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.decay_steps = check_number(owner, "decay_steps", decay_steps, low=1)
        self.num_periods = check_number(owner, "num_periods", num_periods, low=0, high=MAX_CYCLES)
        self.alpha = check_number(owner, "alpha", alpha, low=0)
        self.beta = check_number(owner, "beta", beta, low=0)
        self.name = check_name(owner, name)
        # The factor (alpha + linear) * cosine + beta peaks at most at alpha + 1 + beta;
        # both it and the rate times it must fit the dtype (0 * inf would be NaN).
        received = {"initial_learning_rate": initial_learning_rate, "alpha": alpha, "beta": beta}
        check_representable(owner, self._factor_bound, self.dtype, received)
        check_representable(owner, self._peak(), self.dtype, received)

    @property
    def _factor_bound(self) -> float:
        return self.alpha + 1.0 + self.beta

    def _peak(self) -> float:
        return self.initial_learning_rate * self._factor_bound

    def _compute(self, step):
        f = fraction(step, self.decay_steps)
        cosine = 0.5 * (1.0 + tf.cos(tf.constant(2.0 * math.pi * self.num_periods, tf.float64) * f))
        factor = (self.alpha + (1.0 - f)) * cosine + self.beta
        return tf.constant(self.initial_learning_rate, self.dtype) * tf.cast(factor, self.dtype)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "num_periods": self.num_periods,
            "alpha": self.alpha,
            "beta": self.beta,
            "name": self.name,
            "dtype": self.dtype,
        }
