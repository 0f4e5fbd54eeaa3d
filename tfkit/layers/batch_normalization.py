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

from tfkit import _internals

__all__ = ["BatchNormalization"]


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
    window at the end of training is not applied. Set ``accumulation_steps``
    to the accumulator's ``k`` and call the model once per micro-batch.
    ``renorm`` and ``synchronized`` are not supported with
    ``accumulation_steps > 1``.

    Args:
        accumulation_steps: training calls per window, an int ``>= 1``.
            Defaults to 1.
        **kwargs: every argument of ``keras.layers.BatchNormalization``.
    """

    def __init__(self, *args, accumulation_steps: int = 1, **kwargs):
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int):
            raise TypeError(
                "`accumulation_steps` must be a Python int >= 1, received "
                f"accumulation_steps={accumulation_steps!r} "
                f"of type {type(accumulation_steps).__name__}."
            )
        if accumulation_steps < 1:
            raise ValueError(
                "`accumulation_steps` must be an int >= 1, received "
                f"accumulation_steps={accumulation_steps}."
            )
        super().__init__(*args, **kwargs)
        if accumulation_steps > 1 and (self.renorm or self.synchronized):
            option = "renorm" if self.renorm else "synchronized"
            raise ValueError(
                f"`{option}=True` is not supported with accumulation_steps="
                f"{accumulation_steps}; use accumulation_steps=1 (Keras' behaviour)."
            )
        self.accumulation_steps = accumulation_steps

    def build(self, input_shape):
        super().build(input_shape)
        if self.accumulation_steps == 1:
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
        if self.accumulation_steps == 1 or not (training and self.trainable):
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
            self._window_calls >= self.accumulation_steps,
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
