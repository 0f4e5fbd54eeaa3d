"""Keras trainer and loss internals: loss reduction, the loss tracker, symbolic build."""

from __future__ import annotations

# ``TrainStep`` computes a loss exactly as ``keras.losses.Loss.__call__`` does
# and needs the divisor of its mean (the micro-batch weight of gradient
# accumulation), which ``__call__`` does not return: it calls the same
# reduction helpers itself. ``LossFunctionWrapper`` turns a plain function
# into a ``Loss`` as ``compile`` does. Only importable from ``keras.src``
# (Keras 3.0 through 3.15).
from keras.src.backend import get_keras_mask
from keras.src.losses.loss import (
    apply_mask,
    reduce_weighted_values,
    scale_loss_for_distribution,
    unscale_loss_for_distribution,
)
from keras.src.losses.losses import LossFunctionWrapper

__all__ = [
    "LossFunctionWrapper",
    "apply_mask",
    "call_has_training_arg",
    "get_keras_mask",
    "loss_tracker",
    "metric_direction",
    "reduce_weighted_values",
    "scale_loss_for_distribution",
    "intercept_train_function",
    "is_intercepted",
    "metrics_built",
    "release_train_function",
    "set_initial_epoch",
    "symbolic_build",
    "unscale_loss_for_distribution",
]


def call_has_training_arg(model) -> bool:
    """Whether ``model.call`` takes ``training`` (``Layer._call_has_training_arg``, Keras 3.0-3.15)."""
    return model._call_has_training_arg


def loss_tracker(model):
    """The ``Mean`` metric behind ``fit``'s ``loss`` log (``Trainer._loss_tracker``, Keras 3.0-3.15).

    A replacement ``train_step`` must update it as Keras' own does.
    """
    return model._loss_tracker


def metric_direction(metric) -> str | None:
    """``"up"``/``"down"`` for a metric that declares which way is better (``Metric._direction``)."""
    return getattr(metric, "_direction", None)


def set_initial_epoch(model, epoch: int | None) -> None:
    """Make the running ``fit`` start its epoch loop at ``epoch`` (``None``: as asked).

    ``Trainer._initial_epoch`` is what Keras' own ``BackupAndRestore`` sets in
    ``on_train_begin`` to resume mid-run (Keras 3.0 through 3.15); no public
    way exists once ``fit`` has started.
    """
    model._initial_epoch = epoch


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


def intercept_train_function(model, make_wrapper) -> None:
    """Route ``model.fit``'s steps through ``make_wrapper(current_train_function)``.

    ``fit`` passes its data iterator to ``model.train_function(iterator)`` and
    to nothing else (Keras 3.0 through 3.15): a callback that must checkpoint
    or restore the iterator's position (``BackupAndRestore``) sees it only
    there. ``train_function`` is an attribute Keras itself rebuilds (``None``
    until ``make_train_function``); the wrapper is set on this model only,
    calls the original for every step, and :func:`release_train_function`
    puts the original back. Idempotent.
    """
    current = model.train_function
    if current is None or getattr(current, "_tfkit_wrapped", False):
        return
    wrapper = make_wrapper(current)
    wrapper._tfkit_wrapped = True
    wrapper._tfkit_original = current
    model.train_function = wrapper


def is_intercepted(model) -> bool:
    """Whether ``model.train_function`` goes through :func:`intercept_train_function`."""
    return bool(getattr(getattr(model, "train_function", None), "_tfkit_wrapped", False))


def release_train_function(model) -> None:
    """Undo :func:`intercept_train_function` (the original step is kept)."""
    original = getattr(getattr(model, "train_function", None), "_tfkit_original", None)
    if original is not None:
        model.train_function = original


def metrics_built(model) -> bool:
    """Whether ``model.metrics_variables`` is complete (the compiled metrics are built).

    Keras builds the compiled metrics (``Trainer._compile_metrics``, Keras 3.0
    through 3.15) lazily in the first traced step when no distribution strategy
    is set: until then ``metrics_variables`` holds the loss tracker only, so a
    backup's metric layout can be compared only afterwards.
    """
    compiled = getattr(model, "_compile_metrics", None)
    return compiled is None or bool(getattr(compiled, "built", True))
