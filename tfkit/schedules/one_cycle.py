"""``OneCycle`` (PyTorch ``OneCycleLR``) and its momentum curve ``OneCycleMomentum``."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_bool,
    check_choice,
    check_name,
    check_number,
    check_rate,
    register,
    resolve_dtype,
)

ANNEAL_STRATEGIES = ("cos", "linear")


def _phase_ends(owner: str, total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """Last step of each phase, exactly as PyTorch computes them (may be fractional)."""
    ends = [float(pct_start * total_steps) - 1]
    if three_phase:
        ends.append(float(2 * pct_start * total_steps) - 2)
    ends.append(float(total_steps - 1))
    starts = [0.0, *ends[:-1]]
    for start, end in zip(starts, ends, strict=True):
        if not end > start:
            raise ValueError(
                f"{owner}: every phase needs a positive length, but pct_start={pct_start!r} with "
                f"total_steps={total_steps!r}{' and three_phase=True' if three_phase else ''} "
                f"gives phase end steps {ends}; `pct_start * total_steps` must exceed 1"
                + (
                    " and `2 * pct_start * total_steps` must be < total_steps + 1."
                    if three_phase
                    else "."
                )
            )
    return ends


def _anneal(step, ends: list[float], points: list[float], strategy: str):
    """Piecewise anneal through ``points`` (one more than phases), float64.

    Phase ``i`` covers ``ends[i-1] < step <= ends[i]`` (phase 0 from 0): the
    same phase choice and ``pct`` as PyTorch. ``step`` is held at the last end.
    """
    step = tf.minimum(step, tf.constant(ends[-1], tf.float64))
    result = None
    start = 0.0
    for i, end in enumerate(ends):
        pct = tf.clip_by_value((step - start) / (end - start), 0.0, 1.0)
        a, b = points[i], points[i + 1]
        if strategy == "cos":
            value = b + (a - b) / 2.0 * (tf.cos(tf.constant(math.pi, tf.float64) * pct) + 1.0)
        else:
            value = (b - a) * pct + a
        # Later phases win once the step is past the previous phase's end.
        result = value if result is None else tf.where(step > start, value, result)
        start = end
    return result


class _OneCycleShape(ScheduleBase):
    """Arguments shared by the learning-rate and momentum curves."""

    def _init_shape(self, owner, total_steps, pct_start, anneal_strategy, three_phase):
        self.total_steps = check_number(owner, "total_steps", total_steps, low=2, integer=True)
        self.pct_start = check_number(
            owner, "pct_start", pct_start, low=0, low_open=True, high=1, high_open=True
        )
        self.anneal_strategy = check_choice(
            owner, "anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES
        )
        self.three_phase = check_bool(owner, "three_phase", three_phase)
        self._ends = _phase_ends(owner, self.total_steps, self.pct_start, self.three_phase)

    def _curve(self, step, points):
        value = _anneal(step, self._ends, points, self.anneal_strategy)
        return tf.cast(tf.maximum(value, 0.0), self.dtype)


@register
class OneCycle(_OneCycleShape):
    """The 1cycle policy: warm up to ``max_learning_rate``, then anneal far below the start.

    Formula (PyTorch ``OneCycleLR``; ``a = max_learning_rate / div_factor``,
    ``z = a / final_div_factor``, ``p = pct_start * total_steps``)::

        two phases:    a -> max  on [0, p - 1],      max -> z on (p - 1, total_steps - 1]
        three phases:  a -> max  on [0, p - 1],      max -> a on (p - 1, 2p - 2],
                       a -> z    on (2p - 2, total_steps - 1]
        within a phase from u to v over [s0, s1]:  pct = (step - s0) / (s1 - s0)
            "cos":     v + (u - v) / 2 * (1 + cos(pi * pct))
            "linear":  u + (v - u) * pct

    ``step`` counts real optimizer updates from 0: ``OneCycle(...)(0)`` is the
    rate PyTorch's optimizer holds right after constructing ``OneCycleLR``
    and ``(k)`` the rate after ``k`` calls of ``scheduler.step()``; the two agree
    for ``k`` in ``[0, total_steps - 1]``. Past ``total_steps - 1`` (where
    PyTorch raises) the schedule holds its final value ``z``.

    The momentum half of the policy is ``momentum_schedule``: a schedule of
    its own (``OneCycleMomentum``) giving PyTorch's momentum / ``beta_1`` for
    every step, for a callback or optimizer wrapper to apply.

    Args:
        max_learning_rate: the peak rate, >= 0.
        total_steps: number of optimizer updates in the cycle, >= 2.
        pct_start: fraction of the steps spent increasing, in (0, 1), default 0.3.
        anneal_strategy: ``"cos"`` (default) or ``"linear"``.
        div_factor: ``initial rate = max_learning_rate / div_factor``, > 0 (25).
        final_div_factor: ``final rate = initial rate / final_div_factor``, > 0 (1e4).
        three_phase: use the three-phase variant (fast.ai / Smith).
        cycle_momentum: whether ``momentum_schedule`` exists (True) or is None.
        base_momentum: momentum at the peak learning rate, in [0, 1] (0.85).
        max_momentum: momentum at the start and the end, in [0, 1] (0.95).
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = OneCycle(max_learning_rate=0.1, total_steps=100)
        >>> [round(float(s(t)), 5) for t in (0, 29, 99, 10**6)]
        [0.004, 0.1, 0.0, 0.0]
        >>> round(float(s.momentum_schedule(29)), 3)
        0.85

    Reference: ``torch.optim.lr_scheduler.OneCycleLR`` (equal for the rate and
    the momentum, two/three phases, cos/linear); Smith & Topin,
    "Super-Convergence" (2018).
    """

    def __init__(
        self,
        max_learning_rate: float,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, max_learning_rate)
        self.max_learning_rate = check_rate(
            owner, "max_learning_rate", max_learning_rate, self.dtype
        )
        self._init_shape(owner, total_steps, pct_start, anneal_strategy, three_phase)
        self.div_factor = check_number(owner, "div_factor", div_factor, low=0, low_open=True)
        self.final_div_factor = check_number(
            owner, "final_div_factor", final_div_factor, low=0, low_open=True
        )
        largest = float(np.finfo(self.dtype).max)
        if max(self.initial_learning_rate, self.final_learning_rate) > largest:
            raise ValueError(
                f"{owner}: `div_factor` and `final_div_factor` must give start and final rates "
                f"that {self.dtype} can represent; received div_factor={div_factor!r}, "
                f"final_div_factor={final_div_factor!r} (start "
                f"{self.initial_learning_rate!r}, final {self.final_learning_rate!r})."
            )
        self.cycle_momentum = check_bool(owner, "cycle_momentum", cycle_momentum)
        self.base_momentum = check_number(owner, "base_momentum", base_momentum, low=0, high=1)
        self.max_momentum = check_number(owner, "max_momentum", max_momentum, low=0, high=1)
        self.name = check_name(owner, name)

    @property
    def initial_learning_rate(self) -> float:
        return self.max_learning_rate / self.div_factor

    @property
    def final_learning_rate(self) -> float:
        return self.initial_learning_rate / self.final_div_factor

    def _peak(self) -> float:
        return max(self.initial_learning_rate, self.max_learning_rate, self.final_learning_rate)

    def _compute(self, step):
        a, peak, z = self.initial_learning_rate, self.max_learning_rate, self.final_learning_rate
        points = [a, peak, a, z] if self.three_phase else [a, peak, z]
        return self._curve(step, points)

    @property
    def momentum_schedule(self) -> OneCycleMomentum | None:
        """PyTorch ``OneCycleLR``'s momentum per step, or None when ``cycle_momentum=False``."""
        if not self.cycle_momentum:
            return None
        return OneCycleMomentum(
            total_steps=self.total_steps,
            pct_start=self.pct_start,
            anneal_strategy=self.anneal_strategy,
            three_phase=self.three_phase,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
            name=None if self.name is None else f"{self.name}_momentum",
            dtype=self.dtype,
        )

    def get_config(self) -> dict:
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "three_phase": self.three_phase,
            "cycle_momentum": self.cycle_momentum,
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
            "name": self.name,
            "dtype": self.dtype,
        }


@register
class OneCycleMomentum(_OneCycleShape):
    """The momentum (or Adam ``beta_1``) curve of the 1cycle policy, per optimizer update.

    Formula (PyTorch ``OneCycleLR`` with ``cycle_momentum=True``; phases and
    ``pct`` exactly as in ``OneCycle``)::

        two phases:    max_momentum -> base_momentum -> max_momentum
        three phases:  max_momentum -> base_momentum -> max_momentum -> max_momentum

    It is a ``LearningRateSchedule`` only so that it is a serializable
    callable ``step -> value``; the value is a momentum, not a rate. ``step``
    counts real optimizer updates from 0; past ``total_steps - 1`` it holds
    ``max_momentum``. Usually obtained as ``OneCycle(...).momentum_schedule``.

    Args:
        total_steps: number of optimizer updates in the cycle, >= 2.
        pct_start: fraction of the steps spent increasing the rate, in (0, 1).
        anneal_strategy: ``"cos"`` (default) or ``"linear"``.
        three_phase: use the three-phase variant.
        base_momentum: momentum at the peak learning rate, in [0, 1] (0.85).
        max_momentum: momentum at the start and the end, in [0, 1] (0.95).
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> m = OneCycleMomentum(total_steps=100)
        >>> [round(float(m(t)), 3) for t in (0, 29, 99)]
        [0.95, 0.85, 0.95]

    Reference: ``torch.optim.lr_scheduler.OneCycleLR`` (``momentum`` / ``betas[0]``).
    """

    def __init__(
        self,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        three_phase: bool = False,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, base_momentum, max_momentum)
        self._init_shape(owner, total_steps, pct_start, anneal_strategy, three_phase)
        self.base_momentum = check_number(owner, "base_momentum", base_momentum, low=0, high=1)
        self.max_momentum = check_number(owner, "max_momentum", max_momentum, low=0, high=1)
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return max(self.base_momentum, self.max_momentum)

    def _compute(self, step):
        lo, hi = self.base_momentum, self.max_momentum
        points = [hi, lo, hi, hi] if self.three_phase else [hi, lo, hi]
        return self._curve(step, points)

    def get_config(self) -> dict:
        return {
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy,
            "three_phase": self.three_phase,
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
            "name": self.name,
            "dtype": self.dtype,
        }
