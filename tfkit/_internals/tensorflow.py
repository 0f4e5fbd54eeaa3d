"""TensorFlow internals: tape state, merge-call support, a dataset's graph."""

from __future__ import annotations

import tensorflow as tf

# ``record`` is the eager tape's bookkeeping; TensorFlow exposes no public
# "could a tape record this op" query nor a public "stop recording" scope that
# also covers tf.function tracing (``tape.stop_recording`` needs the tape
# object, which a layer does not have). Recompute needs both: it decides at
# trace time whether a backward pass can happen, and runs its forward pass
# unrecorded. Module path unchanged from TF 2.4 through 2.21.
from tensorflow.python.eager import record as _record

__all__ = [
    "dataset_variant",
    "stop_recording",
    "strategy_supports_no_merge_call",
    "tape_could_record",
]


def tape_could_record() -> bool:
    """True if some gradient tape could record an op run now (checked at trace time)."""
    return _record.could_possibly_record()


def stop_recording():
    """A scope in which no gradient tape records (for recompute's forward pass)."""
    return _record.stop_recording()


def strategy_supports_no_merge_call() -> bool:
    """Whether the current strategy lets optimizers update without ``merge_call``.

    ``tf.__internal__.distribute.strategy_supports_no_merge_call`` is the test
    Keras' own optimizers make (MirroredStrategy: yes; others: no); wrappers
    that put a ``tf.cond`` around an update must make the same choice.
    TF 2.5 through 2.21.
    """
    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def dataset_variant(dataset) -> tf.Tensor:
    """The variant tensor of a ``tf.data.Dataset`` (to read its graph with ``DatasetToGraphV2``).

    Private attribute ``_variant_tensor`` (TF 2.0 through 2.21); the doctor
    reads the dataset's ops to give advice only.
    """
    return dataset._variant_tensor
