"""Callback state held in ``tf.Variable`` objects so ``tf.train.Checkpoint`` can save it.

Private to ``tfkit.callbacks``. Each stateful callback owns a ``CallbackState``
(exposed as ``callback.state``). Save it next to the model, e.g.
``tf.train.Checkpoint(model=model, optimizer=model.optimizer, early_stopping=es.state)``,
and restore it before ``fit`` resumes: the callback then keeps its counters
instead of resetting them in ``on_train_begin``.

The rule that decides "resume or reset" lives in the variables themselves:
``in_progress`` is set when training starts and cleared in ``on_train_end``. A
state restored from a checkpoint written mid-training has ``in_progress == 1``,
so the next ``on_train_begin`` keeps it; a callback reused after a completed
``fit`` has ``in_progress == 0`` and starts afresh (Keras' reuse rule).
"""

from __future__ import annotations

import math

import tensorflow as tf


class CallbackState(tf.Module):
    """A named bag of scalar variables plus an optional weight snapshot."""

    def __init__(self, name: str, **scalars):
        super().__init__(name=name)
        self._defaults = dict(scalars)
        self.in_progress = tf.Variable(0, dtype=tf.int64, trainable=False, name="in_progress")
        for key, (value, dtype) in scalars.items():
            setattr(self, key, tf.Variable(value, dtype=dtype, trainable=False, name=key))

    def reset(self) -> None:
        for key, (value, _) in self._defaults.items():
            getattr(self, key).assign(value)

    def get(self, key):
        return getattr(self, key).numpy().item()

    def set(self, key, value) -> None:
        getattr(self, key).assign(value)

    def as_dict(self) -> dict:
        out = {key: self.get(key) for key in self._defaults}
        out["in_progress"] = int(self.in_progress.numpy())
        return out

    def load_dict(self, values: dict) -> None:
        unknown = set(values) - set(self._defaults) - {"in_progress"}
        if unknown:
            raise ValueError(f"{self.name}: unknown state keys {sorted(unknown)}; "
                             f"expected a subset of {sorted(self._defaults) + ['in_progress']}.")
        for key, value in values.items():
            getattr(self, key).assign(value)

    def begin(self) -> bool:
        """Start a training run; return True if an interrupted run's state is being resumed."""
        resuming = bool(self.in_progress.numpy())
        if not resuming:
            self.reset()
        self.in_progress.assign(1)
        return resuming

    def end(self) -> None:
        self.in_progress.assign(0)


class MonitorStateMixin:
    """Keras-compatible read-only views of a monitoring callback's ``self.state``.

    Shared by ``EarlyStopping`` and ``ReduceLROnPlateau``: both keep ``wait``
    and ``best`` (NaN meaning "none yet") in a :class:`CallbackState`.
    """

    state: CallbackState

    @property
    def wait(self) -> int:
        return self.state.get("wait")

    @property
    def best(self) -> float | None:
        best = self.state.get("best")
        return None if math.isnan(best) else best

    def get_state(self) -> dict:
        """Scalar state as a dict (``wait``, ``best``, ...); see ``set_state``."""
        return self.state.as_dict()

    def set_state(self, state: dict) -> None:
        """Load a dict from ``get_state``; the next ``on_train_begin`` resumes from it if it was mid-run."""
        self.state.load_dict(state)
