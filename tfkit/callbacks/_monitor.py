"""Shared pieces of the monitoring callbacks: argument checks, improvement test, log lookup.

Private to ``tfkit.callbacks``. ``EarlyStopping`` and ``ReduceLROnPlateau``
follow Keras' ``MonitorCallback`` semantics (``mode``, ``min_delta``) and add
PyTorch's ``threshold_mode``; unlike Keras, an unknown ``mode`` is an error
instead of a silent fallback to ``"auto"``.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

MODES = ("auto", "min", "max")
THRESHOLD_MODES = ("abs", "rel")
_INT64_MAX = 2**63 - 1


def check_choice(owner: str, name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: `{name}` must be one of {allowed}; received {name}={value!r}.")


def check_number(
    owner: str, name: str, value, *, minimum=None, maximum=None, integer=False,
    min_inclusive=True, max_inclusive=True,
) -> None:
    """Raise a ValueError/TypeError naming ``name`` unless ``value`` is a finite number in range."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise TypeError(f"{owner}: `{name}` must be {what}; received {name}={value!r} "
                        f"of type {type(value).__name__}.")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond float range (10**400)
        finite = False
    if not finite or (integer and abs(value) > _INT64_MAX):
        raise ValueError(f"{owner}: `{name}` must be finite and fit an int64/float; "
                         f"received {name}={value!r:.80}.")
    low_ok = minimum is None or (value >= minimum if min_inclusive else value > minimum)
    high_ok = maximum is None or (value <= maximum if max_inclusive else value < maximum)
    if not (low_ok and high_ok):
        low = "" if minimum is None else f"{minimum} {'<=' if min_inclusive else '<'} "
        high = "" if maximum is None else f" {'<=' if max_inclusive else '<'} {maximum}"
        raise ValueError(f"{owner}: `{name}` must satisfy {low}{name}{high}; received {name}={value!r}.")


def resolve_direction(owner: str, monitor: str, mode: str, model=None) -> str:
    """Return "min" or "max" for ``monitor`` (Keras' rule for ``mode="auto"``)."""
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name == "loss":
        return "min"
    for metric in _all_metrics(model):
        direction = getattr(metric, "_direction", None)
        if metric.name == name and direction in ("up", "down"):
            return "max" if direction == "up" else "min"
    raise ValueError(
        f"{owner}: cannot infer whether monitor={monitor!r} should be minimised or "
        "maximised; pass mode='min' or mode='max'."
    )


def _all_metrics(model):
    metrics = []
    for metric in getattr(model, "metrics", None) or []:
        # Keras groups compiled metrics in containers that hold the real ones.
        metrics.extend(getattr(metric, "metrics", None) or [metric])
    return metrics


def is_improvement(current: float, best: float | None, direction: str,
                   min_delta: float, threshold_mode: str) -> bool:
    """True if ``current`` beats ``best`` by more than ``min_delta``.

    ``abs`` (Keras): ``current < best - min_delta`` (min) / ``current > best + min_delta`` (max).
    ``rel`` (PyTorch): ``current < best * (1 - min_delta)`` / ``current > best * (1 + min_delta)``.
    A first value (``best is None``) is always an improvement; a non-finite value never is.
    """
    if not math.isfinite(current):
        return False
    if best is None:
        return True
    if threshold_mode == "rel":
        bound = best * (1 - min_delta) if direction == "min" else best * (1 + min_delta)
    else:
        bound = best - min_delta if direction == "min" else best + min_delta
    return current < bound if direction == "min" else current > bound


class MonitorLookup:
    """Reads ``monitor`` from logs; warns once (listing the keys present) when it is missing."""

    def __init__(self, owner: str, monitor: str):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{owner}: `monitor` must be a non-empty string; received monitor={monitor!r}.")
        self.owner = owner
        self.monitor = monitor
        self._warned = False

    def __call__(self, logs) -> float | None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{self.owner} monitors `{self.monitor}`, which is not in the logs. "
                    f"Available keys: {sorted(logs)}. (This warning is shown once.)",
                    stacklevel=3,
                )
            return None
        return float(np.asarray(value))
