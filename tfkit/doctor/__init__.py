"""Find what is wrong with a training set-up before the hours are spent.

:func:`examine` runs the checks a practitioner otherwise does by hand (loss at
init, overfitting one batch, gradient flow, dead units, update/weight ratio,
non-finite values, batch independence, input pipeline, mixed precision,
learning rate) on a compiled model and its data, and returns a :class:`Report`.
The model and its optimizer are left bit for bit as they were. Check ids and
thresholds: ``docs/doctor.md``.

The names below are imported on first use, so that ``tfkit doctor --help``
(:mod:`tfkit.cli.doctor`) does not load TensorFlow.
"""

from __future__ import annotations

import importlib

__all__ = ["ALL_CHECKS", "DEFAULT_CHECKS", "Finding", "Report", "examine"]

_HOMES = {
    "ALL_CHECKS": "tfkit.doctor._examine",
    "DEFAULT_CHECKS": "tfkit.doctor._examine",
    "examine": "tfkit.doctor._examine",
    "Finding": "tfkit.doctor.report",
    "Report": "tfkit.doctor.report",
}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfkit.doctor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
