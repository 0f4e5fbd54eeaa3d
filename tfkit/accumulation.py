"""Former home of :class:`GradientAccumulator`; kept so old imports still work.

The wrapper now lives in :mod:`tfkit.optimizers` (``tfkit.optimizers.GradientAccumulator``,
also ``tfkit.GradientAccumulator``). Saved models are unaffected: Keras
serializes it as ``tfkit>GradientAccumulator`` whatever the module.
"""

from tfkit.optimizers.gradient_accumulator import GradientAccumulator

__all__ = ["GradientAccumulator"]
