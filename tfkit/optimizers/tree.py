"""Walking chains of wrapped optimizers.

tfkit wraps optimizers (``LossScaleOptimizer(GradientAccumulator(AdamW(...)))``).
Every wrapper, Keras' own ``LossScaleOptimizer`` included, exposes the wrapped
optimizer as ``inner_optimizer``; these helpers follow that attribute so that
callbacks can find the optimizer that owns the learning rate and momentum, and
the one that owns the loss scale, without knowing the wrapping order.

Example:
    >>> import keras
    >>> from tfkit.optimizers import innermost
    >>> sgd = keras.optimizers.SGD(0.1)
    >>> innermost(keras.optimizers.LossScaleOptimizer(sgd)) is sgd
    True
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

__all__ = ["optimizer_chain", "innermost", "find_in_chain"]


def optimizer_chain(optimizer: keras.optimizers.Optimizer) -> Iterator[keras.optimizers.Optimizer]:
    """Yield ``optimizer`` and then each ``inner_optimizer`` below it, outermost first."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        yield optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)


def innermost(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Return the optimizer at the bottom of a wrapper chain (the one that updates weights)."""
    *_, last = optimizer_chain(optimizer)
    return last


def find_in_chain(optimizer: keras.optimizers.Optimizer, attribute: str):
    """Return the outermost optimizer in the chain that has ``attribute``, or ``None``."""
    for opt in optimizer_chain(optimizer):
        if hasattr(opt, attribute):
            return opt
    return None
