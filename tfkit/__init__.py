"""tfkit: a TensorFlow-native training toolkit for Keras 3.

Learning-rate schedules, mixed precision with an observable loss scale,
gradient accumulation, activation recomputation, callbacks and tuning tools
that compose in ``model.fit``, custom ``tf.function`` loops (XLA included) and
``tf.distribute`` strategies.
"""

from tfkit._version import __version__

__all__ = ["__version__"]
