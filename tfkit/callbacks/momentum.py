"""Drive ``momentum`` / ``beta_1`` from a schedule, in-graph, at every real optimizer update.

Keras optimizers store ``momentum`` (SGD, RMSprop) and ``beta_1`` (Adam, AdamW,
Adamax, Nadam, Lion) as Python floats; the traced train step bakes them in as
constants (docs/keras-defects.md#momentum-not-schedulable), and assigning a new float per batch from a callback would both
retrace and miss the steps executed inside one ``steps_per_execution`` call.

The schedule is installed in the leaf optimizer's
:class:`tfkit.optimizers.HyperparameterState`: the update evaluates
``schedule(iterations)`` in the graph and records the value it used, which
the logger reads. The optimizer's ``get_config`` keeps the original float.

Step convention: the ``k``-th real update of a leaf optimizer (``k = 0, 1,
...``) uses ``schedule(k)``, ``k`` being that leaf's ``iterations`` -- which
counts real updates only, whether the optimizer is wrapped by a
``LossScaleOptimizer`` (skipped steps do not count) or a gradient accumulator.
"""

from __future__ import annotations

import keras

from tfkit.optimizers.hyperparameters import (
    control,
    install_for,
    refresh_train_function,
)

__all__ = ["MomentumScheduler", "schedule_hyperparameter", "unschedule_hyperparameter"]


def schedule_hyperparameter(optimizer, schedule, hyperparameter: str | None = None) -> float:
    """Make ``schedule`` drive ``hyperparameter`` of every leaf optimizer of ``optimizer``.

    Call it before the train step is traced (``MomentumScheduler`` does it in
    ``on_train_begin``). Calling it again with the same schedule re-enables it
    without a retrace. An *unbuilt* SGD/RMSprop with ``momentum=0.0`` takes
    ``schedule(0)`` as its float (so that it builds momentum slots); a built
    one raises ``ValueError``.

    Args:
        optimizer: a Keras optimizer tree (wrappers, ``MultiOptimizer``).
        schedule: callable ``step -> value`` evaluated in-graph; values in [0, 1].
        hyperparameter: ``"momentum"``, ``"beta_1"`` or ``None`` (by optimizer type).

    Returns:
        The float now set on the (first) leaf: its value for ``get_config``.

    Example:
        >>> import keras
        >>> from tfkit.callbacks import schedule_hyperparameter
        >>> sgd = keras.optimizers.SGD(0.1, momentum=0.9)
        >>> schedule_hyperparameter(sgd, keras.optimizers.schedules.ExponentialDecay(0.9, 10, 0.5))
        0.9
    """
    states = control(optimizer)
    for state in states.values():
        state.schedule_momentum(schedule, hyperparameter)
    first = next(iter(states.values()))
    return float(getattr(first.optimizer, first.momentum_name))


def unschedule_hyperparameter(optimizer, hyperparameter: str | None = None) -> None:
    """Put back the plain floats replaced by ``schedule_hyperparameter`` (re-trace steps afterwards)."""
    for state in control(optimizer).values():
        if hyperparameter is None or state.momentum_name == hyperparameter:
            state.unschedule_momentum()


@keras.saving.register_keras_serializable(package="tfkit")
class MomentumScheduler(keras.callbacks.Callback):
    """Cycle ``momentum`` (SGD, RMSprop) or ``beta_1`` (Adam family, Lion) with a schedule.

    ``value_k = schedule(k)`` for the ``k``-th real update of each leaf optimizer,
    computed inside the compiled train step (XLA included) from that leaf's
    ``iterations``: exact at every update with ``steps_per_execution > 1``,
    through ``LossScaleOptimizer``, gradient accumulation and Keras'
    ``MultiOptimizer``, with a single trace. ``on_train_begin`` installs the
    schedule in the optimizers' hyperparameter state (and re-traces a step
    traced without it, once); ``on_train_end`` switches it off in-graph, so a
    later ``fit`` without this callback uses the original float, and repeated
    ``fit`` calls with it do not retrace.

    In a custom loop, drive it through ``keras.callbacks.CallbackList`` and call
    ``on_train_begin`` before the step function is first traced; with an
    uncompiled model, build ``tfkit.TrainStep(model, loss, optimizer)`` first.

    Args:
        schedule: callable ``step -> value`` (e.g. ``OneCycle(...).momentum_schedule``
            or any ``LearningRateSchedule``) for every parameter group, or a dict
            ``{group name: schedule}`` (see ``tfkit.optimizers.parameter_groups``);
            groups missing from the dict keep their float.
        hyperparameter: ``"momentum"``, ``"beta_1"`` or ``None`` (by optimizer type).

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import MomentumScheduler
        >>> cyc = keras.optimizers.schedules.PolynomialDecay(0.95, 10, end_learning_rate=0.85)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "mse", jit_compile=True)
        >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, verbose=0,
        ...               callbacks=[MomentumScheduler(cyc)])
        >>> float(model.optimizer.momentum)  # the optimizer's config value is unchanged
        0.9

    Reference: L. N. Smith, "A disciplined approach to neural network
    hyper-parameters" (2018), cyclical momentum; PyTorch ``OneCycleLR(cycle_momentum=True)``.
    """

    def __init__(self, schedule, hyperparameter: str | None = None):
        super().__init__()
        if isinstance(schedule, dict):
            bad = {k: v for k, v in schedule.items() if not isinstance(k, str) or not callable(v)}
            if bad or not schedule:
                raise TypeError("MomentumScheduler: a dict `schedule` must map group names (str) to callables; "
                                f"received schedule={schedule!r}.")
        elif not callable(schedule):
            raise TypeError("MomentumScheduler: `schedule` must be callable or a dict {group name: callable}; "
                            f"received schedule={schedule!r}.")
        if hyperparameter not in (None, "momentum", "beta_1"):
            raise ValueError("MomentumScheduler: `hyperparameter` must be 'momentum', 'beta_1' or None; "
                             f"received hyperparameter={hyperparameter!r}.")
        self.schedule = schedule
        self.hyperparameter = hyperparameter
        self._states = []

    def on_train_begin(self, logs=None):
        states = install_for("MomentumScheduler", self.model)
        if isinstance(self.schedule, dict):
            unknown = sorted(set(self.schedule) - set(states))
            if unknown:
                raise ValueError(f"MomentumScheduler: unknown parameter group(s) {unknown} in `schedule`; "
                                 f"the optimizer's groups are {sorted(states)}.")
            chosen = {name: (states[name], s) for name, s in self.schedule.items()}
        else:
            chosen = {name: (state, self.schedule) for name, state in states.items()}
        retrace = False
        for state, schedule in chosen.values():
            retrace |= state.schedule_momentum(schedule, self.hyperparameter)
        if retrace:
            refresh_train_function(self.model)  # a step traced earlier holds the old schedule
        self._states = [state for state, _ in chosen.values()]

    def on_train_end(self, logs=None):
        # Switched off in-graph, not removed: the traced step stays valid.
        for state in self._states:
            state.momentum_enabled.assign(False)

    def get_config(self) -> dict:
        if isinstance(self.schedule, dict):
            schedule = {k: keras.saving.serialize_keras_object(v) for k, v in self.schedule.items()}
        else:
            schedule = keras.saving.serialize_keras_object(self.schedule)
        return {"schedule": schedule, "hyperparameter": self.hyperparameter}

    @classmethod
    def from_config(cls, config: dict) -> MomentumScheduler:
        config = dict(config)
        schedule = config["schedule"]
        if isinstance(schedule, dict) and "class_name" not in schedule:
            config["schedule"] = {k: keras.saving.deserialize_keras_object(v) for k, v in schedule.items()}
        else:
            config["schedule"] = keras.saving.deserialize_keras_object(schedule)
        return cls(**config)
