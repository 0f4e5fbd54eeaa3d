"""Finding and swapping optimizer hyperparameters through wrapper chains.

Private to ``tfkit.callbacks``. The optimizer that owns the learning rate and
momentum is the innermost one of a chain (``LossScaleOptimizer`` ->
``GradientAccumulator`` -> ``SGD``), found through ``inner_optimizer``.
"""

from __future__ import annotations

import keras

from tfkit.optimizers import innermost


def base_optimizer(model_or_optimizer):
    optimizer = getattr(model_or_optimizer, "optimizer", model_or_optimizer)
    if optimizer is None:
        raise ValueError("The model has no optimizer; compile it (or build the optimizer) first.")
    return innermost(optimizer)


def raw_learning_rate(optimizer):
    """The object behind ``optimizer.learning_rate``: a schedule, a variable or a callable.

    Keras exposes only the evaluated rate publicly; the schedule object lives in
    ``_learning_rate`` (read-only use here).
    """
    return optimizer._learning_rate


def is_schedule(value) -> bool:
    return isinstance(value, keras.optimizers.schedules.LearningRateSchedule)


def refresh_train_function(model) -> None:
    """Make the next ``fit`` step re-trace, after a hyperparameter object was swapped.

    Keras traces ``train_function`` on its first call (after ``on_train_begin``)
    and keeps it across ``fit`` calls; an object swapped into the optimizer after
    an earlier trace would otherwise be ignored by that stale graph.
    """
    if model is not None and getattr(model, "train_function", None) is not None:
        model.train_function = None
        model.make_train_function()


def last_used_learning_rate(optimizer) -> float:
    """The rate used by the most recent update: a schedule at ``iterations - 1`` (0 before any)."""
    lr = raw_learning_rate(optimizer)
    if is_schedule(lr):
        last_step = max(int(to_numpy(optimizer.iterations)) - 1, 0)
        lr = lr(last_step)
    elif callable(lr) and not isinstance(lr, keras.Variable):
        lr = lr()
    return float(to_numpy(lr))


def to_numpy(value):
    """Host value of a tensor/variable/number (``.numpy()`` avoids NumPy 2's ``__array__`` copy warning)."""
    return value.numpy() if hasattr(value, "numpy") else keras.ops.convert_to_numpy(value)
