"""Scoped instance-attribute overrides, for probes and third-party hooks only.

The control plane never uses these (``tests/test_internals.py`` checks that
no tfkit callback leaves an instance attribute shadowing a method).
"""

from __future__ import annotations

import contextlib
import types

__all__ = ["bind_instance_method", "shadow_attribute", "tuner_tensorboard_hook"]

_MISSING = object()


@contextlib.contextmanager
def shadow_attribute(obj, name: str, value):
    """Set ``obj.name = value`` on this instance for the ``with`` block only.

    The doctor's probes run a model eagerly with a layer's ``call`` recorded
    or forced to inference (BatchNormalization on its moving statistics): an
    instance attribute shadows the class's method for that one object, and is
    removed (or the previous instance attribute put back) on exit, whatever
    happens. ``object.__setattr__`` bypasses Keras' auto-tracking, which would
    otherwise try to track a function attribute.
    """
    previous = obj.__dict__.get(name, _MISSING)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if previous is _MISSING:
            object.__delattr__(obj, name)
        else:
            object.__setattr__(obj, name, previous)


def tuner_tensorboard_hook(tuner, make_replacement) -> None:
    """Replace keras-tuner's per-trial TensorBoard set-up on this ``tuner`` instance.

    ``BaseTuner._configure_tensorboard_dir`` (keras-tuner 1.3 through 1.4) is
    where a trial imports ``tensorboard``; ``make_replacement(original)``
    returns the method to use instead. keras-tuner has no option for it.
    """
    original = tuner._configure_tensorboard_dir
    tuner._configure_tensorboard_dir = make_replacement(original)


def bind_instance_method(obj, name: str, function) -> None:
    """Make ``function`` the method ``name`` of this instance (``obj.name(...)`` calls ``function(obj, ...)``).

    ``tfkit.training.install`` gives one compiled model a ``train_step`` that
    passes micro-batch weights to a ``GradientAccumulator``. Keras' documented
    way to change ``train_step`` is a subclass, which an already built (or
    loaded) model cannot acquire; an instance attribute changes this model
    only, and is not saved with it. The one method tfkit replaces, and only
    when the user asks for it.
    """
    setattr(obj, name, types.MethodType(function, obj))
