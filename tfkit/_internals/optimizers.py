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
    "ScheduledFloat",
    "all_reduce_already_done",
    "clear_scheduled_float",
    "check_variables_are_known",
    "distribution_strategy",
    "learning_rate_object",
    "no_automatic_dependency_tracking",
    "optimizer_own_variables",
    "overwrites_variable_with_gradient",
    "set_learning_rate_object",
    "set_scheduled_float",
    "schedule_free_z",
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


def schedule_free_z(optimizer, variable):
    """The ``z`` slot (Keras calls it ``momentum``) of ``variable`` in a ``ScheduleFreeAdamW``.

    ``keras.optimizers.ScheduleFreeAdamW`` (Keras 3.14 through 3.15) keeps the
    slots in the private list ``_momentums`` and has no public accessor; the
    evaluation weights ``x = (y - (1 - beta_1) z) / beta_1`` need it
    (``tfkit.callbacks.ScheduleFreeEvaluation``). Read-only use.
    """
    return optimizer._momentums[optimizer._get_variable_index(variable)]


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


def set_learning_rate_object(optimizer, rate) -> None:
    """Make ``rate`` the object ``optimizer`` evaluates for its learning rate.

    Keras keeps the rate an optimizer was given in ``BaseOptimizer._learning_rate``
    and evaluates it in every update and in the ``learning_rate`` property
    (``_get_current_learning_rate``: a schedule at ``iterations``, a variable,
    or a callable with no arguments; Keras 3.0 through 3.15). The public
    setter would do the same for a callable but also untrack the float rate's
    variable, which changes ``optimizer.variables`` (and so the layout of
    saved optimizer weights); written here, the variable stays where it was.
    No method is replaced.
    """
    optimizer._learning_rate = rate


class ScheduledFloat(float):
    """A float hyperparameter (``momentum``, ``beta_1``) whose tensor value is computed in-graph.

    Keras' update rules read ``momentum`` (SGD, RMSprop) and ``beta_1`` (Adam,
    AdamW, Adamax, Nadam, Lion, Lamb) as a Python attribute of the optimizer,
    either through ``ops.cast(self.beta_1, dtype)`` or in Python arithmetic
    (``1 - self.beta_1``), and compare it with Python (``self.momentum != 0``);
    ``get_config`` returns it. There is no rate-like object Keras evaluates, so
    the attribute holds this float: as a Python ``float`` it is the nominal
    value (config, JSON, comparisons); converted to a tensor, or combined
    with one, it is ``value_fn(dtype)``, evaluated where the update converts
    it (so at that update's ``iterations``). Checked against the update rules
    of Keras 3.15.0 and 3.15.1 for the optimizers above.
    """

    dtype = float  # Keras' dtype inference treats it as a weakly typed Python float

    def __new__(cls, nominal: float, value_fn):
        obj = super().__new__(cls, nominal)
        obj.value_fn = value_fn
        return obj

    def __tf_tensor__(self, dtype=None, name=None):
        import tensorflow as tf

        return tf.identity(self.value_fn(tf.as_dtype(dtype or tf.float32)), name=name)

    def _like(self, other):
        import tensorflow as tf

        dtype = getattr(other, "dtype", None)
        try:
            dtype = tf.as_dtype(dtype) if dtype is not None and dtype is not float else tf.float32
        except TypeError:
            dtype = tf.float32
        return self.value_fn(dtype if dtype.is_floating else tf.float32)

    def __add__(self, other):
        return self._like(other) + other

    def __radd__(self, other):
        return other + self._like(other)

    def __sub__(self, other):
        return self._like(other) - other

    def __rsub__(self, other):
        return other - self._like(other)

    def __mul__(self, other):
        return self._like(other) * other

    def __rmul__(self, other):
        return other * self._like(other)

    def __truediv__(self, other):
        return self._like(other) / other

    def __rtruediv__(self, other):
        return other / self._like(other)

    def __pow__(self, other):
        return self._like(other) ** other

    def __rpow__(self, other):
        return other ** self._like(other)

    def __neg__(self):
        return -self._like(None)

    def __reduce__(self):
        return (float, (float(self),))  # copies degrade to the plain float

    def __repr__(self):
        return f"{float(self)!r}"


def set_scheduled_float(optimizer, name: str, nominal: float, value_fn) -> None:
    """Put ``ScheduledFloat(nominal, value_fn)`` in ``optimizer.name`` (a hyperparameter attribute)."""
    setattr(optimizer, name, ScheduledFloat(nominal, value_fn))


def clear_scheduled_float(optimizer, name: str) -> None:
    """Put the plain nominal float back in ``optimizer.name``."""
    value = getattr(optimizer, name, None)
    if isinstance(value, ScheduledFloat):
        setattr(optimizer, name, float(value))
