"""A compiled training step for custom ``tf.function`` loops.

``model.fit`` does five things per batch that a hand-written loop must redo:
forward pass, loss (with regularisation, scaled for the number of replicas),
loss scaling for mixed precision, gradients, and the optimizer update, all
inside ``strategy.run`` and a ``tf.function`` (optionally XLA-compiled).
:class:`TrainStep` does exactly those, and nothing else, so a custom loop can
use every tfkit piece — schedules, ``GradientAccumulator``,
``LossScaleOptimizer``, ``Recompute`` layers — the same way ``model.fit`` does.

The loss follows Keras' distributed convention: each replica computes the mean
over its own examples divided by the number of replicas, so that the summed
(all-reduced) gradient is the gradient of the global mean. Gradient
accumulation and loss scaling live in the optimizer chain: ``TrainStep`` calls
``optimizer.scale_loss`` before differentiating and ``optimizer.apply`` after,
and the wrappers do the rest.

Example:
    >>> import keras, numpy as np
    >>> from tfkit.training import TrainStep
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> step = TrainStep(model, "mse", keras.optimizers.SGD(0.1), jit_compile=True)
    >>> logs = step(np.ones((4, 3), "float32"), np.zeros((4, 1), "float32"))
    >>> sorted(logs)
    ['loss']
"""

from __future__ import annotations

import inspect
import warnings

import keras
import tensorflow as tf
from keras import ops
from keras.utils import unpack_x_y_sample_weight

from tfkit import _internals, _validation
from tfkit._internals import (
    LossFunctionWrapper,
    apply_mask,
    get_keras_mask,
    reduce_weighted_values,
    scale_loss_for_distribution,
    unscale_loss_for_distribution,
)
from tfkit.callbacks import spike_guard as _spike_guard
from tfkit.callbacks import weight_averaging as _weight_averaging
from tfkit.layers import batch_normalization as _batch_norm
from tfkit.optimizers.gradient_accumulator import GradientAccumulator
from tfkit.optimizers.hyperparameters import attach
from tfkit.optimizers.tree import optimizer_chain

__all__ = ["TrainStep", "install", "is_installed"]


def _as_loss(loss) -> keras.losses.Loss:
    """Return a ``keras.losses.Loss``: those reduce and scale for distribution themselves."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    fn = keras.losses.get(loss)
    if fn is None or not callable(fn):
        raise TypeError(
            f"`loss` must be a keras.losses.Loss, a loss name or a callable "
            f"(y_true, y_pred) -> per-example losses; received {loss!r}"
        )
    if isinstance(fn, keras.losses.Loss):
        return fn
    return LossFunctionWrapper(fn, name=getattr(fn, "__name__", "loss"))


def _size(x) -> tf.Tensor:
    return ops.cast(ops.prod(ops.convert_to_tensor(ops.shape(x), dtype="int32")), "float32")


@tf.autograph.experimental.do_not_convert
def _loss_and_weight(loss: keras.losses.Loss, y_true, y_pred, sample_weight):
    """Keras' reduction of ``loss``, and the number it divided by (``None``: not a mean).

    The loss is computed exactly as ``keras.losses.Loss.__call__`` does; the
    weight is its divisor: the number of loss elements for
    ``sum_over_batch_size``/``mean``, the number of unmasked elements when the
    prediction carries a Keras mask, the sum of the (masked) sample weights for
    ``mean_with_sample_weight``. A loss that overrides ``__call__`` is opaque:
    its weight is the number of samples (the leading dimension).
    """
    if type(loss).__call__ is not keras.losses.Loss.__call__:
        value = loss(y_true, y_pred, sample_weight=sample_weight)
        first = tf.nest.flatten(y_pred)[0]
        return value, ops.cast(ops.shape(first)[0], "float32")
    in_mask = get_keras_mask(y_pred)
    with keras.name_scope(loss.name):
        y_pred = tf.nest.map_structure(lambda t: ops.convert_to_tensor(t, loss.dtype), y_pred)
        y_true = tf.nest.map_structure(lambda t: ops.convert_to_tensor(t, loss.dtype), y_true)
        values = loss.call(y_true, y_pred)
        out_mask = get_keras_mask(values)
        if in_mask is not None and out_mask is not None:
            mask = in_mask & out_mask
        else:
            mask = in_mask if in_mask is not None else out_mask
        value = reduce_weighted_values(
            values, sample_weight=sample_weight, mask=mask, reduction=loss.reduction,
            dtype=loss.dtype,
        )  # fmt: skip
        reduction = loss.reduction
        if reduction in (None, "none", "sum") or len(values.shape) == 0:
            return value, None
        if reduction == "mean_with_sample_weight":
            effective = apply_mask(
                None if sample_weight is None else ops.convert_to_tensor(sample_weight, loss.dtype),
                None if mask is None else ops.convert_to_tensor(mask, loss.dtype),
                dtype=values.dtype,
                reduction=reduction,
            )
            if effective is not None:
                return value, ops.cast(ops.sum(effective), "float32")
            return value, _size(values)
        if mask is not None:
            # Keras rescales the mask by size(mask) / valid and divides by
            # size(values): the loss is a mean over the unmasked elements.
            valid = ops.sum(ops.cast(mask, "float32"))
            return value, valid * _size(values) / _size(mask)
        return value, _size(values)


def _weight_passes(optimizer) -> bool:
    """Whether ``optimizer.apply(..., weight=)`` reaches a GradientAccumulator."""
    for opt in optimizer_chain(optimizer):
        if isinstance(opt, GradientAccumulator):
            return True
        if "weight" not in inspect.signature(opt.apply).parameters:
            if any(isinstance(o, GradientAccumulator) for o in optimizer_chain(opt)):
                warnings.warn(
                    f"{type(opt).__name__} ({opt.name!r}) wraps a GradientAccumulator but "
                    "cannot pass micro-batch weights to it: every micro-batch counts 1, "
                    "which is exact only for equal, unmasked micro-batches. Use "
                    "tfkit.precision.LossScaleOptimizer(GradientAccumulator(...)) "
                    "(model.compile under 'mixed_float16' builds Keras' own).",
                    stacklevel=3,
                )
            return False
    return False


def _apply(optimizer, grads, variables, weight) -> None:
    if weight is not None and _weight_passes(optimizer):
        optimizer.apply(grads, variables, weight=weight)
    else:
        optimizer.apply(grads, variables)


def _accumulation_steps(optimizer) -> int:
    """The ``k`` of the first GradientAccumulator in the optimizer chain (1 without one)."""
    for opt in optimizer_chain(optimizer):
        if isinstance(opt, GradientAccumulator):
            return opt.accumulation_steps
    return 1


def _step_is_finite(grads, weight) -> tf.Tensor:
    """The verdict the accumulator and the loss scaler reach: finite gradients and weight."""
    flags = [
        tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
        for g in grads
        if g is not None
    ]
    if weight is not None:
        weight = tf.convert_to_tensor(weight)
        flags.append(tf.math.is_finite(weight) & (weight >= 0))
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def _statistics_guard(model, optimizer) -> list:
    """At trace time: BatchNorm windows follow the accumulator; snapshot their statistics."""
    _batch_norm.resolve_accumulation_steps(model, _accumulation_steps(optimizer))
    return _batch_norm.snapshot_statistics(model)


def _guarded_apply(guard, optimizer, loss, grads, variables, weight) -> None:
    """``_apply``, or the guard's gate around it (the update is dropped on a spike)."""
    if guard is None:
        _apply(optimizer, grads, variables, weight)
        return
    if weight is None:
        guard.gate(loss, grads, lambda g: _apply(optimizer, g, variables, None), optimizer)
    else:
        guard.gate(loss, grads, lambda g, w: _apply(optimizer, g, variables, w), optimizer, weight)


def _add_regularization(model, loss):
    if model.losses:
        reg = tf.add_n([tf.cast(v, loss.dtype) for v in model.losses])
        loss = loss + scale_loss_for_distribution(reg)
    return loss


class TrainStep:
    """One optimizer step (or one micro-step under accumulation) of a custom loop.

    Per call, on each replica:

        loss  = mean_b loss(y, model(x, training=True)) / num_replicas
                + sum(model.losses) / num_replicas
        grads = d optimizer.scale_loss(loss) / d trainable_variables
        optimizer.apply(grads, trainable_variables)

    and returns ``{"loss": global mean loss}`` (the unscaled value, summed
    over replicas). The step itself all-reduces nothing for the logs: with one
    process (``MirroredStrategy``) the replicas' scalar losses are summed on
    one device, so under a ``GradientAccumulator`` a micro-step that does not
    close a window runs no collective at all. Only a multi-worker strategy
    pays one scalar all-reduce per step for the logged loss.

    **Weighted micro-batches.** When the optimizer chain holds a
    :class:`~tfkit.optimizers.GradientAccumulator`, the step passes it the
    weight of each micro-batch: the number the loss was divided by. That is
    the number of loss elements (samples) for a ``sum_over_batch_size`` loss,
    the number of unmasked elements when the prediction carries a Keras mask
    (padded tokens never count), and the sum of the sample weights for a
    ``mean_with_sample_weight`` loss. The window's update is then the gradient
    of the mean over the whole window -- ragged last batches and padded
    sequences included -- as for one big batch. Under a strategy each replica
    passes its local weight and the accumulator divides by their sum over
    replicas and micro-batches. Not a mean (``reduction="sum"``/``None``), or
    a loss that overrides ``__call__``: the weight is 1, respectively the
    number of samples. Keras' own ``LossScaleOptimizer`` cannot pass weights
    (a warning says so): use ``tfkit.precision.LossScaleOptimizer``.

    Args:
        model: a built or buildable Keras model.
        loss: a ``keras.losses.Loss``, a loss name (``"mse"``) or a function
            ``(y_true, y_pred) -> per-example losses``.
        optimizer: the optimizer (chain) to apply; defaults to
            ``model.optimizer``. Any tfkit wrapper works here:
            ``LossScaleOptimizer(GradientAccumulator(AdamW(schedule), 4))``.
        jit_compile: compile the per-replica step with XLA.
        strategy: a ``tf.distribute.Strategy``; defaults to the current one.
            Create the model and optimizer under its scope, and pass data as
            a distributed dataset's elements or plain tensors (split evenly).
        spike_guard: a :class:`~tfkit.callbacks.SpikeGuard` whose in-graph
            check decides, per batch, whether ``optimizer.apply`` runs.

    Call it with ``(x, y)`` or ``(x, y, sample_weight)``. The step is traced
    once per input signature: keep batch shapes fixed (``drop_remainder=True``)
    to avoid retracing.
    """

    def __init__(
        self,
        model: keras.Model,
        loss,
        optimizer: keras.optimizers.Optimizer | None = None,
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
        spike_guard=None,
    ):
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}")
        optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "`optimizer` must be a keras.optimizers.Optimizer (or the model must be "
                f"compiled with one); received {optimizer!r}"
            )
        jit_compile = _validation.check_bool("TrainStep", "jit_compile", jit_compile)
        self.model = model
        self.loss = _as_loss(loss)
        self.optimizer = optimizer
        attach(model, optimizer)  # tfkit callbacks find the optimizer of an uncompiled model
        self.jit_compile = jit_compile
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            raise TypeError(
                "`strategy` must be a tf.distribute.Strategy or None; "
                f"received strategy={strategy!r} of type {type(strategy).__name__}"
            )
        self.strategy = strategy or tf.distribute.get_strategy()
        # Multi-worker strategies: other processes hold replicas, and only a
        # collective reaches their losses.
        replicas = self.strategy.num_replicas_in_sync
        self._all_replicas_local = replicas == 1 or replicas == len(
            self.strategy.extended.worker_devices
        )
        self.spike_guard = _check_guard(spike_guard, "TrainStep")
        self._replica_step = tf.function(self._step_on_replica, jit_compile=jit_compile)
        self._function = tf.function(self._distributed_step)
        self.trace_count = 0  # how many times the step was traced (tests check it stays at 1)

    def _step_on_replica(self, x, y, sample_weight=None):
        self.trace_count += 1  # Python side effect: runs only while tracing
        model, optimizer = self.model, self.optimizer
        statistics = _statistics_guard(model, optimizer)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss, weight = _loss_and_weight(self.loss, y, y_pred, sample_weight)
            loss = _add_regularization(model, loss)
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        _batch_norm.keep_statistics_if(_step_is_finite(grads, weight), statistics)
        _guarded_apply(self.spike_guard, optimizer, loss, grads, variables, weight)
        return loss

    def _distributed_step(self, x, y, sample_weight=None):
        per_replica = self.strategy.run(self._replica_step, args=(x, y, sample_weight))
        # Each replica's loss is already divided by the replica count, so the
        # global mean is their sum.
        if self._all_replicas_local:
            # The logged loss needs no collective: the replicas of this process
            # hand their scalars to one device, as fit's logs do. Under
            # accumulation a micro-step then communicates nothing at all.
            return tf.add_n(list(self.strategy.experimental_local_results(per_replica)))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _build(self, x) -> None:
        # A distributed batch holds one value per replica: build from the first.
        x = self.strategy.experimental_local_results(x)[0]
        with self.strategy.scope():
            if not self.model.built:
                self.model(x, training=False)
            if not self.optimizer.built:
                self.optimizer.build(self.model.trainable_variables)
            if self.spike_guard is not None:
                self.spike_guard.bind(self.model, self.optimizer)

    def __call__(self, x, y, sample_weight=None) -> dict[str, tf.Tensor]:
        if not (self.model.built and self.optimizer.built) or (
            self.spike_guard is not None and self.spike_guard._bound is None
        ):
            self._build(x)
        return {"loss": self._function(x, y, sample_weight)}


def _compiled_loss(model: keras.Model) -> keras.losses.Loss:
    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, list | tuple | dict):
        raise ValueError(
            "tfkit.training.install() needs a model compiled with one loss "
            f"(a keras.losses.Loss, a name or a function); received loss={loss!r}. "
            "Multi-output losses are not supported: use a custom loop with TrainStep."
        )
    if getattr(model, "loss_weights", None) is not None:
        raise ValueError(
            "tfkit.training.install() does not support `loss_weights`; received "
            f"loss_weights={model.loss_weights!r}."
        )
    return _as_loss(loss)


def _weighted_train_step(model: keras.Model, data):
    """``Model.train_step`` with TrainStep's loss, weight and apply (one replica)."""
    x, y, sample_weight = unpack_x_y_sample_weight(data)
    statistics = _statistics_guard(model, model.optimizer)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True) if _internals.call_has_training_arg(model) else model(x)
        loss, weight = _loss_and_weight(_compiled_loss(model), y, y_pred, sample_weight)
        loss = _add_regularization(model, loss)
        batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        _internals.loss_tracker(model).update_state(
            unscale_loss_for_distribution(loss), sample_weight=batch
        )
        scaled = model.optimizer.scale_loss(loss)
    variables = model.trainable_variables
    guard = _spike_guard.installed_guard(model)
    grads = tape.gradient(scaled, variables)
    _batch_norm.keep_statistics_if(_step_is_finite(grads, weight), statistics)
    _guarded_apply(guard, model.optimizer, loss, grads, variables, weight)
    averaging = _weight_averaging.installed_averaging(model)
    if averaging is not None:
        averaging.update_in_step()
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _check_guard(guard, owner: str):
    if guard is not None and not isinstance(guard, _spike_guard.SpikeGuard):
        _validation.fail(
            owner, "spike_guard", guard, "a tfkit.callbacks.SpikeGuard or None", TypeError
        )
    return guard


def is_installed(model: keras.Model) -> bool:
    """Whether :func:`install` made ``model.fit`` weigh each micro-batch by its size.

    Example:
        >>> import keras, tfkit
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> tfkit.training.is_installed(model)
        False
        >>> tfkit.training.is_installed(tfkit.training.install(model))
        True
    """
    step = getattr(model, "train_step", None)
    return getattr(step, "__func__", None) is _weighted_train_step


def install(model: keras.Model, spike_guard=None, weight_averaging=None) -> keras.Model:
    """Make ``model.fit`` train with :class:`TrainStep`'s weighted micro-batches.

    Replaces ``model.train_step`` on this instance (not on its class) with a
    step that computes the compiled loss as Keras does and passes each
    micro-batch's weight to a :class:`~tfkit.optimizers.GradientAccumulator`
    in ``model.optimizer``: with it, ragged last batches, masked (padded)
    sequences and ``mean_with_sample_weight`` losses accumulate to exactly the
    update of one big batch (see :class:`TrainStep` for the weights). Metrics,
    callbacks, ``jit_compile`` and ``steps_per_execution`` work as in plain
    ``fit``. Without a ``GradientAccumulator`` the step is Keras' own.

    Call it once, before or after ``compile`` (the compiled loss and
    optimizer are read when ``fit`` traces its step). Supports one loss without
    ``loss_weights``; ``fit`` raises ``ValueError`` otherwise. The change is
    not saved with the model: call ``install`` again after loading. Returns
    ``model``.

    ``spike_guard``: a :class:`~tfkit.callbacks.SpikeGuard`; its in-graph
    check then decides, per batch, whether the update is applied (pass the
    guard in ``fit``'s callbacks as well).

    ``weight_averaging``: a :class:`~tfkit.callbacks.WeightAveraging`; the
    step then updates its averages in-graph after each update instead of the
    callback doing it after each batch (pass it in ``fit``'s callbacks as well).

    Example:
        >>> import keras, numpy as np, tfkit
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(tfkit.GradientAccumulator(keras.optimizers.SGD(0.1), 3), "mse")
        >>> model = tfkit.training.install(model)
        >>> x, y = np.ones((10, 3), "float32"), np.ones((10, 1), "float32")
        >>> _ = model.fit(x, y, batch_size=4, verbose=0)  # 4 + 4 + 2: one exact update
        >>> int(model.optimizer.iterations)
        1
    """
    if not isinstance(model, keras.Model):
        _validation.fail("install", "model", model, "a keras.Model", TypeError)
    _spike_guard.register_step(model, _check_guard(spike_guard, "install"))
    if weight_averaging is not None and not isinstance(
        weight_averaging, _weight_averaging.WeightAveraging
    ):
        _validation.fail(
            "install",
            "weight_averaging",
            weight_averaging,
            "a tfkit.callbacks.WeightAveraging or None",
            TypeError,
        )
    _weight_averaging.register_step(model, weight_averaging)
    _internals.bind_instance_method(model, "train_step", _weighted_train_step)
    model.train_function = None  # rebuilt around the new step by the next fit
    return model
