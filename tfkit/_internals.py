"""The one place where tfkit touches Keras/TensorFlow internals.

Everything here is a ``keras.src`` / ``tensorflow.python`` import or an access
to an underscore attribute of a Keras object. Each use says why it is needed
and which Keras versions it was checked against; the rest of the control
plane (``tfkit.optimizers``, ``tfkit.callbacks``, ``tfkit.tuning``) and
recompute's variable-assignment hook go through these functions only, so a
Keras upgrade that moves one of them breaks in one file.

Checked against Keras 3.10 (the oldest declared) through 3.15 unless a comment
says otherwise.
"""

from __future__ import annotations

import types

# Recompute records the value every Keras variable had before its first
# assignment in the forward pass (BatchNorm statistics, seed generators) by
# routing ``Variable.assign`` through a recorder. ``assign`` is defined on the
# backend-independent base class, which ``keras.Variable`` (the TF backend's
# subclass) does not override; that base class is only importable from
# ``keras.src`` (Keras 3.0 onwards, unchanged through 3.15).
from keras.src.backend.common.variables import Variable as KerasVariableBase

__all__ = [
    "KerasVariableBase",
    "base_current_learning_rate",
    "is_wrapped",
    "symbolic_build",
    "wrap_method",
]


def wrap_method(obj, name: str, make_wrapper) -> None:
    """Replace ``obj.name`` by ``make_wrapper(original_bound_method)`` on this instance only.

    The control plane must run code *inside* a leaf optimizer's update (to
    write the values it applies) and *instead of* its learning-rate read, for
    one optimizer object, without subclassing it (users pass plain Keras
    optimizers) and without touching its configuration (``get_config`` and the
    saved variables stay those of a plain Keras optimizer). An instance
    attribute shadows the class method for that object only; it is not
    serialized. Idempotent: an already wrapped method is left as is.
    """
    current = getattr(obj, name)
    if getattr(current, "_tfkit_wrapped", False):
        return
    wrapper = make_wrapper(current)
    wrapper._tfkit_wrapped = True
    # object.__setattr__: Keras' auto-tracking __setattr__ would try to track a
    # function attribute; a method is not state.
    object.__setattr__(obj, name, wrapper)


def is_wrapped(obj, name: str) -> bool:
    return bool(getattr(getattr(obj, name, None), "_tfkit_wrapped", False))


def base_current_learning_rate(optimizer):
    """The rate Keras itself would use now: the schedule at ``iterations``, the variable, the callable.

    ``BaseOptimizer._get_current_learning_rate`` is the single function every
    Keras optimizer's update (and weight decay) reads the rate through, and
    the public ``learning_rate`` property returns it. The control plane shadows
    it per instance (see :func:`wrap_method`); this calls the class's own
    implementation. Private in Keras 3.0 through 3.15.
    """
    return type(optimizer)._get_current_learning_rate(optimizer)


def current_learning_rate_attribute() -> str:
    """Name of the method shadowed to control the learning rate (see above)."""
    return "_get_current_learning_rate"


def symbolic_build(model, data_batch) -> bool:
    """Create model, metric and optimizer variables without running a step.

    ``Trainer._symbolic_build`` (Keras 3.0 through 3.15, private) builds them
    from a batch's specs without computing anything. Its public-facing caller
    ``_maybe_symbolic_build`` returns early under TensorFlow when no
    distribution strategy is set, leaving slots and metrics to the first traced
    step, so a snapshot taken before would miss them: call the builder itself,
    in the model's strategy scope. Returns False when this Keras has no such
    method (state is then built lazily by the first step).
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    with model.distribute_strategy.scope():
        build(data_batch=data_batch)
    return True


def bound(function, obj):
    """``function`` bound to ``obj`` as a method (for :func:`wrap_method` wrappers)."""
    return types.MethodType(function, obj)


def learning_rate_is_constant(optimizer) -> bool:
    """True when the optimizer's rate is a variable (a float), not a schedule or a callable.

    Keras keeps the object behind ``learning_rate`` in ``_learning_rate``
    (Keras 3.0 through 3.15); the public property only returns its value.
    Read-only use: ``EpochScheduler`` replaces a constant rate, but multiplies
    a step schedule.
    """
    import keras

    return isinstance(optimizer._learning_rate, keras.Variable)


def all_layers(model) -> list:
    """Every layer nested in ``model`` (not ``model`` itself), depth first.

    ``Layer._flatten_layers`` (Keras 3.0 through 3.15) also finds layers held in
    attributes of custom layers, which ``model.layers`` does not list. Used by
    ``TrainStep``/``install`` to find the BatchNormalization layers whose
    statistics follow gradient-accumulation windows.
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


def learning_rate_schedule(optimizer):
    """The ``LearningRateSchedule`` behind ``optimizer.learning_rate``, or None.

    Keras keeps it in ``_learning_rate`` (Keras 3.0 through 3.15); the public
    property returns its value at the current step. Read-only use: the
    doctor's ``schedule_end`` check asks where the schedule ends.
    """
    import keras

    rate = getattr(optimizer, "_learning_rate", None)
    return rate if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else None
