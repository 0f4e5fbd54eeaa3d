"""Everything optimizer-shaped: wrappers and walking an optimizer tree.

* :class:`GradientAccumulator` -- ``k`` micro-batches, one real update.
* :func:`optimizer_chain`, :func:`innermost`, :func:`find_in_chain` -- follow
  ``inner_optimizer`` through ``LossScaleOptimizer`` / ``GradientAccumulator``
  wrappers to the optimizer that owns the learning rate.

The loss-scaling wrapper lives with the rest of mixed precision, in
:mod:`tfkit.precision`.
"""

from tfkit.optimizers.gradient_accumulator import GradientAccumulator
from tfkit.optimizers.tree import find_in_chain, innermost, optimizer_chain

__all__ = ["GradientAccumulator", "find_in_chain", "innermost", "optimizer_chain"]
