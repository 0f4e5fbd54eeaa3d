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
import math
import numbers

import keras
import tensorflow as tf
from keras import ops

from tfkit import _internals, _validation

__all__ = ["GradientAccumulator"]


def _is_loss_scale_optimizer(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _needs_merge_call() -> bool:
    """True inside ``strategy.run`` of a strategy that needs ``merge_call``.

    ``tf.cond`` in a replica context cannot have a branch that calls
    ``merge_call`` (the inner optimizer's update does), so under such a
    strategy the update decision has to be taken in cross-replica context.
    """
    return tf.distribute.has_strategy() and not _internals.strategy_supports_no_merge_call()


def _variable_name(variable) -> str:
    # Keras variables have a unique ``path``; raw tf.Variables only a ``name``.
    name = getattr(variable, "path", None) or variable.name
    return name.replace("/", "_").replace(":", "_")


def _all_finite(grads) -> tf.Tensor:
    """Whether every gradient is finite, from one reduction per gradient.

    The sum of a tensor is finite iff its elements are, except when finite
    elements overflow float32 in the sum (magnitudes near 1e38 / size): such
    gradients would overflow the float32 accumulators too, so they count as
    non-finite. One ``Sum`` kernel per gradient and a scalar test, instead of
    an elementwise ``IsFinite`` pass and a reduction over its result.
    """
    sums = []
    for g in grads:
        values = g.values if isinstance(g, tf.IndexedSlices) else g
        sums.append(tf.reduce_sum(tf.cast(values, tf.float32)))
    return tf.math.is_finite(tf.add_n(sums))


def _weighted(g, weight):
    """``weight * g`` in float32 (``g`` itself when there is no weight)."""
    g = tf.cast(tf.convert_to_tensor(g), tf.float32)
    return g if weight is None else g * tf.cast(weight, tf.float32)


def _plus(total, g, weight):
    """``total + weight * g``; an ``IndexedSlices`` is added into a dense copy of ``total``."""
    if isinstance(g, tf.IndexedSlices):
        values = tf.cast(g.values, tf.float32)
        values = values if weight is None else values * tf.cast(weight, tf.float32)
        return tf.tensor_scatter_nd_add(total, tf.expand_dims(g.indices, -1), values)
    return total + _weighted(g, weight)


def _check_weight(weight):
    """``None``, or a float64 scalar tensor; Python numbers are validated here."""
    if weight is None:
        return None
    if isinstance(weight, bool):
        raise TypeError(
            f"`weight` must be a number >= 0 or a scalar tensor, received weight={weight!r}."
        )
    if isinstance(weight, numbers.Real):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"`weight` must be a finite number >= 0, received weight={weight!r}.")
    # float64: the window's sum of weights (token counts) stays exact to 2**53.
    weight = tf.cast(weight, tf.float64)
    if weight.shape.rank not in (None, 0):
        raise ValueError(
            f"`weight` must be a scalar (one weight per micro-batch), received shape {weight.shape}."
        )
    return tf.reshape(weight, ())


@keras.saving.register_keras_serializable(package="tfkit")
class GradientAccumulator(keras.optimizers.Optimizer):
    """Wrap an optimizer so that it updates once every ``accumulation_steps`` micro-batches.

    Every call to ``apply``/``apply_gradients`` (one micro-batch ``i`` with
    gradients ``g_i`` and weight ``w_i``, 1 by default) adds ``w_i * g_i`` and
    ``w_i`` to float32 accumulators. The ``k``-th call closes the window: the
    inner optimizer is applied once to the weighted mean over the finite
    micro-batches ``F`` of the window,

        g = sum_{i in F} w_i g_i / sum_{i in F} w_i,

    and the window starts again. When ``g_i`` is the gradient of a loss that
    is a mean over ``w_i`` elements (samples, unmasked tokens, or the sum of
    sample weights), ``g`` is exactly the gradient of the mean over the whole
    window: ragged and padded micro-batches give the update of one big batch.
    :class:`tfkit.TrainStep` and :func:`tfkit.training.install` pass the
    right ``w_i`` themselves. Without weights every micro-batch counts 1 (the
    plain mean of the micro-batch gradients, exact for equal micro-batches).

    Semantics:

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
      (or tensor weight) contain ``inf``/``nan`` is neither added nor weighed;
      ``dropped_micro_batches`` counts it. The window still closes after ``k``
      calls and divides by the weight of the finite micro-batches only. A
      window with no finite weight (or whose sums overflow) makes no update.
      Non-finite values never reach the weights.
    * **Windows ignore epoch boundaries.** The window carries over from one
      epoch to the next (and through checkpoints). At the end of training a
      partial window is *not* applied silently: call :meth:`flush` to apply
      the weighted mean of the micro-batches accumulated so far as one real
      update, or leave it to discard them.
    * **Loss scaling goes outside.** ``LossScaleOptimizer(GradientAccumulator
      (inner))`` is the right order (and what ``model.compile`` builds under the
      ``"mixed_float16"`` policy): the loss scaler skips a non-finite step
      before it reaches the accumulator and hands over unscaled gradients.
      ``tfkit.precision.LossScaleOptimizer.apply`` passes ``weight`` through.
      Wrapping a ``LossScaleOptimizer`` inside raises ``ValueError``.
    * **One collective per window.** Under ``MirroredStrategy`` and
      ``MultiWorkerMirroredStrategy`` each replica accumulates its own local
      gradients and decides on its own shard's finiteness: a micro-step that
      does not close a window communicates nothing (as PyTorch's ``no_sync``).
      Closing a window all-reduces the sums, the sum of weights and the count
      of dropped shards together, once; the inner optimizer then applies the
      already-reduced mean without all-reducing again. Per-replica gradients
      follow Keras' convention (the loss divided by the number of replicas)
      and weights are per replica, so the denominator is the sum of the
      weights over replicas and micro-batches: the result equals
      single-device training on the same global batches. A shard that is
      non-finite on one replica drops only that replica's share.

    State for logging: ``micro_step`` (micro-batches in the open window,
    ``0 .. k-1`` between calls), ``last_step_updated`` (whether the last call
    performed a real update), ``dropped_micro_batches`` (non-finite
    micro-batches -- per replica shard -- dropped so far), ``iterations``
    (real updates so far). All of it lives in variables and is saved by
    ``tf.train.Checkpoint`` and ``keras.saving``, so restoring mid-window
    continues the same window.

    Args:
        inner_optimizer: the ``keras.optimizers.Optimizer`` that performs the
            real updates (SGD, Adam, AdamW, RMSprop, Lion, ...). Its own
            ``gradient_accumulation_steps`` must be ``None``.
        accumulation_steps: ``k >= 1``, the number of micro-batches (calls) per
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
        # Sum of the weights of the finite micro-batches, and count of the
        # dropped ones, in the open window (float32: they ride in the same
        # all-reduce as the gradient sums).
        self._window_weight = self._local_variable((), "float64", "sum", "window_weight")
        self._window_dropped = self._local_variable((), "float64", "sum", "window_dropped")
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
        _internals.track_variable(self, variable)
        return variable

    @property
    def variables(self):
        return _internals.optimizer_own_variables(self) + self.inner_optimizer.variables

    @property
    def micro_step(self) -> tf.Variable:
        """Micro-batches in the open window, dropped ones included (``0 .. k-1`` between calls)."""
        self._check_built("micro_step")
        return self._micro_step

    @property
    def last_step_updated(self) -> tf.Tensor:
        """Whether the last ``apply``/``flush`` call performed a real update (bool tensor)."""
        self._check_built("last_step_updated")
        # A call that leaves the window open does not write ``_last_updated``.
        return ops.logical_and(ops.equal(self._last_updated, 1), ops.equal(self._micro_step, 0))

    @property
    def dropped_micro_batches(self) -> tf.Tensor:
        """Number of non-finite micro-batches (per replica shard) dropped so far (int64)."""
        self._check_built("dropped_micro_batches")
        return self._dropped + ops.cast(self._window_dropped, "int64")

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
    def optimizers(self):
        """The inner ``MultiOptimizer``'s sub-optimizers (``AttributeError`` for a single inner).

        Keras' ``TensorBoard`` logs one ``learning_rate_<name>`` per entry when an
        optimizer has ``optimizers`` (the groups' rates; a ``MultiOptimizer``
        has no single ``learning_rate``).
        """
        subs = getattr(self.inner_optimizer, "optimizers", None)
        if subs is None:
            raise AttributeError(f"{self.inner_optimizer.name!r} has no parameter groups.")
        return subs

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

    def apply_gradients(self, grads_and_vars, weight=None):
        """``apply`` for ``(gradient, variable)`` pairs; ``weight`` as in :meth:`apply`."""
        grads, trainable_variables = zip(*grads_and_vars, strict=True)
        self.apply(list(grads), list(trainable_variables), weight=weight)
        return self.iterations

    # The graph code below uses explicit tf.cond and no Python control flow on
    # tensors, so autograph has nothing to convert here.
    @tf.autograph.experimental.do_not_convert
    def apply(self, grads, trainable_variables=None, weight=None):
        """Add one micro-batch of gradients; apply the inner optimizer when a window closes.

        Args:
            grads: the micro-batch gradients (``None`` entries are skipped).
            trainable_variables: the variables they belong to; defaults to
                the variables the optimizer was built with.
            weight: the micro-batch's weight ``w_i >= 0`` (Python number or
                scalar tensor): the number of samples, of unmasked tokens, or
                the sum of sample weights its loss was divided by. The real
                update is ``sum_i w_i g_i / sum_i w_i``. ``None`` counts as 1.
                A non-finite or negative tensor weight drops the micro-batch
                like a non-finite gradient.
        """
        self._apply_checked(grads, trainable_variables, weight)

    def _apply_checked(self, grads, trainable_variables, weight, finite=None, on_close=None):
        """``apply`` with a caller's finiteness flag and close hook (see ``_apply_micro_batch``)."""
        if len(grads) == 0:
            return
        weight = _check_weight(weight)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `trainable_variables`, the "
                    "optimizer must already be built: call optimizer.build(variables)."
                )
            trainable_variables = _internals.trainable_variables(self)
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
            _internals.check_variables_are_known(self, trainable_variables)
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
        self._apply_micro_batch(pairs, weight, finite, on_close)

    def _apply_micro_batch(self, pairs, weight, finite=None, on_close=None):
        """One micro-step on ``(gradient, variable)`` pairs (validated by the caller).

        ``finite`` is the caller's flag for the gradients when it has checked
        them already (a loss scaler has): the gradients are then not read a
        second time. ``on_close(reduced)`` runs inside the branch that closes
        a window, with ``reduced = [sum of weights, dropped shards]`` of the
        window summed over replicas: a loss scaler updates its scale there,
        from the same all-reduce, instead of reducing its own flag every
        micro-step.
        """
        with keras.name_scope(self.name, caller=self):
            finite = self._micro_batch_is_finite([g for g, _ in pairs], weight, finite)
            if _needs_merge_call():
                self._accumulate(pairs, weight, finite)
                close = ops.greater_equal(self._micro_step, self.accumulation_steps)
                self._update_in_cross_replica(close, [v for _, v in pairs], on_close)
            else:
                self._micro_step_in_replica(pairs, weight, finite, on_close)

    @tf.autograph.experimental.do_not_convert
    def flush(self) -> tf.Tensor:
        """Apply the partial window now, as one real update with the weighted mean of its micro-batches.

        Does nothing if the window is empty. Call it after the last
        ``model.fit``/custom loop when the number of micro-batches is not a
        multiple of ``accumulation_steps`` and the leftover gradients should
        count. Under a strategy call it outside ``strategy.run`` (it runs on
        every replica itself). Returns whether an update was applied.
        """
        self._check_built("flush")
        # The strategy the optimizer was created under, even when flush() is
        # called outside its scope: the sums live on its replicas.
        strategy = _internals.distribution_strategy(self) or tf.distribute.get_strategy()
        outside_replicas = (
            not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context()
        )
        if outside_replicas and strategy.num_replicas_in_sync > 1:
            with strategy.scope():
                if tf.executing_eagerly():
                    tf.function(lambda: strategy.run(self._flush_in_replica))()
                else:
                    strategy.run(self._flush_in_replica)
        else:
            self._flush_in_replica()
        return self.last_step_updated

    def _flush_in_replica(self):
        with keras.name_scope(self.name, caller=self):
            self._update_if(ops.greater(self._micro_step, 0), _internals.trainable_variables(self))

    @staticmethod
    def _micro_batch_is_finite(grads, weight, finite=None):
        """Whether this replica keeps the micro-batch: finite gradients and a finite weight >= 0."""
        if finite is None:
            finite = _all_finite(grads)
        if weight is not None:
            finite = ops.logical_and(
                finite, ops.logical_and(tf.math.is_finite(weight), ops.greater_equal(weight, 0.0))
            )
        return finite

    def _add(self, pairs, weight):
        for g, v in pairs:
            accumulator = self._accumulators[_internals.variable_index(self, v)]
            if isinstance(g, tf.IndexedSlices) and not tf.distribute.has_strategy():
                values = tf.cast(g.values, tf.float32)
                if weight is not None:
                    values = values * tf.cast(weight, tf.float32)
                accumulator.value.scatter_add(tf.IndexedSlices(values, g.indices, g.dense_shape))
            else:
                # Sync-on-read variables (one per replica) have no scatter_add.
                accumulator.assign_add(_weighted(g, weight))
        self._window_weight.assign_add(1.0 if weight is None else weight)

    def _accumulate(self, pairs, weight, finite):
        """Add ``weight * g`` to this replica's sums, or count the micro-batch as dropped.

        Purely local: no communication, whatever the strategy. Each replica
        decides on its own shard; the window closes after ``k`` calls on
        every replica alike, so the replicas never drift apart.
        """

        def add():
            self._add(pairs, weight)

        def drop():
            self._window_dropped.assign_add(1.0)

        # A branch, not a mask: no extra pass over the gradients, and nan * 0 is nan.
        tf.cond(finite, add, drop)
        self._micro_step.assign_add(1)

    def _window_values(self, variables):
        """This replica's partial sums (float32), then ``[sum of weights, dropped count]``.

        The pair is float64 on one device (exact to 2**53); across replicas it
        joins the sums' single float32 collective (a packed all-reduce needs
        one dtype), so there the global sum is exact to 2**24.
        """
        sums = [self._accumulators[_internals.variable_index(self, v)].value for v in variables]
        pair = tf.stack([self._window_weight.value, self._window_dropped.value])
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            pair = tf.cast(pair, tf.float32)
        return sums + [pair]

    def _micro_step_in_replica(self, pairs, weight, finite, on_close):
        """One branch per micro-step: keep, drop, or close the window (with or without this one).

        The decision is one ``switch_case`` on ``2 * closes + finite``, where
        ``closes`` (this call is the window's ``k``-th) is known before the
        call, so a micro-step that does not close a window runs a single
        branch of a few assignments -- no second conditional, no read-back
        of the sums -- and the closing branch adds the last micro-batch to
        the sums on the fly instead of writing it to the accumulators first.
        The only collective of a window is the all-reduce in the closing
        branches: the partial sums, the sum of weights and the count of
        dropped micro-batches travel together (all float32 under a strategy,
        so it packs them into one collective; see ``_window_values``).
        """
        variables = [v for _, v in pairs]

        # ``last_step_updated`` reads ``micro_step == 0`` too, so the open
        # branches leave ``_last_updated`` alone: one assignment less per step.
        def keep():
            self._add(pairs, weight)
            self._micro_step.assign_add(1)

        def drop():
            self._window_dropped.assign_add(1.0)
            self._micro_step.assign_add(1)

        def close(with_this_one):
            values = self._window_values(variables)
            one, zero = tf.constant(1.0, tf.float64), tf.constant(0.0, tf.float64)
            if with_this_one:
                values = [
                    _plus(s, g, weight) for s, (g, _) in zip(values[:-1], pairs, strict=True)
                ] + [
                    values[-1]
                    + tf.cast(tf.stack([one if weight is None else weight, zero]), values[-1].dtype)
                ]
            else:
                values = values[:-1] + [values[-1] + tf.constant([0.0, 1.0], values[-1].dtype)]
            self._close_window(values, variables, on_close, pending=1)

        closes = ops.greater_equal(self._micro_step, self.accumulation_steps - 1)
        # One Case op, not nested conds: measured cheaper per micro-step.
        index = 2 * ops.cast(closes, "int32") + ops.cast(finite, "int32")
        tf.switch_case(
            index,
            [drop, keep, lambda: close(False), lambda: close(True)],
            name="close_window",
        )

    def _close_window(self, values, variables, on_close, pending=0):
        """All-reduce the window (one collective), update if it holds finite weight, reset."""
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            values = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, values
            )
        apply = self._apply_condition(values)
        tf.cond(apply, lambda: self._step_inner(values, variables), lambda: None)
        self._reset_window(values, apply, variables, pending)
        self._last_updated.assign(ops.cast(apply, "int64"))
        if on_close is not None:
            on_close(values[-1])

    def _update_if(self, close, variables):
        """Close the window on every replica iff ``close`` (``flush``: no micro-batch to add)."""
        if not _needs_merge_call():

            def close_window():
                self._close_window(self._window_values(variables), variables, None)

            def keep_open():
                self._last_updated.assign(0)

            tf.cond(close, close_window, keep_open, name="close_window")
            return
        self._update_in_cross_replica(close, variables, None)

    def _update_in_cross_replica(self, close, variables, on_close):
        """``_update_if`` under a strategy whose optimizer updates call ``merge_call``.

        ``tf.cond`` in replica context cannot hold the inner optimizer's
        update (it calls ``merge_call``), so the decision is taken in
        cross-replica context; the one collective is still the packed
        ``batch_reduce_to`` inside the closing branch.
        """

        def cross_replica(strategy, close, values):
            def close_window():
                reduced = strategy.extended.batch_reduce_to(
                    tf.distribute.ReduceOp.SUM, [(v, v) for v in values]
                )
                first = [strategy.experimental_local_results(v)[0] for v in reduced]
                apply = self._apply_condition(first)
                tf.cond(
                    apply,
                    lambda: strategy.extended.call_for_each_replica(
                        self._step_inner, args=(reduced, variables)
                    ),
                    lambda: None,
                )
                strategy.extended.call_for_each_replica(
                    self._reset_window, args=(reduced, apply, variables)
                )
                if on_close is not None:
                    on_close(first[-1])
                return apply

            first_close = strategy.experimental_local_results(close)[0]
            return tf.cond(
                first_close, close_window, lambda: tf.constant(False), name="close_window"
            )

        updated = tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(close, self._window_values(variables))
        )
        self._last_updated.assign(ops.cast(updated, "int64"))

    @staticmethod
    def _apply_condition(values):
        """Update iff the window holds weight and its (reduced) sums are finite."""
        return ops.logical_and(ops.greater(values[-1][0], 0.0), _all_finite(values[:-1]))

    def _step_inner(self, values, variables):
        """Hand the inner optimizer the global weighted mean, already reduced."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Per-replica gradients follow Keras' convention (the loss is divided by
        # the number of replicas, so that the *sum* over replicas is the mean):
        # undo that factor here, since the sum over replicas is already taken.
        scale = ops.cast(ops.divide(float(replicas), values[-1][0]), "float32")
        grads = [
            ops.cast(ops.multiply(s, scale), v.dtype)
            for s, v in zip(values[:-1], variables, strict=True)
        ]
        with _internals.all_reduce_already_done(
            self.inner_optimizer, replicas
        ) as grads_are_reduced:
            if not grads_are_reduced:
                # An optimizer that all-reduces some other way: hand each replica
                # its share, which that all-reduce sums back to the mean.
                grads = [ops.divide(g, ops.cast(replicas, g.dtype)) for g in grads]
            self.inner_optimizer.apply(grads, variables)

    def _reset_window(self, values, applied, variables, pending=0):
        """Zero the window; ``pending`` calls of it are not yet in ``micro_step`` (1 when closing early)."""
        for v in variables:
            accumulator = self._accumulators[_internals.variable_index(self, v)]
            # A constant, not zeros_like(value): no read of the variable.
            accumulator.assign(tf.zeros(accumulator.shape, accumulator.dtype))
        # A window whose sums overflowed is dropped whole: count all its shards.
        shards = ops.cast(self._micro_step + pending, "float32") * float(
            tf.distribute.get_strategy().num_replicas_in_sync
        )
        finite_sums = ops.logical_or(applied, ops.equal(values[-1][0], 0.0))
        dropped = ops.where(finite_sums, values[-1][1], ops.cast(shards, values[-1][1].dtype))
        self._dropped.assign_add(ops.cast(dropped, "int64"))
        self._window_weight.assign(0.0)
        self._window_dropped.assign(0.0)
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
