"""Piecewise-constant schedules: ``PiecewiseConstantDecay`` (Keras) and ``MultiStepDecay`` (PyTorch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_increasing,
    check_name,
    check_number,
    check_rate,
    check_sequence,
    register,
    resolve_dtype,
)


@register
class PiecewiseConstantDecay(ScheduleBase):
    """A constant learning rate on each interval between boundaries.

    Formula (the same intervals as Keras ``PiecewiseConstantDecay``)::

        lr(step) = values[0]   if step <= boundaries[0]
                   values[i]   if boundaries[i-1] < step <= boundaries[i]
                   values[-1]  if step > boundaries[-1]

    ``step`` counts real optimizer updates from 0. The last value holds forever.

    Args:
        boundaries: strictly increasing non-negative step numbers.
        values: ``len(boundaries) + 1`` non-negative learning rates.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``; default float64 when
            the values are given as float64 arrays.

    Example:
        >>> s = PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])
        >>> [round(float(s(t)), 3) for t in (0, 100, 101, 201)]
        [1.0, 1.0, 0.5, 0.1]

    Reference: ``keras.optimizers.schedules.PiecewiseConstantDecay`` (equal
    at every step).
    """

    def __init__(
        self,
        boundaries: Sequence[float],
        values: Sequence[float],
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        boundaries = check_sequence(owner, "boundaries", boundaries, min_len=1)
        values = check_sequence(owner, "values", values)
        self.dtype = resolve_dtype(owner, dtype, *values)
        self.boundaries = [
            check_number(owner, f"boundaries[{i}]", b, low=0) for i, b in enumerate(boundaries)
        ]
        check_increasing(owner, "boundaries", self.boundaries)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"{owner}: `values` must have len(boundaries) + 1 = {len(boundaries) + 1} "
                f"elements; received {len(values)} values={list(values)!r}."
            )
        self.values = [
            check_rate(owner, f"values[{i}]", v, self.dtype) for i, v in enumerate(values)
        ]
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return max(self.values)

    def _compute(self, step):
        # Count the boundaries passed; the trailing axis also lets a vector of steps through.
        passed = tf.expand_dims(step, -1) > tf.constant(self.boundaries, tf.float64)
        index = tf.reduce_sum(tf.cast(passed, tf.int32), axis=-1)
        return tf.gather(tf.constant(self.values, self.dtype), index)

    def get_config(self) -> dict:
        return {
            "boundaries": self.boundaries,
            "values": self.values,
            "name": self.name,
            "dtype": self.dtype,
        }


@register
class MultiStepDecay(ScheduleBase):
    """Multiply the learning rate by ``gamma`` at each milestone (PyTorch ``MultiStepLR``).

    Formula::

        lr(step) = initial_learning_rate * gamma ** (number of milestones m with m <= step)

    Milestones are counted with repetition and in any order, as PyTorch
    counts them: ``milestones=[10, 10, 50]`` multiplies by ``gamma**2`` at
    step 10, and a milestone 0 applies from the first update. Unlike
    ``PiecewiseConstantDecay``, the new rate applies *at* the milestone step
    itself, as in PyTorch ``MultiStepLR`` and detectron2's ``WarmupMultiStepLR``.
    ``step`` counts real optimizer updates from 0 (PyTorch counts epochs or
    iterations, whichever ``scheduler.step()`` follows).

    Args:
        initial_learning_rate: the rate before the first milestone, >= 0.
        milestones: one or more integer steps >= 0, any order, repeats allowed.
        gamma: multiplicative factor, >= 0 (default 0.1). Above 1 the rate
            grows; ``initial_learning_rate * gamma**len(milestones)`` must then
            be representable in ``dtype``.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = MultiStepDecay(1.0, milestones=[80, 30, 30], gamma=0.1)
        >>> [round(float(s(t)), 4) for t in (0, 29, 30, 80)]
        [1.0, 1.0, 0.01, 0.001]

    Reference: ``torch.optim.lr_scheduler.MultiStepLR`` (equal at every step,
    unsorted, repeated and 0 milestones too).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        milestones: Sequence[int],
        gamma: float = 0.1,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        milestones = check_sequence(owner, "milestones", milestones, min_len=1)
        self.milestones = [
            check_number(owner, f"milestones[{i}]", m, low=0, integer=True)
            for i, m in enumerate(milestones)
        ]
        self.gamma = check_number(owner, "gamma", gamma, low=0)
        self.name = check_name(owner, name)
        # The k + 1 possible values, so the result is initial * gamma**k rounded
        # once, like PyTorch's repeated multiplication in float64.
        self._table = [
            _scaled(self.initial_learning_rate, self.gamma, k)
            for k in range(len(self.milestones) + 1)
        ]
        if not max(self._table) <= float(np.finfo(self.dtype).max):
            raise ValueError(
                f"{owner}: `gamma` > 1 grows the rate past what {self.dtype} can represent "
                f"after {len(self.milestones)} milestones; received gamma={gamma!r}, "
                f"initial_learning_rate={initial_learning_rate!r}."
            )

    def _peak(self) -> float:
        return max(self._table)

    def _compute(self, step):
        reached = tf.expand_dims(step, -1) >= tf.constant(self.milestones, tf.float64)
        passed = tf.reduce_sum(tf.cast(reached, tf.int32), axis=-1)
        return tf.gather(tf.constant(self._table, self.dtype), passed)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "milestones": self.milestones,
            "gamma": self.gamma,
            "name": self.name,
            "dtype": self.dtype,
        }


def _scaled(rate: float, gamma: float, k: int) -> float:
    """``rate * gamma**k`` in float64; inf when it overflows (0 stays 0)."""
    if rate == 0.0:
        return 0.0
    try:
        return rate * gamma**k
    except OverflowError:
        return math.inf
