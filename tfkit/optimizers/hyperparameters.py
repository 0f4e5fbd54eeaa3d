"""One in-graph hyperparameter state per leaf optimizer: the control plane callbacks use.

optax's ``inject_hyperparams`` turns hyperparameters into optimizer *state*:
the update reads them from the state, and writes there the values it used,
so whoever logs or changes them touches state, never the update function.
:func:`control` does the same for a Keras optimizer tree (``LossScaleOptimizer``,
``GradientAccumulator``, ``MultiOptimizer``, any nesting). Each leaf optimizer
gets a :class:`HyperparameterState` of variables:

* ``learning_rate_multiplier`` (1.0) -- plateau reductions, lr range tests;
* ``epoch_scale`` (1.0) -- a per-epoch schedule (``EpochScheduler``);
* ``learning_rate_override`` (NaN = off) -- an absolute rate (``lr_find``);
* ``momentum_enabled`` -- whether ``momentum``/``beta_1`` follows the
  schedule set by :meth:`HyperparameterState.schedule_momentum`;
* ``applied_learning_rate``, ``applied_momentum``, ``applied_step`` -- what
  the last *real* update of this leaf used, written inside that update.

The rate an update applies is::

    lr = override                                    if override is not NaN
    lr = keras_rate(iterations) * multiplier * epoch_scale   otherwise

where ``keras_rate`` is what Keras itself would use (the optimizer's
``LearningRateSchedule`` at its ``iterations``, its rate variable, or its
callable); the optimizer's own configuration is left untouched. A scheduled
momentum is ``schedule(iterations)`` while enabled, else the original float.

Reading ``optimizer.learning_rate`` (or ``ops.convert_to_tensor(momentum)``)
*outside* an update returns the applied value of the last update, so Keras'
``TensorBoard``, History and tfkit's logger all report the same number
whatever the callback order. Since every knob is a variable read in the graph,
changing one never retraces; since the state is an attribute of the optimizer
(a ``tf.Module``), ``tf.train.Checkpoint(optimizer=...)`` saves and restores it.

Install once with :func:`control` (idempotent, before the train step is traced;
every tfkit callback does it in ``on_train_begin``). Nothing is added to the
optimizer's config or to its ``variables``: a ``.keras`` file stays a plain
Keras optimizer and loads with ``safe_mode=True`` even without tfkit.

Example:
    >>> import keras
    >>> from tfkit.optimizers import control
    >>> opt = keras.optimizers.SGD(0.1, name="sgd")
    >>> states = control(opt)
    >>> list(states), round(float(states["sgd"].applied_learning_rate.numpy()), 6)
    (['sgd'], 0.1)
    >>> _ = states["sgd"].learning_rate_multiplier.assign(0.5)
    >>> v = keras.Variable([1.0])
    >>> opt.apply([keras.ops.ones((1,))], [v])
    >>> round(float(v.numpy()[0]), 6), round(float(opt.learning_rate.numpy()), 6)
    (0.95, 0.05)
"""

from __future__ import annotations

import math
import threading
import weakref

import keras
import tensorflow as tf

from tfkit import _internals
from tfkit.optimizers.tree import _children, parameter_groups, walk

__all__ = [
    "HyperparameterState",
    "attach",
    "attached_optimizer",
    "control",
    "is_controlled",
    "knob_variables",
    "resolve_optimizer",
]

STATE_ATTRIBUTE = "tfkit_hyperparameters"
GROUPS_ATTRIBUTE = "tfkit_hyperparameter_groups"

# Leaf optimizers whose ``apply`` is running (eagerly) or being traced, by id.
# Process-wide, not per thread: under a tf.distribute strategy the replica
# threads run ``apply`` while the update itself (``update_step``, where
# momentum is read) runs in the strategy's merge call, in another thread.
_active: dict = {}
_active_lock = threading.Lock()


class _UpdateFrame:
    """Marks "inside ``leaf.apply``" while it runs (eagerly) or is traced (tf.function).

    Values computed for the update are cached per graph: weight decay reads
    the rate once per variable, and a ``tf.cond`` branch is its own graph.
    """

    def __init__(self, leaf):
        self.leaf = leaf
        self.depth = 0
        self.cache: dict = {}
        self.lock = threading.RLock()

    def cached(self, key, compute):
        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        full_key = (key, id(graph), tf.distribute.get_replica_context() is None)
        with self.lock:
            if full_key not in self.cache:
                self.cache[full_key] = compute()
            return self.cache[full_key]


def _frame_for(leaf):
    return _active.get(id(leaf))


def _scalar(value, dtype, name):
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class HyperparameterState(tf.Module):
    """The hyperparameter variables of one leaf optimizer (see the module docstring).

    Created by :func:`control`; not meant to be constructed directly. Knobs
    (write them with ``assign``): ``learning_rate_multiplier``, ``epoch_scale``,
    ``learning_rate_override``, ``momentum_enabled``. Records (read them):
    ``applied_learning_rate``, ``applied_momentum`` (NaN without a momentum
    schedule), ``applied_step`` (the leaf's ``iterations`` at the last real
    update, -1 before any).
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "HyperparameterState: `optimizer` must be a keras.optimizers.Optimizer; "
                f"received optimizer={optimizer!r} of type {type(optimizer).__name__}."
            )
        super().__init__(name="tfkit_hyperparameters")
        self._optimizer_ref = weakref.ref(optimizer)
        self.learning_rate_multiplier = _scalar(1.0, tf.float32, "learning_rate_multiplier")
        self.epoch_scale = _scalar(1.0, tf.float32, "epoch_scale")
        self.learning_rate_override = _scalar(math.nan, tf.float32, "learning_rate_override")
        self.momentum_enabled = _scalar(False, tf.bool, "momentum_enabled")
        initial = tf.cast(
            tf.convert_to_tensor(_internals.base_current_learning_rate(optimizer)), tf.float32
        )
        self.applied_learning_rate = _scalar(initial, tf.float32, "applied_learning_rate")
        self.applied_momentum = _scalar(math.nan, tf.float32, "applied_momentum")
        self.applied_step = _scalar(-1, tf.int64, "applied_step")
        # Python-side: which float attribute is scheduled, and by what.
        self.momentum_name: str | None = None
        self.momentum_schedule = None

    @property
    def knobs(self) -> list[tf.Variable]:
        """The variables that decide future updates, in a fixed order.

        ``learning_rate_multiplier``, ``epoch_scale`` and ``momentum_enabled``:
        what a backup must carry for a resumed run to apply the same rates.
        The records (``applied_*``) only describe the past, and
        ``learning_rate_override`` is set and cleared within one ``lr_find``.
        """
        return [self.learning_rate_multiplier, self.epoch_scale, self.momentum_enabled]

    @property
    def optimizer(self):
        return self._optimizer_ref()

    # -- in-graph, called only inside the leaf's update -------------------------------
    def _rate_for_update(self, keras_rate):
        rate = tf.cast(tf.convert_to_tensor(keras_rate), tf.float32)
        rate = rate * self.learning_rate_multiplier * self.epoch_scale
        override = tf.convert_to_tensor(self.learning_rate_override)
        rate = tf.where(tf.math.is_nan(override), rate, override)
        self.applied_learning_rate.assign(rate)
        self.applied_step.assign(tf.cast(tf.convert_to_tensor(self.optimizer.iterations), tf.int64))
        return rate

    def _momentum_for_update(self, nominal: float):
        scheduled = tf.cast(
            tf.convert_to_tensor(self.momentum_schedule(self.optimizer.iterations)), tf.float32
        )
        value = tf.where(
            tf.convert_to_tensor(self.momentum_enabled), scheduled, tf.constant(nominal, tf.float32)
        )
        self.applied_momentum.assign(value)
        return value

    # -- host side ----------------------------------------------------------------------
    def schedule_momentum(self, schedule, hyperparameter: str | None = None) -> bool:
        """Make ``momentum``/``beta_1`` follow ``schedule(iterations)`` in-graph; enable it.

        Returns True when the graph must be re-traced (a new schedule object
        was installed); re-enabling the same schedule needs no retrace.
        """
        optimizer = self.optimizer
        name = hyperparameter or default_momentum_name(optimizer)
        if name not in ("momentum", "beta_1"):
            raise ValueError(
                f"`hyperparameter` must be 'momentum', 'beta_1' or None; received hyperparameter={name!r}."
            )
        if not hasattr(optimizer, name):
            raise ValueError(
                f"{type(optimizer).__name__} ({optimizer.name!r}) has no `{name}` to schedule; "
                f"received hyperparameter={name!r}."
            )
        if not callable(schedule):
            raise TypeError(
                f"`schedule` must be callable (step -> value); received schedule={schedule!r}."
            )
        current = getattr(optimizer, name)
        if (
            isinstance(current, _ControlledFloat)
            and self.momentum_schedule is schedule
            and self.momentum_name == name
        ):
            self.momentum_enabled.assign(True)  # validated when installed
            return False
        first = float(tf.convert_to_tensor(schedule(0)))
        if not (math.isfinite(first) and 0.0 <= first <= 1.0):
            raise ValueError(
                f"`schedule(0)` must be a finite value in [0, 1] for `{name}`; received {first!r}."
            )
        nominal = float(current)
        if nominal == 0.0:
            # SGD and RMSprop create their momentum slots only when momentum != 0.
            if optimizer.built or first == 0.0:
                raise ValueError(
                    f"{type(optimizer).__name__} has {name}=0.0, so it has (or will build) no momentum "
                    f"slots; construct it with {name} > 0 (e.g. the schedule's first value) to schedule it."
                )
            nominal = first
        self.momentum_name = name
        self.momentum_schedule = schedule
        setattr(optimizer, name, _ControlledFloat(nominal, self))
        if math.isnan(float(self.applied_momentum.numpy())):
            # Nothing scheduled applied yet: the first update will use `first`;
            # updates before the install used the plain float.
            self.applied_momentum.assign(first if self.applied_step.numpy() < 0 else float(current))
        self.momentum_enabled.assign(True)
        return True

    def learning_rate(self) -> float:
        """Host value of the rate applied by the last real update (install-time rate before any)."""
        return float(self.applied_learning_rate.numpy())

    def next_learning_rate(self) -> float:
        """Host value of the rate the next update would apply (evaluates the schedule; for inspection)."""
        override = float(self.learning_rate_override.numpy())
        if not math.isnan(override):
            return override
        keras_rate = tf.cast(
            tf.convert_to_tensor(_internals.base_current_learning_rate(self.optimizer)), tf.float32
        )
        return float((keras_rate * self.learning_rate_multiplier * self.epoch_scale).numpy())

    def momentum(self) -> float | None:
        """Host value of the momentum/beta_1 the last update applied (the plain float if unscheduled)."""
        name = self.momentum_key()
        if name is None:
            return None
        value = getattr(self.optimizer, name)
        if isinstance(value, _ControlledFloat):
            applied = float(self.applied_momentum.numpy())
            if math.isfinite(applied):
                return applied
        return float(value)

    def momentum_key(self) -> str | None:
        optimizer = self.optimizer
        return self.momentum_name or next(
            (n for n in ("momentum", "beta_1") if hasattr(optimizer, n)), None
        )


def default_momentum_name(optimizer) -> str:
    """``"momentum"`` for SGD/RMSprop-like optimizers, ``"beta_1"`` for the Adam family and Lion."""
    for name in ("momentum", "beta_1"):
        if hasattr(optimizer, name):
            return name
    raise ValueError(
        f"{type(optimizer).__name__} ({optimizer.name!r}) has neither `momentum` nor `beta_1`; "
        "momentum scheduling supports SGD, RMSprop, Adam, AdamW, Adamax, Nadam and Lion."
    )


class _ControlledFloat(float):
    """``momentum``/``beta_1`` under control: a float for config, a state read for TensorFlow.

    As a Python ``float`` it is the optimizer's original value (``get_config``,
    JSON, ``momentum != 0`` checks). Converted to a tensor (``ops.cast``,
    arithmetic) inside the leaf's update it is the scheduled value, recorded
    in the state; outside an update it is the value the last update applied.
    """

    dtype = float  # Keras' dtype inference treats it as a weakly typed Python float

    def __new__(cls, nominal: float, state: HyperparameterState):
        obj = super().__new__(cls, nominal)
        obj.state = state
        return obj

    def __tf_tensor__(self, dtype=None, name=None):
        dtype = tf.as_dtype(dtype or tf.float32)
        state = self.state
        frame = _frame_for(state.optimizer)
        if frame is None:
            value = tf.where(
                tf.math.is_nan(tf.convert_to_tensor(state.applied_momentum)),
                tf.constant(float(self), tf.float32),
                state.applied_momentum,
            )
        else:
            value = frame.cached("momentum", lambda: state._momentum_for_update(float(self)))
        return tf.cast(value, dtype, name=name)

    def _tensor_like(self, other):
        dtype = getattr(other, "dtype", None)
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
        return (float, (float(self),))  # copies degrade to the plain float

    def __repr__(self):
        return f"{float(self)!r}"


def _make_apply(original):
    leaf = original.__self__

    def apply(grads, trainable_variables=None):
        with _active_lock:
            frame = _active.setdefault(id(leaf), _UpdateFrame(leaf))
            frame.depth += 1
        try:
            return original(grads, trainable_variables)
        finally:
            with _active_lock:
                frame.depth -= 1
                if frame.depth == 0:
                    del _active[id(leaf)]

    return apply


def _make_rate(original):
    leaf = original.__self__

    def current_learning_rate():
        state = getattr(leaf, STATE_ATTRIBUTE)
        frame = _frame_for(leaf)
        if frame is None:
            return state.applied_learning_rate
        return frame.cached("learning_rate", lambda: state._rate_for_update(original()))

    return current_learning_rate


def is_controlled(optimizer: keras.optimizers.Optimizer) -> bool:
    """True when every leaf of ``optimizer``'s tree already has its state installed."""
    return all(
        isinstance(getattr(leaf, STATE_ATTRIBUTE, None), HyperparameterState)
        for leaf in parameter_groups(optimizer).values()
    )


def control(optimizer: keras.optimizers.Optimizer) -> dict[str, HyperparameterState]:
    """Install the hyperparameter state on every leaf of ``optimizer``; return ``{group: state}``.

    Idempotent: a second call returns the same states. Install it before the
    train step is traced (a step traced earlier does not read the state);
    tfkit's callbacks re-trace ``model.train_function`` once when they install it.

    Args:
        optimizer: any Keras optimizer tree (wrappers, ``MultiOptimizer``).

    Returns:
        ``{group name: HyperparameterState}`` (see :func:`parameter_groups`).
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"`optimizer` must be a keras.optimizers.Optimizer; received {optimizer!r} "
            f"of type {type(optimizer).__name__}."
        )
    groups = parameter_groups(optimizer)
    if not groups:
        raise ValueError(
            f"{type(optimizer).__name__} ({optimizer.name!r}) has no sub-optimizers yet: "
            "build it (or compile/fit the model) before installing the control plane."
        )
    states = {}
    for name, leaf in groups.items():
        state = getattr(leaf, STATE_ATTRIBUTE, None)
        if not isinstance(state, HyperparameterState):
            state = HyperparameterState(leaf)
            # An attribute of the optimizer: Keras' auto-tracking makes it a
            # checkpoint dependency, so tf.train.Checkpoint(optimizer=...) saves it.
            setattr(leaf, STATE_ATTRIBUTE, state)
            _internals.wrap_method(leaf, "apply", _make_apply)
            _internals.wrap_method(leaf, _internals.current_learning_rate_attribute(), _make_rate)
        states[name] = state
    _track_groups(optimizer, states)
    return states


def knob_variables(optimizer: keras.optimizers.Optimizer) -> list[tf.Variable]:
    """The :attr:`HyperparameterState.knobs` of every group of a controlled tree, group by group.

    Empty when ``optimizer`` is not controlled (see :func:`control`).
    """
    if not is_controlled(optimizer):
        return []
    return [v for leaf in parameter_groups(optimizer).values() for v in getattr(leaf, STATE_ATTRIBUTE).knobs]


class _GroupStates(tf.Module):
    """The states of a ``MultiOptimizer``'s groups, as checkpoint dependencies of that optimizer.

    Keras' ``MultiOptimizer`` (3.15) does not make its sub-optimizers
    checkpoint dependencies, so ``tf.train.Checkpoint(optimizer=multi)`` would
    not reach a state attached to a sub-optimizer only.
    """

    def __init__(self, states: dict):
        super().__init__(name="tfkit_hyperparameter_groups")
        for name, state in states.items():
            setattr(self, name, state)


def _track_groups(optimizer, states: dict) -> None:
    by_leaf = {id(state.optimizer): (name, state) for name, state in states.items()}
    for node in walk(optimizer):
        children = _children(node)
        if len(children) > 1 or (children and not hasattr(node, "inner_optimizer")):
            if not isinstance(getattr(node, GROUPS_ATTRIBUTE, None), _GroupStates):
                mine = dict(by_leaf[id(leaf)] for leaf in walk(node) if id(leaf) in by_leaf)
                setattr(node, GROUPS_ATTRIBUTE, _GroupStates(mine))


# -- which optimizer a model trains with (custom loops) --------------------------------
_attached: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def attach(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """Tell tfkit's callbacks which optimizer trains ``model`` when it is not compiled.

    ``tfkit.TrainStep`` calls it; call it yourself in a hand-written loop with
    its own ``optimizer.apply``. Also installs the control plane (:func:`control`).
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"`optimizer` must be a keras.optimizers.Optimizer; received {optimizer!r}."
        )
    _attached[model] = optimizer
    if parameter_groups(
        optimizer
    ):  # a MultiOptimizer with a selector function knows its groups once built
        control(optimizer)


def attached_optimizer(model) -> keras.optimizers.Optimizer | None:
    try:
        return _attached.get(model)
    except TypeError:
        return None


def resolve_optimizer(owner: str, model) -> keras.optimizers.Optimizer:
    """The optimizer training ``model``: ``model.optimizer``, else the one attached by ``TrainStep``."""
    optimizer = getattr(model, "optimizer", None) if model is not None else None
    if optimizer is None:
        optimizer = attached_optimizer(model)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            f"{owner}: found no optimizer for the model (received model={type(model).__name__}): compile the "
            "model, or create tfkit.TrainStep(model, loss, optimizer) before on_train_begin, or call "
            "tfkit.optimizers.attach(model, optimizer)."
        )
    return optimizer


def refresh_train_function(model) -> None:
    """Make ``model.fit``'s next step re-trace (a step traced before the install ignores the state)."""
    if model is not None and getattr(model, "train_function", None) is not None:
        model.train_function = None
        model.make_train_function()


def install_for(owner: str, model) -> dict[str, HyperparameterState]:
    """``control`` the optimizer of ``model`` and re-trace ``fit``'s step if it was just installed."""
    optimizer = resolve_optimizer(owner, model)
    fresh = not is_controlled(optimizer)
    states = control(optimizer)
    if fresh:
        refresh_train_function(model)
    return states
