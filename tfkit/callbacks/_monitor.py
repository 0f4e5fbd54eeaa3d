"""Shared pieces of the monitoring callbacks: argument checks, improvement test, log lookup.

Private to ``tfkit.callbacks``. ``EarlyStopping`` and ``ReduceLROnPlateau``
follow Keras' ``MonitorCallback`` semantics (``mode``, ``min_delta``) and add
PyTorch's ``threshold_mode``; unlike Keras, an unknown ``mode`` is an error
instead of a silent fallback to ``"auto"``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from tfkit import _internals, _validation

MODES = ("auto", "min", "max")
THRESHOLD_MODES = ("abs", "rel")


# Argument checks: the package's one module (one message shape).
check_choice = _validation.check_choice
check_number = _validation.check_number


def resolve_direction(owner: str, monitor: str, mode: str, model=None) -> str:
    """Return "min" or "max" for ``monitor`` (Keras' rule for ``mode="auto"``)."""
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name == "loss":
        return "min"
    for metric in _all_metrics(model):
        direction = _internals.metric_direction(metric)
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


def keras_is_improvement(current, reference, direction: str, min_delta: float) -> bool:
    """Keras' ``MonitorCallback._is_improvement``, decision for decision.

    Keras compares ``current + min_delta < reference`` (min; ``current -
    min_delta > reference`` for max) with ``keras.ops``: Python floats are
    compared in float32 (floatx), float64 NumPy values in float64. Near-ties
    (two losses within float32 rounding of ``min_delta``) therefore fall the
    way Keras lets them fall, which float64 arithmetic would not reproduce.
    A first value (``reference is None``) is always an improvement.
    """
    import keras

    if reference is None:
        return True
    if direction == "min":
        return bool(keras.ops.less(current - (-min_delta), reference))
    return bool(keras.ops.greater(current - min_delta, reference))


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
