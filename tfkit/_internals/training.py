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
