"""tfkit: a TensorFlow-native training toolkit for Keras 3.

Learning-rate schedules, mixed precision with an observable loss scale,
gradient accumulation, activation recomputation, callbacks and tuning tools
that compose in ``model.fit``, custom ``tf.function`` loops (XLA included) and
``tf.distribute`` strategies.

``import tfkit`` is cheap: it does not import TensorFlow. The submodules load
on first use (``tfkit.schedules``, ``tfkit.GradientAccumulator``, ...), and
every tfkit object is registered with Keras' serialization before a model can
be loaded: at once if Keras or TensorFlow is already imported, otherwise as
soon as either finishes importing or a tfkit feature is first touched. So
``import tfkit; import keras; keras.saving.load_model(path, safe_mode=True)``
works in either import order.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from tfkit import _lazy
from tfkit._version import __version__ as __version__

# The modules that register Keras-serializable objects. Importing them all is
# what "registered" means. A new module or package with
# @keras.saving.register_keras_serializable classes adds its name here, nothing
# else (tests/test_imports.py fails until it does). Any public submodule is
# reachable as an attribute (tfkit.layers) without being listed anywhere.
SERIALIZABLE_MODULES = (
    "tfkit.schedules",
    "tfkit.optimizers",
    "tfkit.precision",
    "tfkit.recompute",
    "tfkit.callbacks",
    "tfkit.layers",
)

# Public attribute -> the module that defines it. Submodules are attributes too.
_ATTRIBUTES = {
    "GradientAccumulator": "tfkit.optimizers",
    "LossScaleOptimizer": "tfkit.precision",
    "Recompute": "tfkit.recompute",
    "recompute_sequential": "tfkit.recompute",
    "TrainStep": "tfkit.training",
}
# ``tfkit.accumulation`` (the old home of GradientAccumulator) still imports,
# through the unlisted-submodule branch of ``__getattr__``, but is not public API.
_SUBMODULES = (
    "callbacks",
    "devices",
    "doctor",
    "layers",
    "memory",
    "optimizers",
    "plot",
    "precision",
    "recompute",
    "schedules",
    "training",
    "tuning",
)

__all__ = sorted(["__version__", *_ATTRIBUTES, *_SUBMODULES])


def register_serializables() -> None:
    """Import every module of :data:`SERIALIZABLE_MODULES` (idempotent).

    After this call ``keras.saving.load_model(path, safe_mode=True)`` finds every
    tfkit class by its registered name ``tfkit>ClassName``. tfkit calls it
    itself; call it explicitly only when loading models from a thread that
    raced the first import of Keras.
    """
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


def __getattr__(name: str):
    # PEP 562: resolve the lazy public names; register everything on first use.
    if name in _ATTRIBUTES:
        register_serializables()
        value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    elif name in _SUBMODULES or (
        not name.startswith("_") and importlib.util.find_spec(f"tfkit.{name}") is not None
    ):  # a public submodule, listed or not
        register_serializables()
        value = importlib.import_module(f"tfkit.{name}")
    else:
        raise AttributeError(f"module 'tfkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "keras" in sys.modules or "tensorflow" in sys.modules:
    register_serializables()
else:
    _lazy.call_after_import(("keras", "tensorflow"), register_serializables)
