"""Exact snapshots of everything a training step changes, for tools that train "on trial".

The LR range test and the micro-batch finder run real training steps on the
user's model and must leave it exactly as they found it. A step changes more
than the weights: optimizer iterations and slots (for every optimizer of a
wrapper chain, loss-scale state included), non-trainable weights such as
BatchNorm moving statistics, the seed-generator state of dropout layers, and
the compiled metrics. :class:`TrainingState` copies all of those variables to
host memory and writes them back bit for bit.
"""

from __future__ import annotations

import keras
import numpy as np

from tfkit import _internals
from tfkit.optimizers.hyperparameters import STATE_ATTRIBUTE
from tfkit.optimizers.tree import walk


def ensure_built(model: keras.Model, batch) -> None:
    """Create the model, metric and optimizer variables without running a step.

    ``fit`` and ``train_on_batch`` create optimizer slots lazily on the first
    step; a snapshot taken before that would miss them. Keras' own symbolic
    build (no computation, no memory) creates them up front.
    """
    _internals.symbolic_build(model, keras.utils.unpack_x_y_sample_weight(batch))


def _state_variables(model: keras.Model) -> list:
    found, seen = [], set()
    groups = [model.variables, model.metrics_variables]
    if model.optimizer is not None:
        for opt in walk(model.optimizer):
            groups.append(opt.variables)
            state = getattr(opt, STATE_ATTRIBUTE, None)
            if state is not None:  # tfkit's hyperparameter state (not in opt.variables)
                groups.append(state.trainable_variables + state.non_trainable_variables)
    for group in groups:
        for v in group:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
    return found


class TrainingState:
    """Host copy of every variable of ``model``, its metrics and its optimizer chain.

    Example:
        >>> import keras, numpy as np
        >>> from tfkit.tuning._state import TrainingState
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> state = TrainingState.capture(model, (np.ones((4, 2)), np.ones((4, 1))))
        >>> _ = model.train_on_batch(np.ones((4, 2)), np.ones((4, 1)))
        >>> state.restore()
        >>> state.matches(model)
        True
    """

    def __init__(self, variables: list, values: list[np.ndarray]):
        self._variables = variables
        self._values = values

    @classmethod
    def capture(cls, model: keras.Model, batch=None) -> TrainingState:
        """Snapshot ``model``; ``batch`` (``(x, y)``) lets unbuilt parts be built first."""
        if batch is not None:
            ensure_built(model, batch)
        variables = _state_variables(model)
        return cls(variables, [np.array(v.numpy(), copy=True) for v in variables])

    def restore(self) -> None:
        """Write the snapshot back into the very same variables."""
        for v, value in zip(self._variables, self._values, strict=True):
            v.assign(value)

    def matches(self, model: keras.Model) -> bool:
        """True when every variable of ``model`` equals the snapshot bit for bit."""
        current = _state_variables(model)
        if [id(v) for v in current] != [id(v) for v in self._variables]:
            return False
        return all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in zip((np.asarray(v.numpy()) for v in current), self._values, strict=True)
        )
