"""``Cyclic``: cyclical learning rates (PyTorch ``CyclicLR``)."""

from __future__ import annotations

import math

import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_choice,
    check_name,
    check_number,
    check_rate,
    register,
    resolve_dtype,
)

MODES = ("triangular", "triangular2", "exp_range")


@register
class Cyclic(ScheduleBase):
    """Cyclical learning rate between ``initial_learning_rate`` and ``maximal_learning_rate``.

    Formula (PyTorch ``CyclicLR``; ``L = step_size + step_size_down``,
    ``r = step_size / L``)::

        cycle = floor(step / L) + 1;   x = (step mod L) / L
        h = x / r                   if x <= r   (rising)
            (1 - x) / (1 - r)       otherwise   (falling)
        lr = initial_learning_rate + (maximal_learning_rate - initial_learning_rate) * h * scale
        scale = 1                            mode "triangular"
                1 / 2 ** (cycle - 1)         mode "triangular2"
                gamma ** step                mode "exp_range"

    ``step`` counts real optimizer updates from 0 (PyTorch's ``last_epoch``
    after as many ``scheduler.step()`` calls). The position in the cycle is
    computed in float64, so the triangle stays exact at steps near 2**40.
    The schedule never ends.

    Args:
        initial_learning_rate: lower bound (PyTorch ``base_lr``), >= 0.
        maximal_learning_rate: upper bound (PyTorch ``max_lr``), >= 0.
        step_size: steps of the rising half (PyTorch ``step_size_up``), >= 1.
        step_size_down: steps of the falling half, >= 1 (None: ``step_size``).
            The cycle length ``step_size + step_size_down`` must be finite.
        mode: ``"triangular"`` (default), ``"triangular2"`` or ``"exp_range"``.
        gamma: ``exp_range`` decay per step, in (0, 1] (default 1.0).
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = Cyclic(0.001, 0.01, step_size=10, mode="triangular2")
        >>> [round(float(s(t)), 4) for t in (0, 5, 10, 20, 30, 40)]
        [0.001, 0.0055, 0.01, 0.001, 0.0055, 0.001]

    Reference: ``torch.optim.lr_scheduler.CyclicLR`` (equal, all three modes);
    Smith, "Cyclical Learning Rates for Training Neural Networks" (2017).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        maximal_learning_rate: float,
        step_size: float,
        step_size_down: float | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate, maximal_learning_rate)
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.maximal_learning_rate = check_rate(
            owner, "maximal_learning_rate", maximal_learning_rate, self.dtype
        )
        self.step_size = check_number(owner, "step_size", step_size, low=1)
        self.step_size_down = (
            None
            if step_size_down is None
            else check_number(owner, "step_size_down", step_size_down, low=1)
        )
        if not math.isfinite(self.step_size + self._down):
            raise ValueError(
                f"{owner}: `step_size + step_size_down` (the cycle length) must be finite; "
                f"received step_size={step_size!r}, step_size_down={step_size_down!r}."
            )
        self.mode = check_choice(owner, "mode", mode, MODES)
        self.gamma = check_number(owner, "gamma", gamma, low=0, low_open=True, high=1)
        self.name = check_name(owner, name)

    @property
    def _down(self) -> float:
        return self.step_size if self.step_size_down is None else self.step_size_down

    def _peak(self) -> float:
        return max(self.initial_learning_rate, self.maximal_learning_rate)

    def _compute(self, step):
        up = self.step_size
        down = self._down
        length = tf.constant(up + down, tf.float64)
        cycles_done = tf.floor(step / length)
        # The position in the cycle, divided only by the half lengths (both >= 1):
        # a ratio of the halves could be subnormal, which TF flushes to 0.
        position = tf.clip_by_value(step - cycles_done * length, 0.0, up + down)
        height = tf.where(position <= up, position / up, (up + down - position) / down)
        if self.mode == "triangular2":
            height = height * tf.pow(tf.constant(0.5, tf.float64), cycles_done)
        elif self.mode == "exp_range":
            height = height * tf.pow(tf.constant(self.gamma, tf.float64), step)
        low = tf.constant(self.initial_learning_rate, self.dtype)
        high = tf.constant(self.maximal_learning_rate, self.dtype)
        return low + (high - low) * tf.cast(height, self.dtype)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "maximal_learning_rate": self.maximal_learning_rate,
            "step_size": self.step_size,
            "step_size_down": self.step_size_down,
            "mode": self.mode,
            "gamma": self.gamma,
            "name": self.name,
            "dtype": self.dtype,
        }
