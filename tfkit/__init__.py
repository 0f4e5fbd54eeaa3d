"""tfkit: a TensorFlow-native training toolkit for Keras 3.

Learning-rate schedules, mixed precision with an observable loss scale,
gradient accumulation, activation recomputation, callbacks and tuning tools
that compose in ``model.fit``, custom ``tf.function`` loops (XLA included) and
``tf.distribute`` strategies.

Importing ``tfkit`` imports every submodule, so every tfkit object is
registered with Keras' serialization before a model is loaded
(``keras.saving.load_model(path, safe_mode=True)`` after ``import tfkit``).
"""

from tfkit import (
    accumulation,
    callbacks,
    devices,
    doctor,
    layers,
    memory,
    optimizers,
    plot,
    precision,
    recompute,
    schedules,
    training,
    tuning,
)
from tfkit._version import __version__
from tfkit.optimizers import GradientAccumulator
from tfkit.precision import LossScaleOptimizer
from tfkit.recompute import Recompute, recompute_sequential
from tfkit.training import TrainStep

__all__ = [
    "GradientAccumulator",
    "LossScaleOptimizer",
    "Recompute",
    "TrainStep",
    "__version__",
    "accumulation",
    "callbacks",
    "devices",
    "doctor",
    "layers",
    "memory",
    "optimizers",
    "plot",
    "precision",
    "recompute",
    "recompute_sequential",
    "schedules",
    "training",
    "tuning",
]
