"""Drive ``momentum`` / ``beta_1`` from a schedule, in-graph, at every real optimizer update.

Keras optimizers store ``momentum`` (SGD, RMSprop) and ``beta_1`` (Adam, AdamW,
Adamax, Nadam, Lion) as Python floats; the traced train step bakes them in as
constants, so nothing can cycle them (DESIGN.md K6), and assigning a new float
per batch from a callback would both retrace and miss the steps executed
inside one ``steps_per_execution`` call.

Mechanism. ``schedule_hyperparameter`` replaces the float with a
``ScheduledHyperparameter``: a ``float`` subclass whose float value is the
original (so ``get_config``, JSON, and Keras' structural tests such as
``momentum != 0`` see an ordinary number), and which implements TensorFlow's
``__tf_tensor__`` conversion protocol and the arithmetic operators. Every
place an optimizer's ``update_step`` uses the hyperparameter numerically
(``ops.cast(self.momentum, dtype)``, ``1 - self.beta_1``,
``ops.multiply(self.momentum, m)``, ``u_product * self.beta_1``) therefore
produces the graph expression ``schedule(optimizer.iterations)``, read at each
update from the optimizer's update counter. One trace serves the whole run.

Step convention (tfkit's): the value used by the update that is the ``k``-th
real update (``k = 0, 1, ...``) is ``schedule(k)``, with ``k`` read from the
innermost optimizer's ``iterations`` — which counts real updates only, whether
the optimizer is wrapped by a ``LossScaleOptimizer`` (skipped steps do not
count) or a gradient accumulator.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfkit import _validation
from tfkit.callbacks._optimizer_access import base_optimizer, refresh_train_function

__all__ = [
    "ScheduledHyperparameter",
    "schedule_hyperparameter",
    "unschedule_hyperparameter",
    "MomentumScheduler",
    "default_hyperparameter",
]


class ScheduledHyperparameter(float):
    """A float that evaluates ``schedule(optimizer.iterations)`` when TensorFlow reads it.

    As a Python ``float`` it equals ``nominal`` (the optimizer's original value);
    comparisons, ``float()``, ``get_config`` and JSON use that. Converted to a
    tensor (``tf.convert_to_tensor``, ``ops.cast``) or combined arithmetically
    it is ``schedule(optimizer.iterations)``, computed in the graph being traced.

    Args:
        nominal: The float seen by non-numeric code (the original hyperparameter).
        schedule: Callable ``step -> value`` (e.g. a ``LearningRateSchedule``).
        optimizer: The optimizer whose ``iterations`` is the step.
    """

    # Keras' dtype inference (``getattr(x, "dtype", type(x))``) must treat this
    # as a weakly typed Python float, like the float it replaces.
    dtype = float

    def __new__(cls, nominal: float, schedule, optimizer):
        nominal = _validation.check_float("ScheduledHyperparameter", "nominal", nominal)
        obj = super().__new__(cls, nominal)
        obj.schedule = schedule
        obj.optimizer = optimizer
        # Read in-graph: switching the schedule off (MomentumScheduler.on_train_end)
        # or on again needs no retrace of an already traced step.
        obj.enabled = tf.Variable(True, trainable=False, name="hyperparameter_schedule_enabled")
        return obj

    def __tf_tensor__(self, dtype=None, name=None):
        dtype = tf.as_dtype(dtype or tf.float32)
        value = tf.cast(self.schedule(self.optimizer.iterations), dtype)
        return tf.where(self.enabled, value, tf.constant(float(self), dtype), name=name)

    def current(self, step: int | None = None) -> float:
        """Host-side value at ``step`` (default: the last update, ``iterations - 1``)."""
        if not bool(self.enabled.numpy()):
            return float(self)
        if step is None:
            step = max(int(tf.convert_to_tensor(self.optimizer.iterations).numpy()) - 1, 0)
        return float(tf.convert_to_tensor(self.schedule(step)).numpy())

    def _tensor_like(self, other):
        dtype = getattr(other, "dtype", None)
        if not isinstance(dtype, tf.dtypes.DType):
            try:
                dtype = tf.as_dtype(dtype) if dtype is not None and dtype is not float else tf.float32
            except TypeError:
                dtype = tf.float32
        if not dtype.is_floating:
            dtype = tf.float32
        return self.__tf_tensor__(dtype)

    def __add__(self, other):
        return self._tensor_like(other) + other

    def __radd__(self, other):
        return other + self._tensor_like(other)

    def __sub__(self, other):
        return self._tensor_like(other) - other

    def __rsub__(self, other):
        return other - self._tensor_like(other)

    def __mul__(self, other):
        return self._tensor_like(other) * other

    def __rmul__(self, other):
        return other * self._tensor_like(other)

    def __truediv__(self, other):
        return self._tensor_like(other) / other

    def __rtruediv__(self, other):
        return other / self._tensor_like(other)

    def __pow__(self, other):
        return self._tensor_like(other) ** other

    def __rpow__(self, other):
        return other ** self._tensor_like(other)

    def __neg__(self):
        return -self.__tf_tensor__()

    def __reduce__(self):
        # Copies (deepcopy, pickle) degrade to the plain nominal float.
        return (float, (float(self),))

    def __repr__(self):
        return f"ScheduledHyperparameter({float(self)!r}, schedule={self.schedule!r})"


def default_hyperparameter(optimizer) -> str:
    """``"momentum"`` for SGD/RMSprop-like optimizers, ``"beta_1"`` for the Adam family and Lion."""
    optimizer = base_optimizer(optimizer)
    for name in ("momentum", "beta_1"):
        if hasattr(optimizer, name):
            return name
    raise ValueError(
        f"{type(optimizer).__name__} has neither `momentum` nor `beta_1`; "
        "momentum scheduling supports SGD, RMSprop, Adam, AdamW, Adamax, Nadam and Lion."
    )


def schedule_hyperparameter(optimizer, schedule, hyperparameter: str | None = None) -> ScheduledHyperparameter:
    """Make ``schedule`` drive ``hyperparameter`` of the innermost optimizer of ``optimizer``.

    Call it before the train step is traced (``MomentumScheduler`` does it in
    ``on_train_begin``): a step traced earlier baked the old float in. Calling
    it again with the same schedule re-enables the installed object and
    returns it unchanged (no retrace needed). ``unschedule_hyperparameter``
    restores the plain float (re-trace steps afterwards). An *unbuilt*
    SGD/RMSprop with ``momentum=0.0`` takes ``schedule(0)`` as its float value,
    so that it builds momentum slots; a built one raises ``ValueError``.

    Args:
        optimizer: A Keras optimizer or wrapper chain (``inner_optimizer``).
        schedule: Callable ``step -> value`` evaluated in-graph; values in [0, 1].
        hyperparameter: ``"momentum"``, ``"beta_1"`` or ``None`` (chosen by optimizer type).

    Returns:
        The ``ScheduledHyperparameter`` now set on the optimizer.

    Example:
        >>> import keras
        >>> from tfkit.callbacks import schedule_hyperparameter
        >>> sgd = keras.optimizers.SGD(0.1, momentum=0.9)
        >>> m = schedule_hyperparameter(sgd, keras.optimizers.schedules.ExponentialDecay(0.9, 10, 0.5))
        >>> float(sgd.momentum), round(float(keras.ops.convert_to_numpy(keras.ops.cast(sgd.momentum, "float32"))), 4)
        (0.9, 0.9)
    """
    inner = base_optimizer(optimizer)
    name = hyperparameter or default_hyperparameter(inner)
    if name not in ("momentum", "beta_1"):
        raise ValueError(f"`hyperparameter` must be 'momentum', 'beta_1' or None; received hyperparameter={name!r}.")
    if not hasattr(inner, name):
        raise ValueError(f"{type(inner).__name__} has no `{name}` to schedule; received hyperparameter={name!r}.")
    if not callable(schedule):
        raise TypeError(f"`schedule` must be callable (step -> value); received schedule={schedule!r}.")
    first = float(tf.convert_to_tensor(schedule(0)))
    if not (math.isfinite(first) and 0.0 <= first <= 1.0):
        raise ValueError(f"`schedule(0)` must be a finite value in [0, 1] for `{name}`; received {first!r}.")
    current = getattr(inner, name)
    if isinstance(current, ScheduledHyperparameter):
        if current.schedule is schedule and current.optimizer is inner:
            current.enabled.assign(True)  # same object re-enabled: traced steps stay valid
            return current
        current = float(current)
    nominal = float(current)
    if nominal == 0.0:
        # SGD and RMSprop create their momentum slots only when momentum != 0.
        if inner.built or first == 0.0:
            raise ValueError(
                f"{type(inner).__name__} has {name}=0.0, so it has (or will build) no momentum slots; "
                f"construct it with {name} > 0 (e.g. the schedule's first value) to schedule it."
            )
        nominal = first  # an unbuilt optimizer then builds its slots; get_config reports this value
    value = ScheduledHyperparameter(nominal, schedule, inner)
    setattr(inner, name, value)
    return value


def unschedule_hyperparameter(optimizer, hyperparameter: str | None = None) -> None:
    """Put back the plain float replaced by ``schedule_hyperparameter`` (no-op if none)."""
    inner = base_optimizer(optimizer)
    name = hyperparameter or default_hyperparameter(inner)
    current = getattr(inner, name, None)
    if isinstance(current, ScheduledHyperparameter):
        setattr(inner, name, float(current))


@keras.saving.register_keras_serializable(package="tfkit")
class MomentumScheduler(keras.callbacks.Callback):
    """Cycle ``momentum`` (SGD, RMSprop) or ``beta_1`` (Adam family, Lion) with a schedule.

    ``value_k = schedule(k)`` for the ``k``-th real optimizer update
    (``k = 0, 1, ...``), computed inside the compiled train step (XLA
    included) from the innermost optimizer's ``iterations``: exact at every
    update with ``steps_per_execution > 1``, through ``LossScaleOptimizer`` and
    gradient accumulation, with a single trace. ``on_train_begin`` installs the
    ``ScheduledHyperparameter`` (and re-traces a train step traced earlier
    without it); ``on_train_end`` switches it off in-graph (a variable), so a
    later ``fit`` without this callback uses the original float and repeated
    ``fit`` calls with it do not retrace. The optimizer's ``get_config`` always
    shows the original float.

    In a custom ``tf.function`` loop, drive it through
    ``keras.callbacks.CallbackList`` and call ``on_train_begin`` before the
    first call of the step function (or use ``schedule_hyperparameter``).

    Args:
        schedule: Callable ``step -> value`` (e.g. ``OneCycle(...).momentum_schedule``
            or any ``LearningRateSchedule``); serializable if the callback is to be.
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
        if not callable(schedule):
            raise TypeError(f"MomentumScheduler: `schedule` must be callable; received schedule={schedule!r}.")
        if hyperparameter not in (None, "momentum", "beta_1"):
            raise ValueError("MomentumScheduler: `hyperparameter` must be 'momentum', 'beta_1' or None; "
                             f"received hyperparameter={hyperparameter!r}.")
        self.schedule = schedule
        self.hyperparameter = hyperparameter
        self._name = None
        self._value = None

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self._name = self.hyperparameter or default_hyperparameter(optimizer)
        before = getattr(base_optimizer(optimizer), self._name)
        value = schedule_hyperparameter(optimizer, self.schedule, self._name)
        if value is not before:
            refresh_train_function(self.model)  # a step traced earlier holds the old float
        self._value = value

    def on_train_end(self, logs=None):
        # Switched off in-graph, not removed: the optimizer and the traced step
        # stay valid, a later fit without this callback uses the original
        # float, and a later fit with it needs no retrace.
        self._value.enabled.assign(False)

    def get_config(self) -> dict:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "hyperparameter": self.hyperparameter,
        }

    @classmethod
    def from_config(cls, config: dict) -> MomentumScheduler:
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
