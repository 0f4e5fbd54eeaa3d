"""``SWALR``: anneal the learning rate to a constant SWA rate (torch's ``SWALR``)."""

from __future__ import annotations

import math

import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_choice,
    check_name,
    check_number,
    check_rate,
    fraction,
    register,
    resolve_dtype,
)

ANNEAL_STRATEGIES = ("cos", "linear")


@register
class SWALR(ScheduleBase):
    """Anneal from ``initial_learning_rate`` to ``swa_lr`` in ``anneal_steps``, then hold it.

    Formula (``t`` = fraction of the annealing done)::

        t        = min(step, anneal_steps) / anneal_steps     (1 when anneal_steps == 0)
        alpha    = (1 - cos(pi * t)) / 2    if anneal_strategy == "cos"
                 = t                        if anneal_strategy == "linear"
        lr(step) = swa_lr * alpha + initial_learning_rate * (1 - alpha)

    computed in float64 and rounded once to ``dtype``.

    This is torch's ``SWALR`` with ``anneal_epochs`` counted in this
    schedule's steps (real optimizer updates): torch blends from the rate the
    optimizer had when ``SWALR`` was created, here that rate is
    ``initial_learning_rate``. Stochastic weight averaging trains the last
    part of a run at the constant ``swa_lr``; put it after the main schedule
    with ``Join``, and start ``WeightAveraging("swa", start_step=...)`` at
    the boundary (or after the annealing).

    Args:
        initial_learning_rate: rate at the start of the annealing, >= 0.
        swa_lr: the constant SWA rate reached after ``anneal_steps``, >= 0.
        anneal_steps: length of the annealing, an integer >= 0. Default 10
            (torch's ``anneal_epochs`` default).
        anneal_strategy: ``"cos"`` (default) or ``"linear"``.
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> from tfkit.schedules import CosineDecay, Join, SWALR
        >>> s = SWALR(0.1, swa_lr=0.01, anneal_steps=4, anneal_strategy="linear")
        >>> [round(float(s(t)), 4) for t in (0, 1, 2, 4, 100)]
        [0.1, 0.0775, 0.055, 0.01, 0.01]
        >>> run = Join([CosineDecay(0.1, 100, alpha=0.5), SWALR(0.05, 0.02, 10)], boundaries=[100])
        >>> round(float(run(100)), 4), round(float(run(200)), 4)
        (0.05, 0.02)

    Reference: ``torch.optim.swa_utils.SWALR``; Izmailov et al., "Averaging
    Weights Leads to Wider Optima and Better Generalization" (2018).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        swa_lr: float,
        anneal_steps: int = 10,
        anneal_strategy: str = "cos",
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate, swa_lr)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.swa_lr = check_rate(owner, "swa_lr", swa_lr, self.dtype)
        self.anneal_steps = check_number(owner, "anneal_steps", anneal_steps, low=0, integer=True)
        self.anneal_strategy = check_choice(
            owner, "anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES
        )
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return max(self.initial_learning_rate, self.swa_lr)

    def _compute(self, step):
        if self.anneal_steps == 0:
            t = tf.ones_like(step)
        else:
            t = fraction(step, self.anneal_steps)
        # remaining = 1 - alpha, written so that it is exact near the end of the annealing.
        if self.anneal_strategy == "cos":
            remaining = (1.0 + tf.cos(tf.constant(math.pi, tf.float64) * t)) / 2.0
        else:
            remaining = 1.0 - t
        start = tf.constant(self.initial_learning_rate, tf.float64)
        end = tf.constant(self.swa_lr, tf.float64)
        # Blended in float64 (the two rates may be far apart) and rounded once.
        value = end + (start - end) * remaining
        value = tf.clip_by_value(value, tf.minimum(start, end), tf.maximum(start, end))
        return tf.cast(value, self.dtype)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "swa_lr": self.swa_lr,
            "anneal_steps": self.anneal_steps,
            "anneal_strategy": self.anneal_strategy,
            "name": self.name,
            "dtype": self.dtype,
        }
