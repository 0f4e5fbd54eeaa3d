"""Find what is wrong with a training set-up before the hours are spent.

:func:`examine` runs the checks a practitioner otherwise does by hand (loss at
init, overfitting one batch, gradient flow, dead units, update/weight ratio,
non-finite values, batch independence, input pipeline, mixed precision,
learning rate) on a compiled model and its data, and returns a :class:`Report`.
The model and its optimizer are left bit for bit as they were. Check ids and
thresholds: ``docs/doctor.md``.
"""

from tfkit.doctor.examine import ALL_CHECKS, DEFAULT_CHECKS, examine
from tfkit.doctor.report import Finding, Report

__all__ = ["ALL_CHECKS", "DEFAULT_CHECKS", "Finding", "Report", "examine"]
