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

import keras
import tensorflow as tf
from keras.src.losses.loss import scale_loss_for_distribution
from keras.src.losses.losses import LossFunctionWrapper

from tfkit import _validation

__all__ = ["TrainStep"]


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


class TrainStep:
    """One optimizer step (or one micro-step under accumulation) of a custom loop.

    Per call, on each replica:

        loss  = mean_b loss(y, model(x, training=True)) / num_replicas
                + sum(model.losses) / num_replicas
        grads = d optimizer.scale_loss(loss) / d trainable_variables
        optimizer.apply(grads, trainable_variables)

    and returns ``{"loss": global mean loss}`` (the unscaled value, reduced
    across replicas).

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
        self.jit_compile = jit_compile
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            raise TypeError(
                "`strategy` must be a tf.distribute.Strategy or None; "
                f"received strategy={strategy!r} of type {type(strategy).__name__}"
            )
        self.strategy = strategy or tf.distribute.get_strategy()
        self._replica_step = tf.function(self._step_on_replica, jit_compile=jit_compile)
        self._function = tf.function(self._distributed_step)
        self.trace_count = 0  # how many times the step was traced (tests check it stays at 1)

    def _step_on_replica(self, x, y, sample_weight=None):
        self.trace_count += 1  # Python side effect: runs only while tracing
        model, optimizer = self.model, self.optimizer
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = self.loss(y, y_pred, sample_weight=sample_weight)
            if model.losses:
                reg = tf.add_n([tf.cast(v, loss.dtype) for v in model.losses])
                loss = loss + scale_loss_for_distribution(reg)
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        return loss

    def _distributed_step(self, x, y, sample_weight=None):
        per_replica = self.strategy.run(self._replica_step, args=(x, y, sample_weight))
        # Each replica's loss is already divided by the replica count.
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _build(self, x) -> None:
        # A distributed batch holds one value per replica: build from the first.
        x = self.strategy.experimental_local_results(x)[0]
        with self.strategy.scope():
            if not self.model.built:
                self.model(x, training=False)
            if not self.optimizer.built:
                self.optimizer.build(self.model.trainable_variables)

    def __call__(self, x, y, sample_weight=None) -> dict[str, tf.Tensor]:
        if not (self.model.built and self.optimizer.built):
            self._build(x)
        return {"loss": self._function(x, y, sample_weight)}
