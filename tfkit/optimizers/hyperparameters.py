"""One in-graph hyperparameter state per leaf optimizer: the control plane callbacks use.

optax's ``inject_hyperparams`` turns hyperparameters into optimizer *state*
that whoever schedules or logs them reads and writes, while the update
function stays the library's own. :func:`control` does the same for a Keras
optimizer tree (``LossScaleOptimizer``, ``GradientAccumulator``,
``MultiOptimizer``, any nesting): each *leaf* optimizer gets a
:class:`HyperparameterState` of variables (the knobs),

* ``learning_rate_multiplier`` (1.0) -- the product of plateau reductions
  (``ReduceLROnPlateau``; ``SpikeGuard``-style rollbacks multiply it too);
* ``epoch_scale`` (1.0) -- the factor of the current epoch (``EpochScheduler``);
* ``learning_rate_override`` (NaN = off) -- an absolute rate (``lr_find``);
* ``momentum_enabled`` -- whether ``momentum``/``beta_1`` follows the schedule
  set by :meth:`HyperparameterState.schedule_momentum`.

How they reach the update, without replacing any method of any Keras object:

* **Learning rate.** Keras evaluates the object an optimizer was given as its
  rate in every update (a variable, a ``LearningRateSchedule`` at
  ``iterations``, or a callable with no arguments). :func:`control` makes that
  object a :class:`ControlledLearningRate`, a callable wrapping the original
  one, so that every update (weight decay included) applies::

      lr = override                                        if override is not NaN
      lr = rate(iterations) * multiplier * epoch_scale     otherwise

  where ``rate`` is the optimizer's own rate (float, schedule or callable).
  ``optimizer.learning_rate`` returns the same expression, so Keras'
  ``TensorBoard``, ``CSVLogger``, History and tfkit's logger all report the
  rate the optimizer applies at its current step, whatever the chain.
* **Momentum / beta_1.** Keras' update rules read them as Python floats, so
  there is no object to evaluate: :meth:`HyperparameterState.schedule_momentum`
  puts a ``tfkit._internals.ScheduledFloat`` in the attribute (the one
  documented mechanism; see there for the Keras versions it needs). It is
  the original float for ``get_config`` and comparisons, and
  ``where(momentum_enabled, schedule(iterations), float)`` when an update
  converts it to a tensor.

Every knob is a variable read in the graph, so changing one never retraces;
the state is an attribute of its optimizer (a ``tf.Module``), so
``tf.train.Checkpoint(optimizer=...)`` saves and restores it. The optimizer's
``variables`` are unchanged, and its config keeps the original rate (a
``.keras`` file loads back as the plain Keras optimizer, with
``safe_mode=True``).

Install once with :func:`control` (idempotent, before the train step is
traced; every tfkit callback does it in ``on_train_begin`` and re-traces a
step traced before). Other code that scales the rate (a rollback, a warm
restart) should multiply ``learning_rate_multiplier`` of every group:

Example:
    >>> import keras
    >>> from tfkit.optimizers import control
    >>> opt = keras.optimizers.SGD(0.1, name="sgd")
    >>> states = control(opt)
    >>> list(states), round(states["sgd"].learning_rate(), 6)
    (['sgd'], 0.1)
    >>> _ = states["sgd"].learning_rate_multiplier.assign(0.5)
    >>> v = keras.Variable([1.0])
    >>> opt.apply([keras.ops.ones((1,))], [v])
    >>> round(float(v.numpy()[0]), 6), round(float(opt.learning_rate), 6)
    (0.95, 0.05)
"""

from __future__ import annotations

import functools
import math
import weakref

import keras
import tensorflow as tf

from tfkit import _internals
from tfkit.optimizers.tree import _children, is_container, parameter_groups, walk

__all__ = [
    "ControlledLearningRate",
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


def _scalar(value, dtype, name):
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


@keras.saving.register_keras_serializable(package="tfkit")
class ControlledLearningRate:
    """The rate object of a controlled optimizer: its own rate times the knobs of its state.

    ``lr = override if override is not NaN else rate(iterations) * multiplier * epoch_scale``

    A callable with no arguments, which Keras evaluates in every update
    (``_get_current_learning_rate``) and in its ``learning_rate`` property.
    Assigning a number to ``optimizer.learning_rate`` (as Keras'
    ``ReduceLROnPlateau`` and ``LearningRateScheduler`` do) sets the rate the
    optimizer applies, knobs included, for a float rate; a schedule raises as
    Keras does. Serializes as the optimizer's own rate: ``from_config`` returns
    the original float or schedule, so a saved optimizer loads back plain.

    Args:
        rate: the optimizer's own rate object (``keras.Variable``, schedule or callable).
        state: the :class:`HyperparameterState` whose knobs apply.
    """

    def __init__(self, rate, state: HyperparameterState):
        self.rate = rate
        self.state = state

    def __call__(self):
        state, rate = self.state, self.rate
        # What Keras' own evaluation does with a rate object (Keras 3.0-3.15),
        # inline: one frame between Keras and the schedule.
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(state.iterations)
        elif callable(rate) and not isinstance(rate, (keras.Variable, tf.Variable)):
            rate = rate()
        rate = tf.cast(rate, tf.float32) * state.learning_rate_multiplier * state.epoch_scale
        override = tf.convert_to_tensor(state.learning_rate_override)
        return tf.where(tf.math.is_nan(override), rate, override)

    def assign(self, value) -> None:
        """Make the applied rate ``value``: the optimizer's own float becomes ``value / knobs``."""
        if not isinstance(self.rate, (keras.Variable, tf.Variable)):
            raise TypeError(
                "This optimizer was created with a `LearningRateSchedule` (or a callable) as its "
                "`learning_rate`, hence its learning rate is not settable; scale it through "
                "tfkit.optimizers.control(optimizer)[group].learning_rate_multiplier instead."
            )
        scale = float(self.state.learning_rate_multiplier.numpy() * self.state.epoch_scale.numpy())
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(
                "ControlledLearningRate: `learning_rate` cannot be set while the multiplier times the "
                f"epoch scale is {scale!r}; received learning_rate={value!r}."
            )
        self.rate.assign(float(keras.ops.convert_to_numpy(value)) / scale)

    def get_config(self) -> dict:
        rate = self.rate
        if isinstance(rate, (keras.Variable, tf.Variable)):
            rate = float(rate.numpy())
        return {"rate": keras.saving.serialize_keras_object(rate)}

    @classmethod
    def from_config(cls, config: dict):
        # The knobs are state, not configuration: a loaded optimizer gets its
        # own rate back and is controlled again by the next tfkit callback.
        return keras.saving.deserialize_keras_object(config["rate"])


class HyperparameterState(tf.Module):
    """The hyperparameter variables of one leaf optimizer (see the module docstring).

    Created by :func:`control`; not meant to be constructed directly. Knobs
    (write them with ``assign``): ``learning_rate_multiplier``, ``epoch_scale``,
    ``learning_rate_override``, ``momentum_enabled``. :meth:`learning_rate` and
    :meth:`momentum` read the values the optimizer applies at its current step.
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
        # Python-side: which float attribute is scheduled, and by what.
        self.momentum_name: str | None = None
        self.momentum_schedule = None

    @property
    def knobs(self) -> list[tf.Variable]:
        """The variables that decide future updates, in a fixed order.

        ``learning_rate_multiplier``, ``epoch_scale`` and ``momentum_enabled``:
        what a backup must carry for a resumed run to apply the same rates
        (``learning_rate_override`` is set and cleared within one ``lr_find``).
        """
        return [self.learning_rate_multiplier, self.epoch_scale, self.momentum_enabled]

    @property
    def optimizer(self):
        return self._optimizer_ref()

    @property
    def iterations(self):
        """The leaf's count of real updates: the step its schedules are evaluated at."""
        return self.optimizer.iterations

    # -- read by the update (in-graph) ------------------------------------------------
    def _momentum_value(self, nominal: float, dtype):
        scheduled = tf.cast(self.momentum_schedule(self.iterations), tf.float32)
        value = tf.where(self.momentum_enabled, scheduled, tf.constant(nominal, tf.float32))
        return tf.cast(value, dtype)

    # -- host side ----------------------------------------------------------------------
    def schedule_momentum(self, schedule, hyperparameter: str | None = None) -> bool:
        """Make ``momentum``/``beta_1`` follow ``schedule(iterations)`` in-graph; enable it.

        Returns True when the graph must be re-traced (a new schedule object
        was installed); re-enabling the same schedule needs no retrace.
        """
        optimizer = self.optimizer
        name = hyperparameter or default_momentum_name(optimizer)
        owner = "HyperparameterState.schedule_momentum"
        if name not in ("momentum", "beta_1"):
            raise ValueError(
                f"{owner}: `hyperparameter` must be 'momentum', 'beta_1' or None; "
                f"received hyperparameter={name!r}."
            )
        if not hasattr(optimizer, name):
            raise ValueError(
                f"{owner}: `hyperparameter` must be an attribute of {type(optimizer).__name__} "
                f"({optimizer.name!r}); received hyperparameter={name!r}."
            )
        if not callable(schedule):
            raise TypeError(
                f"{owner}: `schedule` must be callable (step -> value); received schedule={schedule!r}."
            )
        _check_leaf(optimizer)
        current = getattr(optimizer, name)
        if isinstance(current, _internals.ScheduledFloat) and self.momentum_schedule is schedule:
            self.momentum_enabled.assign(True)  # validated when installed
            return False
        first = float(tf.convert_to_tensor(schedule(0)))
        if not (math.isfinite(first) and 0.0 <= first <= 1.0):
            raise ValueError(
                f"{owner}: `schedule(0)` must be a finite value in [0, 1] for `{name}`; "
                f"received schedule(0)={first!r}."
            )
        nominal = float(current)
        if nominal == 0.0:
            # SGD and RMSprop create their momentum slots only when momentum != 0.
            if optimizer.built or first == 0.0:
                raise ValueError(
                    f"{owner}: `{name}` must be > 0 on {type(optimizer).__name__} to be scheduled "
                    f"(with {name}=0.0 it has, or will build, no momentum slots); construct it with "
                    f"{name} > 0 (e.g. the schedule's first value); received {name}=0.0."
                )
            nominal = first
        self.momentum_name = name
        self.momentum_schedule = schedule
        value_fn = functools.partial(self._momentum_value, nominal)
        _internals.set_scheduled_float(optimizer, name, nominal, value_fn)
        self.momentum_enabled.assign(True)
        return True

    def unschedule_momentum(self) -> None:
        """Put the plain float back (re-trace steps afterwards)."""
        if self.momentum_name is not None:
            _internals.clear_scheduled_float(self.optimizer, self.momentum_name)
        self.momentum_enabled.assign(False)
        self.momentum_schedule = None
        self.momentum_name = None

    def learning_rate(self) -> float:
        """Host value of the rate the optimizer applies at its current step (knobs included)."""
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def next_learning_rate(self) -> float:
        """Same as :meth:`learning_rate` (the rate the next update applies); kept for callers of v1."""
        return self.learning_rate()

    def momentum(self) -> float | None:
        """Host value of ``momentum``/``beta_1`` at the current step (``None`` if it has neither)."""
        name = self.momentum_key()
        if name is None:
            return None
        value = getattr(self.optimizer, name)
        if isinstance(value, _internals.ScheduledFloat):
            return float(tf.convert_to_tensor(value, tf.float32).numpy())
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
        f"MomentumScheduler: the optimizer must have `momentum` or `beta_1` (SGD, RMSprop, Adam, "
        f"AdamW, Adamax, Nadam, Lion, Lamb); received {type(optimizer).__name__} ({optimizer.name!r})."
    )


def _state_of(leaf) -> HyperparameterState | None:
    rate = _internals.learning_rate_object(leaf)
    return rate.state if isinstance(rate, ControlledLearningRate) else None


def is_controlled(optimizer: keras.optimizers.Optimizer) -> bool:
    """True when every leaf of ``optimizer``'s tree already has its state installed."""
    groups = parameter_groups(optimizer)
    return bool(groups) and all(_state_of(leaf) is not None for leaf in groups.values())


def _check_leaf(leaf) -> None:
    # The learning-rate knobs are exact under Keras' own accumulation (read at
    # the real update); a momentum schedule would run on its micro-batch clock.
    if leaf.gradient_accumulation_steps:
        raise ValueError(
            f"MomentumScheduler: `gradient_accumulation_steps` must be None on {type(leaf).__name__} "
            f"({leaf.name!r}) to schedule momentum: Keras' built-in accumulation counts "
            "micro-batches in `iterations`, so schedule(k) would not be the k-th update; wrap the optimizer in "
            "tfkit.optimizers.GradientAccumulator(optimizer, k) instead; received "
            f"gradient_accumulation_steps={leaf.gradient_accumulation_steps!r}."
        )


def control(optimizer: keras.optimizers.Optimizer) -> dict[str, HyperparameterState]:
    """Install the hyperparameter state on every leaf of ``optimizer``; return ``{group: state}``.

    Idempotent: a second call returns the same states. Install it before the
    train step is traced (a step traced earlier does not read the state);
    tfkit's callbacks re-trace ``model.train_function`` once when they install it.

    Args:
        optimizer: any Keras optimizer tree (wrappers, ``MultiOptimizer``). A
            ``MultiOptimizer`` with a selector function knows its groups once
            built: build it first (tfkit's callbacks build it from the model).

    Returns:
        ``{group name: HyperparameterState}`` (see :func:`parameter_groups`).
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "control: `optimizer` must be a keras.optimizers.Optimizer; received "
            f"optimizer={optimizer!r} of type {type(optimizer).__name__}."
        )
    unresolved = [n for n in walk(optimizer) if is_container(n) and not _children(n)]
    if unresolved:
        node = unresolved[0]
        raise ValueError(
            f"control: `optimizer` must know its parameter groups; {type(node).__name__} "
            f"({node.name!r}) has no sub-optimizers yet (a selector function resolves them when "
            "built): call optimizer.build(model.trainable_variables), or compile and build the "
            f"model before fit; received optimizer={optimizer.name!r}."
        )
    groups = parameter_groups(optimizer)
    states = {}
    for name, leaf in groups.items():
        state = _state_of(leaf)
        if state is None:
            state = HyperparameterState(leaf)
            # An attribute of the optimizer: Keras' auto-tracking makes it a
            # checkpoint dependency, so tf.train.Checkpoint(optimizer=...) saves it.
            setattr(leaf, STATE_ATTRIBUTE, state)
            rate = ControlledLearningRate(_internals.learning_rate_object(leaf), state)
            _internals.set_learning_rate_object(leaf, rate)
        states[name] = state
    _track_groups(optimizer, states)
    return states


def knob_variables(optimizer: keras.optimizers.Optimizer) -> list[tf.Variable]:
    """The :attr:`HyperparameterState.knobs` of every group of a controlled tree, group by group.

    Empty when ``optimizer`` is not controlled (see :func:`control`).
    """
    if not is_controlled(optimizer):
        return []
    return [v for leaf in parameter_groups(optimizer).values() for v in _state_of(leaf).knobs]


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
    its own ``optimizer.apply``. Also installs the control plane (:func:`control`)
    when the optimizer knows its groups, so a step traced next reads it.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "attach: `optimizer` must be a keras.optimizers.Optimizer; received "
            f"optimizer={optimizer!r}."
        )
    _attached[model] = optimizer
    if not any(is_container(n) and not _children(n) for n in walk(optimizer)):
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
            f"{owner}: `model` must be compiled with an optimizer, or trained by a "
            "tfkit.TrainStep(model, loss, optimizer) created before on_train_begin (or passed to "
            f"tfkit.optimizers.attach(model, optimizer)); received model={type(model).__name__}."
        )
    return optimizer


def refresh_train_function(model) -> None:
    """Make ``model.fit``'s next step re-trace (a step traced before the install ignores the state)."""
    if model is not None and getattr(model, "train_function", None) is not None:
        model.train_function = None
        model.make_train_function()


def _resolve_groups(owner: str, model, optimizer) -> None:
    """Build an optimizer whose parameter groups exist only once built (a selector function)."""
    if not any(is_container(n) and not _children(n) for n in walk(optimizer)):
        return
    variables = model.trainable_variables if model is not None and model.built else []
    if not variables:
        raise ValueError(
            f"{owner}: the optimizer's parameter groups are resolved when it is built, and the "
            "model has no variables yet: build the model (model.build(input_shape) or call it on "
            "a batch) or the optimizer (optimizer.build(model.trainable_variables)) before fit; "
            f"received an unbuilt {type(optimizer).__name__} ({optimizer.name!r})."
        )
    with model.distribute_strategy.scope():
        optimizer.build(variables)


def install_for(owner: str, model) -> dict[str, HyperparameterState]:
    """``control`` the optimizer of ``model`` and re-trace ``fit``'s step if it was just installed."""
    optimizer = resolve_optimizer(owner, model)
    _resolve_groups(owner, model, optimizer)
    fresh = not is_controlled(optimizer)
    states = control(optimizer)
    if fresh:
        refresh_train_function(model)
    return states
