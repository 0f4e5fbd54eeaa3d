"""GradientAccumulator's window weight is float64: token counts stay exact to 2**53."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkit


@pytest.mark.parametrize("as_tensor", [False, True])
def test_window_weight_exact_beyond_float32(as_tensor):
    v = keras.Variable(np.zeros(1, "float32"))
    optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(1.0), 3)
    optimizer.build([v])
    step = tf.function(lambda g, w: optimizer.apply([g], [v], weight=w))
    # 2**24 + 1 + 1: a float32 sum stays at 2**24 (each +1 rounds away).
    for weight, grad in ((2.0**24, 0.0), (1.0, 1.0), (1.0, 1.0)):
        w = tf.constant(weight, tf.float32) if as_tensor else weight
        step(tf.constant([grad], tf.float32), w)
        if int(optimizer.iterations) == 0:
            total = float(optimizer._window_weight.numpy())
    assert total == 2.0**24 + 1  # after two of the three micro-batches
    # The update is the weighted mean over the exact total weight.
    assert float(v.numpy()[0]) == float(np.float32(-2.0 / (2**24 + 2)))
    assert float(v.numpy()[0]) != float(np.float32(-2.0 / 2**24))


def test_weights_up_to_2_53_accumulate_exactly():
    v = keras.Variable(np.zeros(1, "float32"))
    optimizer = tfkit.GradientAccumulator(keras.optimizers.SGD(1.0), 4)
    optimizer.build([v])
    for weight in (2.0**52, 1.0, 2.0**51):
        optimizer.apply([tf.zeros([1])], [v], weight=weight)
    assert float(optimizer._window_weight.numpy()) == 2.0**52 + 2.0**51 + 1
