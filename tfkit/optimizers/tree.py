"""Walking optimizer trees: wrappers, parameter groups, any nesting.

tfkit wraps optimizers (``LossScaleOptimizer(GradientAccumulator(AdamW(...)))``)
and Keras' ``MultiOptimizer`` splits the variables between sub-optimizers
(PyTorch's parameter groups). A wrapper exposes the optimizer it wraps as
``inner_optimizer`` (Keras' ``LossScaleOptimizer``, tfkit's
``LossScaleOptimizer`` and ``GradientAccumulator``); a ``MultiOptimizer``
exposes its sub-optimizers as ``optimizers``. These helpers follow both, so
callbacks find the *leaf* optimizers (the ones that update weights and own a
learning rate and momentum) and the wrappers (loss scale, accumulation
window) without knowing the wrapping order.

Example:
    >>> import keras
    >>> from tfkit.optimizers import innermost, parameter_groups
    >>> sgd = keras.optimizers.SGD(0.1, name="sgd")
    >>> innermost(keras.optimizers.LossScaleOptimizer(sgd)) is sgd
    True
    >>> list(parameter_groups(keras.optimizers.LossScaleOptimizer(sgd)))
    ['sgd']
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

__all__ = [
    "find_in_chain",
    "innermost",
    "is_container",
    "leaves",
    "optimizer_chain",
    "parameter_groups",
    "walk",
]


def optimizer_chain(optimizer: keras.optimizers.Optimizer) -> Iterator[keras.optimizers.Optimizer]:
    """Yield ``optimizer`` and then each ``inner_optimizer`` below it, outermost first."""
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        yield optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)


def innermost(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Return the optimizer at the bottom of a wrapper chain (a leaf or a ``MultiOptimizer``)."""
    *_, last = optimizer_chain(optimizer)
    return last


def find_in_chain(optimizer: keras.optimizers.Optimizer, attribute: str):
    """Return the outermost optimizer in the chain that has ``attribute``, or ``None``."""
    for opt in optimizer_chain(optimizer):
        if hasattr(opt, attribute):
            return opt
    return None


def _children(optimizer) -> list:
    inner = getattr(optimizer, "inner_optimizer", None)
    if isinstance(inner, keras.optimizers.Optimizer):
        return [inner]
    # keras.optimizers.MultiOptimizer (a Keras newer than 3.10, e.g. 3.15): the public ``optimizers``
    # property lists the sub-optimizers, in the order they were registered.
    subs = getattr(type(optimizer), "optimizers", None)
    if isinstance(subs, property):
        subs = optimizer.optimizers
        if isinstance(subs, (list, tuple)) and all(
            isinstance(s, keras.optimizers.Optimizer) for s in subs
        ):
            return list(subs)
    return []


def is_container(optimizer) -> bool:
    """True for an optimizer that delegates to others: a wrapper or a ``MultiOptimizer``.

    A ``MultiOptimizer`` given a selector function has no sub-optimizers until
    it is built; it is still a container (never a leaf that owns a rate).
    """
    if isinstance(getattr(optimizer, "inner_optimizer", None), keras.optimizers.Optimizer):
        return True
    return isinstance(getattr(type(optimizer), "optimizers", None), property)


def walk(optimizer: keras.optimizers.Optimizer) -> Iterator[keras.optimizers.Optimizer]:
    """Yield every optimizer of the tree, parents before children (each once)."""
    seen, stack = set(), [optimizer]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(reversed(_children(node)))


def leaves(optimizer: keras.optimizers.Optimizer) -> list[keras.optimizers.Optimizer]:
    """The optimizers of the tree that update weights themselves (never a container, see :func:`is_container`)."""
    return [node for node in walk(optimizer) if not is_container(node)]


def parameter_groups(
    optimizer: keras.optimizers.Optimizer,
) -> dict[str, keras.optimizers.Optimizer]:
    """``{group name: leaf optimizer}``; the name is the leaf's ``name``.

    Keras already numbers default names (``"sgd"``, ``"sgd_1"``, ... in
    creation order); two leaves given the same ``name=`` are told apart by
    their position (``"head"``, ``"head_1"``). Give the sub-optimizers of a
    ``MultiOptimizer`` their own ``name=`` to get stable keys.
    """
    groups: dict[str, keras.optimizers.Optimizer] = {}
    for leaf in leaves(optimizer):
        name, i = leaf.name, 0
        while name in groups:
            i += 1
            name = f"{leaf.name}_{i}"
        groups[name] = leaf
    return groups
