"""Gradient accumulation as an optimizer wrapper: k micro-batches, one real update.

A device that holds a micro-batch of ``b`` can still train with the recipe's
batch ``k * b``: accumulate the gradients of ``k`` micro-batches and let the
wrapped optimizer take one step with their mean. :class:`GradientAccumulator`
does this for any Keras optimizer, in ``model.fit`` and in custom loops, and
keeps everything the inner optimizer owns (step count, moments, schedules,
clipping, weight decay, EMA) on the clock of *real* updates.

Example:
    >>> import keras
    >>> from tfkit.optimizers import GradientAccumulator
    >>> optimizer = GradientAccumulator(keras.optimizers.AdamW(1e-3), accumulation_steps=4)
    >>> optimizer.accumulation_steps
    4
"""

from __future__ import annotations

import copy

import keras
import tensorflow as tf
from keras import ops

from tfkit import _validation

__all__ = ["GradientAccumulator"]


def _is_loss_scale_optimizer(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _needs_merge_call() -> bool:
    """True inside ``strategy.run`` of a strategy that needs ``merge_call``.

    ``tf.cond`` in a replica context cannot have a branch that calls
    ``merge_call`` (the inner optimizer's update does), so under such a
    strategy the update decision has to be taken in cross-replica context.
    """
    return tf.distribute.has_strategy() and not (
        tf.__internal__.distribute.strategy_supports_no_merge_call()
    )


def _clips(optimizer) -> bool:
    return any(
        bool(value) and value > 0
        for value in (optimizer.clipnorm, optimizer.global_clipnorm, optimizer.clipvalue)
    )


def _clip_like(optimizer, grads):
    """Clip ``grads`` as ``optimizer`` would (Keras' clipnorm / global_clipnorm / clipvalue)."""
    if optimizer.clipnorm and optimizer.clipnorm > 0:
        return [tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    if optimizer.clipvalue and optimizer.clipvalue > 0:
        return [tf.clip_by_value(g, -optimizer.clipvalue, optimizer.clipvalue) for g in grads]
    return grads


def _variable_name(variable) -> str:
    # Keras variables have a unique ``path``; raw tf.Variables only a ``name``.
    name = getattr(variable, "path", None) or variable.name
    return name.replace("/", "_").replace(":", "_")


def _all_finite(grads) -> tf.Tensor:
    flags = []
    for g in grads:
        values = g.values if isinstance(g, tf.IndexedSlices) else g
        flags.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(tf.stack(flags))


@keras.saving.register_keras_serializable(package="tfkit")
class GradientAccumulator(keras.optimizers.Optimizer):
    """Wrap an optimizer so that it updates once every ``accumulation_steps`` micro-batches.

    Every call to ``apply``/``apply_gradients`` (one micro-batch) adds the
    gradients to float32 accumulators. On the ``k``-th finite micro-batch of a
    window the inner optimizer is applied once to their mean,

        g = (1 / k) * sum_{i=1..k} g_i,

    and the window starts again. With equal micro-batches and a mean-reduced
    loss, ``k`` micro-batches of ``b`` give the update of one batch of ``k * b``.

    Semantics:

    * **Mean of the micro-batch gradients.** The real update receives the mean
      of the ``k`` micro-batch gradients, cast to the variable dtype.
    * **The inner optimizer runs only on real updates.** Its ``iterations``,
      moments, weight decay, gradient clipping (``clipnorm``,
      ``global_clipnorm``, ``clipvalue``, applied to the *mean* gradient),
      constraints and EMA see one step per window. A micro-step that does not
      close a window changes no variable except this wrapper's accumulators
      and counters.
    * **Schedules on real updates.** ``iterations`` is the inner optimizer's
      count of real updates, and a ``LearningRateSchedule`` (or any schedule
      the inner optimizer evaluates at its ``iterations``) sees 0, 1, 2, ...
      (Keras' ``gradient_accumulation_steps`` evaluates it at the micro-batch
      counter instead.) ``learning_rate`` reads and sets the inner optimizer's.
    * **float32 accumulators** whatever the variable dtype.
    * **Non-finite micro-batches are dropped.** A micro-batch whose gradients
      contain ``inf``/``nan`` (on any replica) is neither added nor counted;
      ``dropped_micro_batches`` counts them. The window closes after ``k``
      *finite* micro-batches, so weights are never touched by a non-finite
      gradient.
    * **Windows ignore epoch boundaries.** The window carries over from one
      epoch to the next (and through checkpoints). At the end of training a
      partial window is *not* applied silently: call :meth:`flush` to apply
      the mean of the micro-batches accumulated so far as one real update, or
      leave it to discard them.
    * **Loss scaling goes outside.** ``LossScaleOptimizer(GradientAccumulator
      (inner))`` is the right order (and what ``model.compile`` builds under the
      ``"mixed_float16"`` policy): the loss scaler skips a non-finite step
      before it reaches the accumulator and hands over unscaled gradients.
      Wrapping a ``LossScaleOptimizer`` inside raises ``ValueError``.
    * **Distribution.** Under ``MirroredStrategy`` and
      ``MultiWorkerMirroredStrategy`` each replica accumulates its own local
      gradients (no communication on micro-steps); the real update all-reduces
      the accumulated sums once, exactly where the inner optimizer would
      all-reduce a plain gradient, so the result equals single-device training
      on the same global batches.

    State for logging: ``micro_step`` (finite micro-batches in the open
    window, ``0 .. k-1`` between calls), ``last_step_updated`` (whether the
    last call performed a real update), ``dropped_micro_batches`` (non-finite
    micro-batches dropped so far), ``iterations`` (real updates so far). All
    of it lives in variables and is saved by ``tf.train.Checkpoint`` and
    ``keras.saving``, so restoring mid-window continues the same window.

    Args:
        inner_optimizer: the ``keras.optimizers.Optimizer`` that performs the
            real updates (SGD, Adam, AdamW, RMSprop, Lion, ...). Its own
            ``gradient_accumulation_steps`` must be ``None``.
        accumulation_steps: ``k >= 1``, the number of finite micro-batches per
            real update (``1`` is a pass-through that still drops non-finite
            micro-batches).
        name: optional name of the wrapper.

    Example:
        >>> import keras, numpy as np
        >>> from tfkit.optimizers import GradientAccumulator
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> opt = GradientAccumulator(keras.optimizers.SGD(0.1), accumulation_steps=4)
        >>> model.compile(optimizer=opt, loss="mse")
        >>> x, y = np.ones((24, 3), "float32"), np.ones((24, 1), "float32")
        >>> _ = model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 6 micro-batches
        >>> int(opt.iterations), int(opt.micro_step)
        (1, 2)
        >>> bool(opt.flush()), int(opt.iterations), int(opt.micro_step)
        (True, 2, 0)

    Reference: Goyal et al., "Accurate, Large Minibatch SGD" (2017), and
    PyTorch's ``DistributedDataParallel.no_sync`` for skipping the all-reduce
    on accumulation steps.
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        accumulation_steps: int,
        name: str | None = None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(
                "GradientAccumulator does not accept optimizer arguments "
                f"{sorted(kwargs)}; set them on the inner optimizer, e.g. "
                "GradientAccumulator(keras.optimizers.AdamW(..., clipnorm=1.0), 4)."
            )
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "`inner_optimizer` must be a keras.optimizers.Optimizer instance, "
                f"received inner_optimizer={inner_optimizer!r} "
                f"of type {type(inner_optimizer).__name__}."
            )
        if _is_loss_scale_optimizer(inner_optimizer):
            raise ValueError(
                "`inner_optimizer` is a LossScaleOptimizer "
                f"({inner_optimizer.name!r}): the loss scaler must wrap the "
                "accumulator, not the other way round. Use "
                "LossScaleOptimizer(GradientAccumulator(inner, k)), which is what "
                "model.compile builds under the 'mixed_float16' policy when given "
                "GradientAccumulator(inner, k)."
            )
        if isinstance(inner_optimizer, GradientAccumulator):
            raise ValueError(
                "`inner_optimizer` is already a GradientAccumulator with "
                f"accumulation_steps={inner_optimizer.accumulation_steps}; use one "
                "GradientAccumulator with accumulation_steps equal to the product."
            )
        if inner_optimizer.gradient_accumulation_steps:
            raise ValueError(
                "`inner_optimizer` has Keras' own gradient_accumulation_steps="
                f"{inner_optimizer.gradient_accumulation_steps}; set it to None and "
                "let GradientAccumulator accumulate, otherwise gradients are "
                "accumulated twice."
            )
        # An int64 micro-step counter is compared with it in the graph.
        accumulation_steps = _validation.check_int(
            "GradientAccumulator", "accumulation_steps", accumulation_steps, low=1
        )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.accumulation_steps = accumulation_steps

    # ----------------------------------------------------------------- state

    def build(self, var_list):
        if self.built:
            return
        # Each replica keeps its own partial sums and counters ("on_read"):
        # updating them needs no communication, and reading them outside a
        # replica (saving) gives the sum of the accumulators and the first
        # replica's counters, which is what restoring needs.
        self._accumulators = [
            self._local_variable(v.shape, "float32", "sum", f"{_variable_name(v)}_accumulator")
            for v in var_list
        ]
        self._micro_step = self._local_variable((), "int64", "only_first_replica", "micro_step")
        self._dropped = self._local_variable(
            (), "int64", "only_first_replica", "dropped_micro_batches"
        )
        self._last_updated = self._local_variable(
            (), "int64", "only_first_replica", "last_step_updated"
        )
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)

    def _local_variable(self, shape, dtype, aggregation, name):
        with keras.name_scope(self.name, caller=self):
            variable = keras.Variable(
                initializer=keras.initializers.Zeros(),
                shape=shape,
                dtype=dtype,
                trainable=False,
                aggregation=aggregation,
                synchronization="on_read",
                name=name,
            )
        self._track_variable(variable)
        return variable

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def micro_step(self) -> tf.Variable:
        """Finite micro-batches accumulated in the open window (``0 .. k-1`` between calls)."""
        self._check_built("micro_step")
        return self._micro_step

    @property
    def last_step_updated(self) -> tf.Tensor:
        """Whether the last ``apply``/``flush`` call performed a real update (bool tensor)."""
        self._check_built("last_step_updated")
        return ops.equal(self._last_updated, 1)

    @property
    def dropped_micro_batches(self) -> tf.Variable:
        """Number of non-finite micro-batches dropped so far."""
        self._check_built("dropped_micro_batches")
        return self._dropped

    def _check_built(self, attribute):
        if not self.built:
            raise ValueError(
                f"`{attribute}` exists once the optimizer is built: call "
                "optimizer.build(model.trainable_variables) or train a step first."
            )

    # ------------------------------------------------ delegation to the inner

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def loss_scale_factor(self):
        inner = getattr(self, "inner_optimizer", None)
        return None if inner is None else inner.loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        # The inner optimizer unscales in its own apply(), so its factor is the
        # one that counts; a LossScaleOptimizer around us sets None here to
        # switch it off, as it does for the optimizer it wraps directly.
        inner = getattr(self, "inner_optimizer", None)
        if inner is not None:
            inner.loss_scale_factor = value

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise ValueError("GradientAccumulator is stateful; stateless_apply is not supported.")

    # ---------------------------------------------------------------- update

    # The graph code below uses explicit tf.cond and no Python control flow on
    # tensors, so autograph has nothing to convert here.
    @tf.autograph.experimental.do_not_convert
    def apply(self, grads, trainable_variables=None):
        """Add one micro-batch of gradients; apply the inner optimizer when a window closes."""
        if len(grads) == 0:
            return
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `trainable_variables`, the "
                    "optimizer must already be built: call optimizer.build(variables)."
                )
            trainable_variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
            self._check_variables_are_known(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"Received {len(grads)} gradients for {len(trainable_variables)} variables."
            )
        if tf.distribute.in_cross_replica_context() and tf.distribute.has_strategy():
            raise ValueError(
                "GradientAccumulator.apply() must be called in a replica context "
                "(inside strategy.run), like any Keras optimizer under tf.distribute."
            )
        pairs = [(g, v) for g, v in zip(grads, trainable_variables, strict=True) if g is not None]
        if not pairs:
            raise ValueError("No gradients provided for any variable.")
        with keras.name_scope(self.name, caller=self):
            self._accumulate(pairs)
            close = ops.greater_equal(self._micro_step, self.accumulation_steps)
            self._update_if(close, [v for _, v in pairs])

    @tf.autograph.experimental.do_not_convert
    def flush(self) -> tf.Tensor:
        """Apply the partial window now, as one real update with the mean of its micro-batches.

        Does nothing if the window is empty. Call it after the last
        ``model.fit``/custom loop when the number of micro-batches is not a
        multiple of ``accumulation_steps`` and the leftover gradients should
        count. Under a strategy call it outside ``strategy.run`` (it runs on
        every replica itself). Returns whether an update was applied.
        """
        self._check_built("flush")
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            strategy = tf.distribute.get_strategy()
            strategy.run(self._flush_in_replica)
        else:
            self._flush_in_replica()
        return self.last_step_updated

    def _flush_in_replica(self):
        with keras.name_scope(self.name, caller=self):
            self._update_if(ops.greater(self._micro_step, 0), self._trainable_variables)

    def _accumulate(self, pairs):
        finite = _all_finite([g for g, _ in pairs])
        if tf.distribute.has_strategy():
            # Every replica must take the same decision, or their windows drift.
            replica = tf.distribute.get_replica_context()
            n_bad = replica.all_reduce(
                tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
            )
            finite = ops.equal(n_bad, 0.0)

        def add():
            for g, v in pairs:
                accumulator = self._accumulators[self._get_variable_index(v)]
                if isinstance(g, tf.IndexedSlices):
                    accumulator.value.scatter_add(
                        tf.IndexedSlices(tf.cast(g.values, tf.float32), g.indices, g.dense_shape)
                    )
                else:
                    accumulator.assign_add(tf.cast(g, tf.float32))

        # A branch, not a mask: no extra pass over the gradients, and nan * 0 is nan.
        tf.cond(finite, add, lambda: None)
        step = ops.cast(finite, "int64")
        self._micro_step.assign_add(step)
        self._dropped.assign_add(1 - step)

    def _update_if(self, close, variables):
        """Run the real update on every replica iff ``close`` (same value on every replica)."""
        self._last_updated.assign(ops.cast(close, "int64"))
        if not _needs_merge_call():
            tf.cond(close, lambda: self._real_update(variables), lambda: None)
            return

        def cross_replica(strategy, close):
            first = strategy.experimental_local_results(close)[0]
            tf.cond(
                first,
                lambda: strategy.extended.call_for_each_replica(
                    self._real_update, args=(variables,)
                ),
                lambda: None,
            )

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(close,))

    def _real_update(self, variables):
        count = ops.cast(self._micro_step, "float32")
        means = [
            ops.divide(self._accumulators[self._get_variable_index(v)].value, count)
            for v in variables
        ]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1 and _clips(self.inner_optimizer):
            # Keras clips the per-replica gradients *before* its all-reduce,
            # which is not the clip of the global gradient. Reduce here, clip
            # the global mean as the inner optimizer would, and hand each
            # replica 1/n of it: the inner's own clip is then a no-op (every
            # norm and value is at most clip / n) and its all-reduce sums the
            # shares back to the clipped global mean.
            means = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, means
            )
            means = [m / replicas for m in _clip_like(self.inner_optimizer, means)]
        grads = [ops.cast(m, v.dtype) for m, v in zip(means, variables, strict=True)]
        # Otherwise the inner optimizer all-reduces the per-replica means, then
        # clips, decays and steps exactly as it would for one big batch.
        self.inner_optimizer.apply(grads, variables)
        for v in variables:
            accumulator = self._accumulators[self._get_variable_index(v)]
            accumulator.assign(tf.zeros_like(accumulator.value))
        self._micro_step.assign(0)

    # ------------------------------------------------------------ serialising

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "accumulation_steps": self.accumulation_steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras deserialisation edits nested configs in place
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)
