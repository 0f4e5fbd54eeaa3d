"""Cosine decays: ``CosineDecay`` and ``CosineDecayRestarts`` (SGDR), both with optional warmup."""

from __future__ import annotations

import math

import tensorflow as tf

from tfkit.schedules._base import (
    ScheduleBase,
    check_name,
    check_number,
    check_rate,
    fraction,
    register,
    resolve_dtype,
)
from tfkit.schedules.warmup import linear_ramp

# cos(2 * pi * num_cycles * frac) needs a finite argument.
MAX_CYCLES = 1e300


def cosine_factor(frac, alpha: float, num_cycles: float = 0.5):
    """``(1 - alpha) * 0.5 * (1 + cos(2 pi num_cycles frac)) + alpha``, float64 ``frac`` in [0, 1]."""
    angle = tf.constant(2.0 * math.pi * num_cycles, tf.float64)
    cosine = 0.5 * (1.0 + tf.cos(angle * frac))
    return (1.0 - alpha) * cosine + alpha


class _WarmupCosineBase(ScheduleBase):
    """Shared warmup handling: Keras' ``warmup_target``/``warmup_steps`` arguments."""

    def _init_warmup(self, owner, initial_learning_rate, warmup_target, warmup_steps):
        self.initial_learning_rate = check_rate(
            owner, "initial_learning_rate", initial_learning_rate, self.dtype
        )
        self.warmup_steps = check_number(owner, "warmup_steps", warmup_steps, low=0, integer=True)
        if warmup_target is None:
            if self.warmup_steps:
                raise ValueError(
                    f"{owner}: `warmup_steps` > 0 needs a `warmup_target` (the rate reached "
                    f"after warmup); received warmup_steps={warmup_steps!r}, warmup_target=None."
                )
            self.warmup_target = None
        else:
            self.warmup_target = check_rate(owner, "warmup_target", warmup_target, self.dtype)

    @property
    def peak(self) -> float:
        """The rate the decay starts from: ``warmup_target`` if set, else ``initial_learning_rate``."""
        return self.initial_learning_rate if self.warmup_target is None else self.warmup_target

    def _peak(self) -> float:
        return max(self.initial_learning_rate, self.peak)

    def _with_warmup(self, step, decayed_factor):
        """Warmup for ``warmup_steps``, then ``peak * decayed_factor(step - warmup_steps)``."""
        peak = tf.constant(self.peak, self.dtype)
        if not self.warmup_steps:
            return peak * tf.cast(decayed_factor(step), self.dtype)
        warmup_steps = tf.constant(float(self.warmup_steps), tf.float64)
        after = peak * tf.cast(decayed_factor(tf.maximum(step - warmup_steps, 0.0)), self.dtype)
        start = tf.constant(self.initial_learning_rate, self.dtype)
        during = linear_ramp(step, self.warmup_steps, start, peak)
        return tf.where(step < warmup_steps, during, after)


@register
class CosineDecay(_WarmupCosineBase):
    """Cosine decay (SGDR without restarts), with an optional linear warmup.

    Formula (``peak = warmup_target`` if given, else ``initial_learning_rate``)::

        step < warmup_steps:  initial_learning_rate
                                 + (peak - initial_learning_rate) * step / warmup_steps
        otherwise, s = min(step - warmup_steps, decay_steps):
            lr = peak * ((1 - alpha) * 0.5 * (1 + cos(2 pi num_cycles s / decay_steps)) + alpha)

    ``step`` counts real optimizer updates from 0. Offsets rule of tfkit: the
    decay starts after the warmup and sees ``step - warmup_steps``, so
    ``decay_steps`` does not include the warmup (as in Keras). Past
    ``warmup_steps + decay_steps`` the rate holds its final value (``alpha *
    peak`` with the default half cosine, ``num_cycles=0.5``).

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        decay_steps: length of the decay, >= 1.
        alpha: final rate as a fraction of ``peak``, in [0, 1] (default 0).
        name: optional name scope.
        warmup_target: rate reached at the end of the warmup (None: no warmup).
        warmup_steps: warmup length, >= 0; needs ``warmup_target`` when > 0.
        dtype: ``"float32"`` (default) or ``"float64"``.
        num_cycles: cosine waves over ``decay_steps``, >= 0 (default 0.5: one
            half cosine down to ``alpha * peak``; 1.0 comes back up to ``peak``).
            Hugging Face's ``num_cycles``.

    Example:
        >>> s = CosineDecay(0.0, decay_steps=100, warmup_target=0.1, warmup_steps=10)
        >>> [round(float(s(t)), 4) for t in (0, 5, 10, 60, 110, 10**9)]
        [0.0, 0.05, 0.1, 0.05, 0.0, 0.0]

    Reference: ``keras.optimizers.schedules.CosineDecay`` (equal, warmup too);
    Hugging Face ``get_cosine_schedule_with_warmup`` (see ``get_scheduler``);
    Loshchilov & Hutter, "SGDR" (2017).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        alpha: float = 0.0,
        name: str | None = None,
        warmup_target: float | None = None,
        warmup_steps: int = 0,
        dtype: str | None = None,
        num_cycles: float = 0.5,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate, warmup_target)
        self._init_warmup(owner, initial_learning_rate, warmup_target, warmup_steps)
        self.decay_steps = check_number(owner, "decay_steps", decay_steps, low=1)
        self.alpha = check_number(owner, "alpha", alpha, low=0, high=1)
        self.name = check_name(owner, name)
        self.num_cycles = check_number(owner, "num_cycles", num_cycles, low=0, high=MAX_CYCLES)

    def _compute(self, step):
        return self._with_warmup(
            step,
            lambda s: cosine_factor(fraction(s, self.decay_steps), self.alpha, self.num_cycles),
        )

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
            "dtype": self.dtype,
            "num_cycles": self.num_cycles,
        }


@register
class CosineDecayRestarts(_WarmupCosineBase):
    """Cosine decay with warm restarts (SGDR), with an optional linear warmup.

    Formula (after the warmup, with ``s = step - warmup_steps``,
    ``peak = warmup_target`` if given, else ``initial_learning_rate``)::

        cycle i has length  T_i = first_decay_steps * t_mul**i  and starts at
        S_i = first_decay_steps * (t_mul**i - 1) / (t_mul - 1)   (i * first_decay_steps if t_mul == 1)
        for S_i <= s < S_{i+1}:
            lr = peak * ((1 - alpha) * m_mul**i * 0.5 * (1 + cos(pi * (s - S_i) / T_i)) + alpha)

    The warmup, when ``warmup_steps > 0``, is the same linear ramp as
    ``CosineDecay``'s. ``step`` counts real optimizer updates from 0; the
    restarts are counted from the end of the warmup (offsets rule of tfkit:
    the decay sees ``step - warmup_steps``). The cycle index and position are
    computed in float64 and corrected against the exact cycle starts, so
    restarts land on their exact step even at steps near 2**40.

    Args:
        initial_learning_rate: rate at step 0, >= 0.
        first_decay_steps: length of the first cycle, >= 1.
        t_mul: cycle length multiplier, >= 1 (default 2.0). Below 1 the cycles
            would shrink to a finite total and the schedule would end.
        m_mul: peak multiplier per restart, in [0, 1] (default 1.0).
        alpha: floor as a fraction of ``peak``, in [0, 1] (default 0).
        name: optional name scope.
        warmup_target: rate reached at the end of the warmup (None: no warmup).
        warmup_steps: warmup length, >= 0; needs ``warmup_target`` when > 0.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = CosineDecayRestarts(0.1, first_decay_steps=10, t_mul=2.0)
        >>> [round(float(s(t)), 4) for t in (0, 5, 10, 20, 30)]
        [0.1, 0.05, 0.1, 0.05, 0.1]

    Reference: ``keras.optimizers.schedules.CosineDecayRestarts`` (equal when
    ``warmup_steps=0``); ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``
    (equal with ``T_0=first_decay_steps``, ``T_mult=t_mul``, ``m_mul=1``,
    ``alpha=eta_min / initial_learning_rate``); Loshchilov & Hutter, "SGDR" (2017).
    """

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: int,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        name: str | None = None,
        warmup_target: float | None = None,
        warmup_steps: int = 0,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, initial_learning_rate, warmup_target)
        self._init_warmup(owner, initial_learning_rate, warmup_target, warmup_steps)
        self.first_decay_steps = check_number(owner, "first_decay_steps", first_decay_steps, low=1)
        self.t_mul = check_number(owner, "t_mul", t_mul, low=1)
        self.m_mul = check_number(owner, "m_mul", m_mul, low=0, high=1)
        self.alpha = check_number(owner, "alpha", alpha, low=0, high=1)
        self.name = check_name(owner, name)

    def _cycle(self, s):
        """(cycle index, fraction of that cycle done), float64."""
        first = tf.constant(self.first_decay_steps, tf.float64)
        if self.t_mul == 1.0:
            i = tf.floor(s / first)
            return i, tf.clip_by_value((s - i * first) / first, 0.0, 1.0)
        t_mul = tf.constant(self.t_mul, tf.float64)

        def start(i):  # first step of cycle i
            return first * (tf.pow(t_mul, i) - 1.0) / (t_mul - 1.0)

        # Cycle lengths grow as t_mul**i; beyond i_max they exceed float64 range
        # (and any 2**53-step run), so the index is capped there.
        i_max = math.floor(700.0 / math.log(self.t_mul))
        i = tf.floor(tf.math.log1p(s / first * (t_mul - 1.0)) / tf.math.log(t_mul))
        i = tf.clip_by_value(i, 0.0, i_max)
        # The logarithm can land one cycle off at a restart; fix it exactly.
        i = tf.where(s < start(i), tf.maximum(i - 1.0, 0.0), i)
        i = tf.where((s >= start(i + 1.0)) & (i < i_max), i + 1.0, i)
        length = first * tf.pow(t_mul, i)
        return i, tf.clip_by_value((s - start(i)) / length, 0.0, 1.0)

    def _compute(self, step):
        def factor(s):
            i, frac = self._cycle(s)
            cosine = 0.5 * (1.0 + tf.cos(tf.constant(math.pi, tf.float64) * frac))
            return (1.0 - self.alpha) * tf.pow(
                tf.constant(self.m_mul, tf.float64), i
            ) * cosine + self.alpha

        return self._with_warmup(step, factor)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
            "dtype": self.dtype,
        }
