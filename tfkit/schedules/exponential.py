"""Exponential-family decays: ``ExponentialDecay``, ``NaturalExpDecay``, ``InverseTimeDecay``."""

from __future__ import annotations

import math

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


class _DecayBase(ScheduleBase):
    """Shared constructor: ``initial_learning_rate, decay_steps, decay_rate, staircase``."""

    _rate_allowed = {"low": 0.0}

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.decay_steps = check_number(owner, "decay_steps", decay_steps, low=1)
        self.decay_rate = check_number(owner, "decay_rate", decay_rate, **self._rate_allowed)
        self.staircase = check_bool(owner, "staircase", staircase)
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return self.initial_learning_rate

    def _progress(self, step):
        """``step / decay_steps`` (floored when ``staircase``), float64."""
        p = step / tf.constant(self.decay_steps, tf.float64)
        return tf.floor(p) if self.staircase else p

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
            "dtype": self.dtype,
        }


@register
class ExponentialDecay(_DecayBase):
    """Exponential decay: ``lr * decay_rate ** (step / decay_steps)``.

    Formula::

        p = step / decay_steps            (floor(p) when staircase=True)
        lr(step) = initial_learning_rate * decay_rate ** p

    ``step`` counts real optimizer updates from 0. The exponent is formed in
    float64 so the value stays exact at very large steps; it tends to 0 and
    never becomes negative.

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        decay_steps: steps per factor of ``decay_rate``, >= 1.
        decay_rate: in (0, 1]. Growth (> 1) is rejected: it overflows to inf
            long before step 2**40.
        staircase: decay in discrete jumps every ``decay_steps``.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5)
        >>> round(float(s(100)), 6), round(float(s(200)), 6)
        (0.05, 0.025)

    Reference: ``keras.optimizers.schedules.ExponentialDecay`` (equal).
    """

    _rate_allowed = {"low": 0.0, "low_open": True, "high": 1.0}

    def _compute(self, step):
        # rate ** p == exp(p * ln(rate)); the product is formed in float64.
        exponent = self._progress(step) * tf.constant(math.log(self.decay_rate), tf.float64)
        factor = tf.cast(tf.exp(exponent), self.dtype)
        return tf.constant(self.initial_learning_rate, self.dtype) * factor


@register
class NaturalExpDecay(_DecayBase):
    """Natural exponential decay: ``lr * exp(-decay_rate * step / decay_steps)``.

    Formula::

        p = step / decay_steps            (floor(p) when staircase=True)
        lr(step) = initial_learning_rate * exp(-decay_rate * p)

    ``step`` counts real optimizer updates from 0.

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        decay_steps: >= 1.
        decay_rate: >= 0.
        staircase: decay in discrete jumps every ``decay_steps``.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = NaturalExpDecay(0.1, decay_steps=10, decay_rate=0.5)
        >>> round(float(s(20)), 6)  # 0.1 * exp(-1)
        0.036788

    Reference: TF1 ``tf.compat.v1.train.natural_exp_decay`` (equal, staircase too).
    """

    def _compute(self, step):
        exponent = -tf.constant(self.decay_rate, tf.float64) * self._progress(step)
        factor = tf.cast(tf.exp(exponent), self.dtype)
        return tf.constant(self.initial_learning_rate, self.dtype) * factor


@register
class InverseTimeDecay(_DecayBase):
    """Inverse-time decay: ``lr / (1 + decay_rate * step / decay_steps)``.

    Formula::

        p = step / decay_steps            (floor(p) when staircase=True)
        lr(step) = initial_learning_rate / (1 + decay_rate * p)

    ``step`` counts real optimizer updates from 0.

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        decay_steps: >= 1.
        decay_rate: >= 0.
        staircase: decay in discrete jumps every ``decay_steps``.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = InverseTimeDecay(0.1, decay_steps=10, decay_rate=1.0)
        >>> round(float(s(10)), 6)
        0.05

    Reference: ``keras.optimizers.schedules.InverseTimeDecay`` and TF1
    ``tf.compat.v1.train.inverse_time_decay`` (equal).
    """

    def _compute(self, step):
        denominator = 1.0 + tf.constant(self.decay_rate, tf.float64) * self._progress(step)
        factor = tf.cast(1.0 / denominator, self.dtype)
        return tf.constant(self.initial_learning_rate, self.dtype) * factor
