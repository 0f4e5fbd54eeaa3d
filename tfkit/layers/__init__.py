"""Keras layers that know about tfkit's training features.

* :class:`BatchNormalization` -- Keras' ``BatchNormalization`` whose moving
  statistics advance once per accumulation window, with the statistics of the
  whole window.
"""

from tfkit.layers.batch_normalization import BatchNormalization

__all__ = ["BatchNormalization"]
