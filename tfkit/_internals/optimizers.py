"""Keras optimizer internals: variable tracking, the all-reduce, the rate object."""

from __future__ import annotations

import contextlib
import threading

# Keras' ``LossScaleOptimizer.build`` creates its variables without automatic
# dependency tracking so that they are not tracked twice; a subclass that adds
# variables there must do the same. Only importable from ``keras.src``
# (Keras 3.0 through 3.15).
from keras.src.utils.tracking import no_automatic_dependency_tracking

__all__ = [
    "all_reduce_already_done",
    "check_variables_are_known",
    "distribution_strategy",
    "learning_rate_object",
    "no_automatic_dependency_tracking",
    "optimizer_own_variables",
    "overwrites_variable_with_gradient",

    "track_variable",
    "trainable_variables",
    "variable_index",
]


def track_variable(optimizer, variable) -> None:
    """Register ``variable`` as one of ``optimizer``'s own (saved, listed in ``variables``).

    ``BaseOptimizer._track_variable`` (Keras 3.0 through 3.15): the public
    ``add_variable`` cannot create the sync-on-read, per-replica accumulators
    a ``GradientAccumulator`` needs, so the wrapper creates them and tracks them here.
    """
    optimizer._track_variable(variable)


def optimizer_own_variables(optimizer) -> list:
    """The variables ``optimizer`` created itself, without those of an inner optimizer.

    ``BaseOptimizer._variables`` (Keras 3.0 through 3.15); a wrapper's public
    ``variables`` adds its inner optimizer's to these.
    """
    return optimizer._variables


def trainable_variables(optimizer) -> list:
    """The model variables ``optimizer`` was built with (``BaseOptimizer._trainable_variables``)."""
    return optimizer._trainable_variables


def check_variables_are_known(optimizer, variables) -> None:
    """Raise Keras' own error if ``variables`` were not passed to ``optimizer.build``."""
    optimizer._check_variables_are_known(variables)


def variable_index(optimizer, variable) -> int:
    """Position of ``variable`` in ``optimizer``'s build list (for its per-variable slots)."""
    return optimizer._get_variable_index(variable)


def overwrites_variable_with_gradient(optimizer, variable) -> bool:
    """Whether Keras writes the "gradient" of ``variable`` into it directly (``overwrite_with_gradient``).

    ``BaseOptimizer._overwrite_variable_with_gradient`` (Keras 3.4 through 3.15):
    such gradients (float8 scaling factors) must not be unscaled.
    """
    return optimizer._overwrite_variable_with_gradient(variable)


def distribution_strategy(optimizer):
    """The ``tf.distribute`` strategy ``optimizer`` was created under, or ``None``.

    ``TFOptimizer._distribution_strategy`` (Keras 3.0 through 3.15): a flush
    called outside ``strategy.scope()`` must still run on the replicas that
    hold the sums.
    """
    return getattr(optimizer, "_distribution_strategy", None)


def learning_rate_object(optimizer):
    """What ``optimizer`` evaluates for its rate: a ``keras.Variable``, a schedule or a callable.

    Keras keeps it in ``BaseOptimizer._learning_rate`` (Keras 3.0 through
    3.15); the public ``learning_rate`` property only returns its value now.
    Read-only use.
    """
    return optimizer._learning_rate


_SWITCH_LOCK = threading.Lock()
_SWITCHED_OFF: dict[int, int] = {}


def _identity_reduce(grads_and_vars):
    return list(grads_and_vars)


@contextlib.contextmanager
def all_reduce_already_done(optimizer, replicas: int):
    """Let a Keras optimizer apply gradients that are already summed over replicas.

    Keras' TensorFlow optimizers all-reduce the gradients they receive in
    ``TFOptimizer._all_reduce_sum_gradients`` (Keras 3.0 through 3.15) and
    offer no argument to skip it. ``GradientAccumulator`` has reduced them
    already, together with its weights and counts, so while its window closes
    (a trace of one ``apply`` call) that method is shadowed on the inner
    optimizer instance by an identity: one collective per window instead of
    two. Yields False when this Keras has no such method (the caller then
    hands each replica its share instead). Removed as soon as the call ends:
    no instance attribute outlives it.
    """
    if replicas == 1:
        yield True
        return
    if not hasattr(optimizer, "_all_reduce_sum_gradients"):
        yield False
        return
    # MirroredStrategy traces its replicas in parallel threads: the switch is
    # reference-counted so that the first replica to finish does not switch
    # it back on under another one.
    with _SWITCH_LOCK:
        if _SWITCHED_OFF.get(id(optimizer), 0) == 0:
            optimizer._all_reduce_sum_gradients = _identity_reduce
        _SWITCHED_OFF[id(optimizer)] = _SWITCHED_OFF.get(id(optimizer), 0) + 1
    try:
        yield True
    finally:
        with _SWITCH_LOCK:
            _SWITCHED_OFF[id(optimizer)] -= 1
            if _SWITCHED_OFF[id(optimizer)] == 0:
                del _SWITCHED_OFF[id(optimizer)]
                del optimizer._all_reduce_sum_gradients


# -- control plane v1 (replaced by the next commit) ------------------------------------
def wrap_method(obj, name: str, make_wrapper) -> None:
    """Replace ``obj.name`` by ``make_wrapper(original_bound_method)`` on this instance only."""
    current = getattr(obj, name)
    if getattr(current, "_tfkit_wrapped", False):
        return
    wrapper = make_wrapper(current)
    wrapper._tfkit_wrapped = True
    object.__setattr__(obj, name, wrapper)


def base_current_learning_rate(optimizer):
    """The rate Keras itself would use now (``BaseOptimizer._get_current_learning_rate``)."""
    return type(optimizer)._get_current_learning_rate(optimizer)


def current_learning_rate_attribute() -> str:
    """Name of the method the control plane v1 shadows (``_get_current_learning_rate``)."""
    return "_get_current_learning_rate"


def learning_rate_is_constant(optimizer) -> bool:
    """True when the optimizer's rate is a variable (``BaseOptimizer._learning_rate``)."""
    import keras

    return isinstance(optimizer._learning_rate, keras.Variable)
