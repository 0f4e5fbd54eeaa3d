"""Batch normalization whose moving statistics follow gradient-accumulation windows.

With ``GradientAccumulator(inner, k)`` a model trains on windows of ``k``
micro-batches, but Keras' ``BatchNormalization`` updates its moving mean and
variance on every micro-batch: ``k`` times per real update, each time with a
micro-batch's statistics, so the effective momentum is ``momentum**k`` and the
averages follow small-batch statistics. This layer instead accumulates, per
channel, the count, the sum and the sum of squares of its training inputs, and
updates the moving statistics once when ``accumulation_steps`` training calls
have been seen, with the mean and (biased) variance of the whole window. The
moving statistics are then those of training with batches of ``k * b``.

Example:
    >>> import keras, numpy as np
    >>> from tfkit.layers import BatchNormalization
    >>> bn = BatchNormalization(accumulation_steps=2, momentum=0.0)
    >>> _ = bn(np.array([[0.0], [2.0]], "float32"), training=True)
    >>> float(bn.moving_mean[0])  # window still open
    0.0
    >>> _ = bn(np.array([[4.0], [6.0]], "float32"), training=True)
    >>> float(bn.moving_mean[0]), float(bn.moving_variance[0])  # mean, var of 0, 2, 4, 6
    (3.0, 5.0)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from tfkit import _internals, _validation

__all__ = ["BatchNormalization", "keep_statistics_if", "resolve_accumulation_steps"]


@keras.saving.register_keras_serializable(package="tfkit")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with moving statistics updated once per window.

    Per training call (micro-batch ``i`` of the open window, ``s`` the moving
    mean, constant within a window), for each channel::

        n += count_i,  S1 += sum_i(x - s),  S2 += sum_i((x - s)**2)

    and on the ``accumulation_steps``-th call::

        mean = s + S1 / n,   var = S2 / n - (S1 / n)**2
        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean
        moving_variance <- momentum * moving_variance + (1 - momentum) * var

    which is Keras' update for one batch holding the whole window (biased
    variance, as ``keras.ops.moments``). Shifting by ``s`` keeps the sums
    small, so the variance does not lose precision to cancellation.

    **The forward pass still normalizes each micro-batch with its own mean and
    variance**, as Keras does: only the moving statistics (used at inference)
    equal those of batches of ``k * b``. Masked inputs count only their
    unmasked positions, as Keras' masked moments do.

    Same arguments, weights and saved format as Keras' layer (a ``.keras`` or
    ``.weights.h5`` file of either loads into the other); ``accumulation_steps
    = 1`` (default) is exactly Keras' layer. The window state (three sums and
    a call counter) is not a Keras weight: it is saved by
    ``tf.train.Checkpoint``/``BackupAndRestore``, not in ``.keras`` files.
    Like ``GradientAccumulator``, windows ignore epoch boundaries; a partial
    window at the end of training is not applied. ``renorm`` and
    ``synchronized`` are not supported with windows of more than one call.

    **The window length follows the model's accumulator.** Left at ``None``
    (default), ``accumulation_steps`` is read at the first train step of
    ``tfkit.TrainStep`` or of ``model.fit`` after ``tfkit.training.install``:
    the ``k`` of the ``GradientAccumulator`` in the optimizer tree (1 without
    one). An explicit value that disagrees with that ``k`` raises
    ``ValueError`` there. In a plain ``model.fit`` (no ``install``) nothing
    reads it: ``None`` acts as 1 (Keras' behaviour), so pass the ``k``.

    **Non-finite micro-batches.** Under ``TrainStep``/``install``, a
    micro-batch whose gradients are non-finite (the one the accumulator or the
    loss scaler drops) contributes nothing to the window or the moving
    statistics, and a moving statistic that would become non-finite is not
    changed; this holds for Keras' own ``BatchNormalization`` too (see
    :func:`keep_statistics_if`). A plain ``model.fit`` has no such guard.

    Args:
        accumulation_steps: training calls per window, an int ``>= 1``, or
            ``None`` (default): the model's accumulator's ``k``, resolved at
            the first train step of ``TrainStep``/``install`` (else 1).
        **kwargs: every argument of ``keras.layers.BatchNormalization``.
    """

    def __init__(self, *args, accumulation_steps: int | None = None, **kwargs):
        if accumulation_steps is not None:
            accumulation_steps = _validation.check_int(
                "BatchNormalization", "accumulation_steps", accumulation_steps, low=1
            )
        super().__init__(*args, **kwargs)
        if accumulation_steps is not None and accumulation_steps > 1:
            self._check_supported(accumulation_steps)
        self.accumulation_steps = accumulation_steps
        self._resolved_steps = accumulation_steps

    def _check_supported(self, steps: int) -> None:
        if self.renorm or self.synchronized:
            option = "renorm" if self.renorm else "synchronized"
            raise ValueError(
                f"BatchNormalization: `{option}=True` is not supported with accumulation_steps="
                f"{steps}; use accumulation_steps=1 (Keras' behaviour)."
            )

    @property
    def window_steps(self) -> int:
        """Training calls per window in effect (``accumulation_steps``, resolved; 1 if unset)."""
        return self._resolved_steps or 1

    def resolve_accumulation_steps(self, steps: int) -> None:
        """Take the model's accumulator's ``steps``; refuse an explicit value that disagrees."""
        if self.accumulation_steps is None:
            if steps > 1:
                self._check_supported(steps)
            self._resolved_steps = steps
        elif self.accumulation_steps != steps:
            _validation.fail(
                f"BatchNormalization {self.name!r}",
                "accumulation_steps",
                self.accumulation_steps,
                f"the model's GradientAccumulator steps ({steps}) or None (follow it)",
            )

    def _has_window(self) -> bool:
        return self.accumulation_steps is None or self.accumulation_steps > 1

    def build(self, input_shape):
        super().build(input_shape)
        # Unset steps may resolve to k > 1 at the first train step (inside a
        # trace): the window variables exist from the start.
        if not self._has_window() or self.renorm or self.synchronized:
            return
        channels = input_shape[self.axis]

        # Plain tf.Variables, not Keras weights: the layer's weights (and so
        # its saved files) stay exactly Keras'. One copy per replica, updated
        # without communication.
        def local(name, shape, dtype, aggregation):
            return tf.Variable(
                tf.zeros(shape, dtype),
                trainable=False,
                name=name,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=aggregation,
            )

        total = tf.VariableAggregation.SUM
        self._window_count = local("window_count", (channels,), tf.float32, total)
        self._window_sum = local("window_sum", (channels,), tf.float32, total)
        self._window_sum_sq = local("window_sum_sq", (channels,), tf.float32, total)
        self._window_calls = local(
            "window_calls", (), tf.int64, tf.VariableAggregation.ONLY_FIRST_REPLICA
        )

    def call(self, inputs, training=None, mask=None):
        if self.window_steps == 1 or not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            return super().call(inputs, training=training, mask=mask)  # Keras raises
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, compute_dtype)
        mean, variance = _internals.batch_normalization_moments(self, inputs, mask)
        self._accumulate(inputs, mask)
        gamma = ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = ops.cast(self.beta, inputs.dtype) if self.center else None
        outputs = ops.batch_normalization(
            x=inputs, mean=mean, variance=variance, axis=self.axis, offset=beta,
            scale=gamma, epsilon=self.epsilon,
        )  # fmt: skip
        return ops.cast(outputs, self.compute_dtype)

    def _broadcast(self, per_channel, rank):
        shape = [1] * rank
        shape[self.axis % rank] = -1
        return ops.reshape(per_channel, shape)

    def _accumulate(self, inputs, mask):
        rank = len(inputs.shape)
        shift = self._broadcast(ops.cast(self.moving_mean, "float32"), rank)
        centered = ops.cast(inputs, "float32") - shift
        axes = _internals.batch_normalization_reduction_axes(self)
        if mask is None:
            weights = ops.ones_like(centered)
        else:
            weights = ops.broadcast_to(
                ops.cast(ops.expand_dims(mask, axis=-1), "float32"), ops.shape(centered)
            )
        self._window_count.assign_add(ops.sum(weights, axis=axes))
        self._window_sum.assign_add(ops.sum(centered * weights, axis=axes))
        self._window_sum_sq.assign_add(ops.sum(ops.square(centered) * weights, axis=axes))
        self._window_calls.assign_add(1)
        tf.cond(
            self._window_calls >= self.window_steps,
            self._close_window,
            lambda: None,
            name="close_batch_norm_window",
        )

    def _close_window(self):
        n = self._window_count.read_value()
        safe_n = ops.maximum(n, 1.0)
        offset = self._window_sum.read_value() / safe_n
        shift = ops.cast(self.moving_mean, "float32")
        window_mean = shift + offset
        window_var = ops.maximum(self._window_sum_sq.read_value() / safe_n - offset**2, 0.0)
        # Channels that saw no unmasked input keep their statistics.
        seen = ops.greater(n, 0.0)
        m = self.momentum
        new_mean = ops.where(seen, shift * m + window_mean * (1.0 - m), shift)
        old_var = ops.cast(self.moving_variance, "float32")
        new_var = ops.where(seen, old_var * m + window_var * (1.0 - m), old_var)
        self.moving_mean.assign(ops.cast(new_mean, self.moving_mean.dtype))
        self.moving_variance.assign(ops.cast(new_var, self.moving_variance.dtype))
        for variable in (self._window_count, self._window_sum, self._window_sum_sq):
            variable.assign(tf.zeros_like(variable))
        self._window_calls.assign(0)

    def get_config(self):
        return {**super().get_config(), "accumulation_steps": self.accumulation_steps}


def _batch_norm_layers(model) -> list:
    return [
        layer
        for layer in _internals.flatten_layers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def resolve_accumulation_steps(model, steps: int) -> None:
    """Give every tfkit ``BatchNormalization`` in ``model`` the accumulator's ``steps``.

    Called by ``TrainStep``/``install`` when their step is traced; raises
    ``ValueError`` naming the layer when an explicit ``accumulation_steps``
    disagrees.
    """
    for layer in _batch_norm_layers(model):
        if isinstance(layer, BatchNormalization):
            layer.resolve_accumulation_steps(steps)


def _statistics(layer) -> list:
    variables = [layer.moving_mean, layer.moving_variance]
    if isinstance(layer, BatchNormalization) and layer.window_steps > 1:
        variables += [
            layer._window_count, layer._window_sum, layer._window_sum_sq, layer._window_calls
        ]
    return variables


def snapshot_statistics(model) -> list:
    """The moving statistics (and open windows) of every BatchNormalization, before a step.

    Empty for a model without BatchNormalization (then the guard adds no op).
    """
    return [
        # tf.identity reads the value now (keras.ops.convert_to_tensor would
        # hand back the Keras variable itself, read only later).
        (layer, [tf.identity(v) for v in _statistics(layer)])
        for layer in _batch_norm_layers(model)
        if layer.built and layer.trainable
    ]


def keep_statistics_if(finite, snapshot: list) -> None:
    """Undo this micro-batch's statistics unless ``finite`` and the new statistics are finite.

    ``finite`` is the step's own verdict (its gradients and weight are finite,
    as ``GradientAccumulator`` and the loss scaler decide). When it is False
    the moving statistics and the open window return to ``snapshot``; a
    windowed layer still counts the call (its window closes with the
    accumulator's), with nothing added. Keras' ``BatchNormalization`` is
    covered the same way (its moving mean and variance).
    """
    if not snapshot:
        return
    checks = [finite]
    for layer, _ in snapshot:
        checks += [tf.reduce_all(tf.math.is_finite(v)) for v in
                   (layer.moving_mean, layer.moving_variance)]
    keep = tf.reduce_all(tf.stack(checks))

    def restore():
        for layer, before in snapshot:
            for variable, value in zip(_statistics(layer), before, strict=True):
                variable.assign(value)
            if isinstance(layer, BatchNormalization) and layer.window_steps > 1:
                layer._window_calls.assign_add(1)  # the dropped call still counts
                tf.cond(
                    layer._window_calls >= layer.window_steps,
                    layer._close_window,
                    lambda: None,
                )
        return tf.constant(True)

    tf.cond(keep, lambda: tf.constant(False), restore, name="keep_batch_norm_statistics")
