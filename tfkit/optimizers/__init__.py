"""Everything optimizer-shaped: wrappers, optimizer trees, the hyperparameter control plane.

* :class:`GradientAccumulator` -- ``k`` micro-batches, one real update.
* :func:`walk`, :func:`leaves`, :func:`parameter_groups`, :func:`optimizer_chain`,
  :func:`innermost`, :func:`find_in_chain` -- follow ``inner_optimizer``
  (``LossScaleOptimizer`` / ``GradientAccumulator``) and ``optimizers``
  (Keras' ``MultiOptimizer``) down to the leaf optimizers.
* :func:`control` and :class:`HyperparameterState` -- per leaf, in-graph
  learning-rate multiplier, epoch scale, scheduled momentum, and the values the
  last real update applied; :func:`attach` for custom loops.
* :func:`layerwise_decay` -- layer-wise learning-rate decay as ``MultiOptimizer`` groups.

The loss-scaling wrapper lives with the rest of mixed precision, in
:mod:`tfkit.precision`.
"""

from tfkit.optimizers.gradient_accumulator import GradientAccumulator
from tfkit.optimizers.hyperparameters import (
    ControlledLearningRate,
    HyperparameterState,
    attach,
    control,
    is_controlled,
)
from tfkit.optimizers.layerwise_decay import LayerwiseDecay, layerwise_decay
from tfkit.optimizers.tree import (
    find_in_chain,
    innermost,
    is_container,
    leaves,
    optimizer_chain,
    parameter_groups,
    walk,
)

__all__ = [
    "ControlledLearningRate",
    "GradientAccumulator",
    "HyperparameterState",
    "LayerwiseDecay",
    "attach",
    "control",
    "find_in_chain",
    "innermost",
    "is_container",
    "is_controlled",
    "layerwise_decay",
    "leaves",
    "optimizer_chain",
    "parameter_groups",
    "walk",
]
