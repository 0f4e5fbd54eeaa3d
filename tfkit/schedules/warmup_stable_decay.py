"""``WarmupStableDecay``: warmup, a long constant phase, then a short decay (WSD)."""

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

WARMUP_TYPES = ("linear", "cosine", "1-sqrt")
DECAY_TYPES = ("linear", "cosine", "1-sqrt")
# cos(2 * pi * num_cycles * p) needs a finite argument.
_MAX_CYCLES = 1e300


@register
class WarmupStableDecay(ScheduleBase):
    """Warmup-stable-decay: ramp up, hold ``learning_rate``, decay to ``alpha * learning_rate``.

    Formula (``W, S, D`` = warmup, stable, decay steps; ``f(x) = (1 - alpha) * x + alpha``)::

        step < W:              p = step / W
                               lr * f(p)                        warmup_type "linear"
                               lr * f(0.5 * (1 - cos(pi * p)))  warmup_type "cosine"
                               lr * f(1 - sqrt(1 - p))          warmup_type "1-sqrt"
        W <= step < W + S:     lr
        W + S <= step < W+S+D: p = (step - W - S) / D
                               lr * f(1 - p)                                  decay "linear"
                               lr * f(0.5 * (1 + cos(2 pi num_cycles p)))     decay "cosine"
                               lr * f(1 - sqrt(p))                            decay "1-sqrt"
        step >= W + S + D:     alpha * lr

    ``step`` counts real optimizer updates from 0. The warmup starts from
    ``alpha * learning_rate`` and the decay ends there; past the end the
    schedule holds ``alpha * learning_rate`` (with the default
    ``num_cycles=0.5`` that is where the cosine ends; other values jump to it,
    as Hugging Face's does). The three phase lengths are separate arguments,
    so none includes another.

    Args:
        learning_rate: the stable (peak) rate, >= 0.
        warmup_steps: >= 0.
        stable_steps: >= 0.
        decay_steps: >= 0.
        alpha: start of the warmup and end of the decay as a fraction of
            ``learning_rate``, in [0, 1] (default 0; Hugging Face's ``min_lr_ratio``).
        warmup_type: ``"linear"`` (default), ``"cosine"`` or ``"1-sqrt"``.
        decay_type: ``"cosine"`` (default), ``"linear"`` or ``"1-sqrt"``.
        num_cycles: cosine waves over the decay, >= 0 (default 0.5: a half
            cosine from ``learning_rate`` down to ``alpha * learning_rate``).
        name: optional name scope.
        dtype: ``"float32"`` (default) or ``"float64"``.

    Example:
        >>> s = WarmupStableDecay(0.1, warmup_steps=10, stable_steps=80, decay_steps=10,
        ...                       decay_type="1-sqrt")
        >>> [round(float(s(t)), 4) for t in (0, 5, 10, 89, 90, 95, 100)]
        [0.0, 0.05, 0.1, 0.1, 0.1, 0.0293, 0.0]

    Reference: Hugging Face ``get_wsd_schedule`` (equal at every step);
    Hu et al., "MiniCPM" (2024); Hägele et al., "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations" (2024) for the
    1-sqrt cooldown.
    """

    def __init__(
        self,
        learning_rate: float,
        warmup_steps: int,
        stable_steps: int,
        decay_steps: int,
        alpha: float = 0.0,
        warmup_type: str = "linear",
        decay_type: str = "cosine",
        num_cycles: float = 0.5,
        name: str | None = None,
        dtype: str | None = None,
    ):
        owner = type(self).__name__
        self.dtype = resolve_dtype(owner, dtype, learning_rate)
        self.learning_rate = check_rate(owner, "learning_rate", learning_rate, self.dtype)
        self.warmup_steps = check_number(owner, "warmup_steps", warmup_steps, low=0, integer=True)
        self.stable_steps = check_number(owner, "stable_steps", stable_steps, low=0, integer=True)
        self.decay_steps = check_number(owner, "decay_steps", decay_steps, low=0, integer=True)
        self.alpha = check_number(owner, "alpha", alpha, low=0, high=1)
        self.warmup_type = check_choice(owner, "warmup_type", warmup_type, WARMUP_TYPES)
        self.decay_type = check_choice(owner, "decay_type", decay_type, DECAY_TYPES)
        self.num_cycles = check_number(owner, "num_cycles", num_cycles, low=0, high=_MAX_CYCLES)
        self.name = check_name(owner, name)

    def _peak(self) -> float:
        return self.learning_rate

    def _compute(self, step):
        pi = tf.constant(math.pi, tf.float64)
        w, s, d = (float(v) for v in (self.warmup_steps, self.stable_steps, self.decay_steps))
        # Each phase's p is clipped to [0, 1] so unused branches stay finite.
        p = tf.clip_by_value(step / max(w, 1.0), 0.0, 1.0)
        if self.warmup_type == "linear":
            up = p
        elif self.warmup_type == "cosine":
            up = 0.5 * (1.0 - tf.cos(pi * p))
        else:
            up = 1.0 - tf.sqrt(1.0 - p)
        q = tf.clip_by_value((step - w - s) / max(d, 1.0), 0.0, 1.0)
        if self.decay_type == "linear":
            down = 1.0 - q
        elif self.decay_type == "cosine":
            down = 0.5 * (
                1.0 + tf.cos(tf.constant(2.0 * math.pi * self.num_cycles, tf.float64) * q)
            )
        else:
            down = 1.0 - tf.sqrt(q)
        # Warmup and decay run from alpha to 1; the stable phase is exactly 1 and
        # the end exactly alpha (no rounding through (1 - alpha) * x + alpha).
        alpha = self.alpha
        ramp = tf.where(step < w, up, down)
        factor = tf.where(
            (step >= w) & (step < w + s),
            tf.ones_like(step),
            tf.where(step < w + s + d, (1.0 - alpha) * ramp + alpha, alpha * tf.ones_like(step)),
        )
        return tf.constant(self.learning_rate, self.dtype) * tf.cast(factor, self.dtype)

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "stable_steps": self.stable_steps,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "warmup_type": self.warmup_type,
            "decay_type": self.decay_type,
            "num_cycles": self.num_cycles,
            "name": self.name,
            "dtype": self.dtype,
        }
