"""The doctor's checks, one module per family, behind one registry.

Each check takes the examination context and returns a list of findings;
``CHECKS`` maps a check id (``tfkit.doctor._ids``) to it. Thresholds live in
:mod:`tfkit.doctor.checks._common`, chosen so that the healthy models of the
test suite (MLP, CNN with BatchNorm, Transformer with padding masks, mixed
precision, accumulation, recomputation) produce no warning: a false alarm is
a bug.

Families: :mod:`.numerics` (non-finite values, loss at init, zero input),
:mod:`.mixing` (batch independence), :mod:`.gradients` (gradient flow, dead
units, update ratio), :mod:`.optimization` (overfit one batch, learning rate, schedule end),
:mod:`.pipeline` (input pipeline), :mod:`.precision` (mixed-precision audit).
"""

from tfkit.doctor.checks import (  # noqa: F401 - importing a family registers its checks
    gradients,
    mixing,
    numerics,
    optimization,
    pipeline,
    precision,
)
from tfkit.doctor.checks.registry import CHECKS, register

__all__ = ["CHECKS", "register"]
