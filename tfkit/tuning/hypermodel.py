"""tfkit's training choices as a keras-tuner search space.

Search itself (random, grid, Bayesian, Hyperband) is keras-tuner's; this module
only exposes what tfkit adds as tunable hyperparameters, so that any tuner can
search them alongside the architecture:

==================== ======================================================
``learning_rate``    peak learning rate, log-uniform in a range (or fixed)
``schedule``         schedule family, from a pluggable name -> factory map
``precision``        dtype policy: ``float32``, ``mixed_float16``, ...
``accumulation_steps`` micro-batches per optimizer update
==================== ======================================================

keras-tuner is an optional dependency (``pip install tfkit[tuner]``): it is
imported when ``TfkitHyperModel`` is first accessed, not when tfkit is.

Example:
    >>> import keras, keras_tuner
    >>> from tfkit.tuning.hypermodel import TfkitHyperModel
    >>> def build_model(hp):
    ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> hypermodel = TfkitHyperModel(build_model, loss="mse", decay_steps=100)
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    >>> type(model.optimizer).__name__
    'Adam'
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import keras

from tfkit import _internals

__all__ = [  # noqa: F822 - TfkitHyperModel is created on first access (module __getattr__)
    "DEFAULT_SCHEDULES",
    "TfkitHyperModel",
    "allow_missing_tensorboard",
    "constant_schedule",
    "cosine_schedule",
    "one_cycle_schedule",
]

# A schedule factory receives the hyperparameters (to declare its own tunables,
# e.g. a warmup length), the peak learning rate and the number of optimizer
# updates of the run, and returns a float or a LearningRateSchedule.
ScheduleFactory = Callable[..., "float | keras.optimizers.schedules.LearningRateSchedule"]


def constant_schedule(hp, learning_rate: float, decay_steps: int | None):
    """A constant learning rate."""
    return learning_rate


def cosine_schedule(hp, learning_rate: float, decay_steps: int | None):
    """Keras ``CosineDecay`` from ``learning_rate`` to ``alpha * learning_rate`` over the run.

    Declares ``cosine_alpha`` (0, 0.01 or 0.1) as its own hyperparameter.
    """
    if decay_steps is None:
        raise ValueError(
            "TfkitHyperModel: the 'cosine' schedule needs `decay_steps` (optimizer updates "
            "of one trial), received None"
        )
    alpha = hp.Choice("cosine_alpha", [0.0, 0.01, 0.1])
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=alpha)


def one_cycle_schedule(hp, learning_rate: float, decay_steps: int | None):
    """tfkit ``OneCycle`` peaking at ``learning_rate``, over the whole run (learning rate only).

    Declares ``one_cycle_pct_start`` (0.25 or 0.3) as its own hyperparameter.
    Momentum cycling needs tfkit's momentum callback and is left to the user.
    """
    from tfkit.schedules import OneCycle

    if decay_steps is None:
        raise ValueError(
            "TfkitHyperModel: the 'one_cycle' schedule needs `decay_steps` (optimizer updates "
            "of one trial), received None"
        )
    pct_start = hp.Choice("one_cycle_pct_start", [0.25, 0.3])
    return OneCycle(learning_rate, total_steps=decay_steps, pct_start=pct_start)


def _default_schedules() -> dict[str, ScheduleFactory]:
    schedules = {"constant": constant_schedule, "cosine": cosine_schedule}
    try:  # tfkit's schedules, when installed with this tfkit
        import tfkit.schedules  # noqa: F401
    except ImportError:
        return schedules
    schedules["one_cycle"] = one_cycle_schedule
    return schedules


# Families offered by default: constant, Keras cosine, and tfkit's OneCycle when
# available. Others plug in the same way: schedules={**DEFAULT_SCHEDULES, "name": factory}.
DEFAULT_SCHEDULES: dict[str, ScheduleFactory] = _default_schedules()

_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16", "float16")


def _keras_accumulator(optimizer, steps: int):
    """Keras' built-in accumulation (``gradient_accumulation_steps``).

    Caveat (docs/keras-defects.md#schedule-at-micro-step): Keras evaluates a LearningRateSchedule at the raw
    micro-batch counter, so decaying schedules run ``steps`` times too fast.
    ``_default_accumulator`` prefers tfkit's GradientAccumulator when present.
    """
    config = optimizer.get_config()
    config["gradient_accumulation_steps"] = steps
    return optimizer.__class__.from_config(config)


# Its schedule sees the micro-batch counter, so decay_steps must not be divided.
_keras_accumulator.counts_micro_batches = True


def _default_accumulator():
    try:
        from tfkit.optimizers import GradientAccumulator
    except ImportError:
        return _keras_accumulator
    return lambda optimizer, steps: GradientAccumulator(optimizer, accumulation_steps=steps)


@contextlib.contextmanager
def _dtype_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _check_choices(name: str, values, allowed=None, kind=None) -> tuple:
    values = tuple(values)
    if not values:
        raise ValueError(f"TfkitHyperModel: `{name}` must hold at least one choice, received ()")
    for v in values:
        if kind is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            raise TypeError(f"TfkitHyperModel: `{name}` choices must be {kind.__name__}, got {v!r}")
        if allowed is not None and v not in allowed:
            raise ValueError(f"TfkitHyperModel: `{name}` choice {v!r} is not one of {allowed}")
    return values


def _choice(hp, name: str, values: tuple):
    # One value: still record it (hp.Fixed) so every trial shows the full configuration.
    return hp.Fixed(name, values[0]) if len(values) == 1 else hp.Choice(name, list(values))


def _make_class():
    import keras_tuner

    class TfkitHyperModel(keras_tuner.HyperModel):
        """A keras-tuner ``HyperModel`` whose search space includes tfkit's training choices.

        ``build(hp)`` picks the precision policy, builds the architecture under it
        with ``build_model(hp)`` (which may declare its own hyperparameters),
        then compiles it with ``optimizer`` at a tuned learning rate and schedule,
        wrapped for gradient accumulation when ``accumulation_steps > 1``.
        Under ``mixed_float16`` Keras' ``compile`` adds loss scaling.

        Args:
            build_model: ``hp -> keras.Model`` (uncompiled architecture).
            loss, metrics: passed to ``model.compile``.
            optimizer: ``learning_rate -> keras.optimizers.Optimizer``; default Adam.
            learning_rate: ``(low, high)`` searched log-uniformly, or a float to fix it.
            schedules: name -> factory ``(hp, learning_rate, decay_steps)`` map;
                default :data:`DEFAULT_SCHEDULES` (``constant``, ``cosine``, and
                ``one_cycle`` when ``tfkit.schedules`` is available).
            decay_steps: training steps (batches) per trial, for decaying
                schedules; with ``accumulation_steps = N`` the schedule gets
                ``ceil(decay_steps / N)``, the number of real updates (unless the
                accumulator has ``counts_micro_batches = True``, like Keras' own).
            policies: dtype policies to choose from; default ``("float32",)``.
            accumulation_steps: micro-batches per update to choose from; default ``(1,)``.
            accumulator: ``(optimizer, steps) -> optimizer`` used when steps > 1;
                default tfkit's ``GradientAccumulator`` if installed, else Keras'
                built-in ``gradient_accumulation_steps`` (see docs/keras-defects.md#schedule-at-micro-step).
            compile_kwargs: extra ``model.compile`` arguments (e.g. ``jit_compile``).
            name, tunable: as ``keras_tuner.HyperModel``.

        Reference: keras-tuner ``HyperModel``; O'Malley et al., KerasTuner (2019).
        """

        def __init__(
            self,
            build_model: Callable,
            loss,
            metrics: Sequence | None = None,
            optimizer: Callable[[object], keras.optimizers.Optimizer] | None = None,
            learning_rate: float | tuple[float, float] = (1e-4, 1e-2),
            schedules: Mapping[str, ScheduleFactory] | None = None,
            decay_steps: int | None = None,
            policies: Sequence[str] = ("float32",),
            accumulation_steps: Sequence[int] = (1,),
            accumulator: Callable | None = None,
            compile_kwargs: dict | None = None,
            name: str | None = None,
            tunable: bool = True,
        ):
            super().__init__(name=name, tunable=tunable)
            if not callable(build_model):
                raise TypeError(
                    f"TfkitHyperModel: `build_model` must be callable, got {build_model!r}"
                )
            if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool):
                if not learning_rate > 0:
                    raise ValueError(
                        f"TfkitHyperModel: `learning_rate` must be > 0, received {learning_rate!r}"
                    )
            elif (
                isinstance(learning_rate, (tuple, list))
                and len(learning_rate) == 2
                and 0 < learning_rate[0] < learning_rate[1]
            ):
                learning_rate = (float(learning_rate[0]), float(learning_rate[1]))
            else:
                raise ValueError(
                    "TfkitHyperModel: `learning_rate` must be a float > 0 or a range (low, high) "
                    f"with 0 < low < high, received {learning_rate!r}"
                )
            schedules = dict(DEFAULT_SCHEDULES if schedules is None else schedules)
            _check_choices("schedules", schedules)
            for key, factory in schedules.items():
                if not callable(factory):
                    raise TypeError(
                        f"TfkitHyperModel: schedule {key!r} is not callable: {factory!r}"
                    )
            if decay_steps is not None and (not isinstance(decay_steps, int) or decay_steps < 1):
                raise ValueError(
                    f"TfkitHyperModel: `decay_steps` must be an int >= 1 or None, received {decay_steps!r}"
                )
            self.build_model = build_model
            self.loss = loss
            self.metrics = list(metrics) if metrics else None
            self.optimizer = optimizer or (lambda lr: keras.optimizers.Adam(lr))
            self.learning_rate = learning_rate
            self.schedules = schedules
            self.decay_steps = decay_steps
            self.policies = _check_choices("policies", policies, allowed=_POLICIES)
            self.accumulation_steps = _check_choices(
                "accumulation_steps", accumulation_steps, kind=int
            )
            if min(self.accumulation_steps) < 1:
                raise ValueError(
                    "TfkitHyperModel: `accumulation_steps` choices must be >= 1, received "
                    f"{self.accumulation_steps}"
                )
            self.accumulator = accumulator
            self.compile_kwargs = dict(compile_kwargs or {})

        def build(self, hp) -> keras.Model:
            policy = _choice(hp, "precision", self.policies)
            with _dtype_policy(policy):
                model = self.build_model(hp)
            if isinstance(self.learning_rate, tuple):
                lr = hp.Float("learning_rate", *self.learning_rate, sampling="log")
            else:
                lr = hp.Fixed("learning_rate", float(self.learning_rate))
            steps = _choice(hp, "accumulation_steps", self.accumulation_steps)
            accumulator = self.accumulator or _default_accumulator()
            # Schedules count real optimizer updates (README "Step"): accumulating
            # `steps` micro-batches per update leaves 1/steps as many updates.
            decay_steps = self.decay_steps
            if decay_steps is not None and steps > 1:
                if not getattr(accumulator, "counts_micro_batches", False):
                    decay_steps = max(1, math.ceil(decay_steps / steps))
            family = _choice(hp, "schedule", tuple(self.schedules))
            with hp.conditional_scope("schedule", [family]):
                rate = self.schedules[family](hp, lr, decay_steps)
            optimizer = self.optimizer(rate)
            if steps > 1:
                optimizer = accumulator(optimizer, steps)
            # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer.
            model.compile(
                optimizer=optimizer, loss=self.loss, metrics=self.metrics, **self.compile_kwargs
            )
            # Create the optimizer state now, so that checkpoints keras-tuner reloads
            # (Hyperband's continued trials, get_best_models) restore it too.
            if model.built:
                model.optimizer.build(model.trainable_variables)
            return model

    TfkitHyperModel.__module__ = __name__
    return TfkitHyperModel


def allow_missing_tensorboard(tuner):
    """Let a keras-tuner ``Tuner`` run trials when the ``tensorboard`` package is absent.

    keras-tuner 1.4 imports ``tensorboard`` at the start of every trial on the
    TensorFlow backend, only to patch a ``TensorBoard`` callback if one is
    passed; TensorFlow no longer installs ``tensorboard``, so every trial fails
    with ``ModuleNotFoundError``. When ``tensorboard`` is importable this does
    nothing; otherwise trials skip that step, and passing a ``TensorBoard``
    callback raises a clear error instead.

    Returns ``tuner``.
    """
    try:
        import tensorboard.plugins.hparams.api  # noqa: F401
    except ImportError:

        def make(original):
            def configure(callbacks, trial, execution=0):
                if any(type(c).__name__ == "TensorBoard" for c in callbacks):
                    return original(callbacks, trial, execution)  # raises the import error
                return None

            return configure

        _internals.tuner_tensorboard_hook(tuner, make)
    return tuner


@functools.cache
def _hypermodel_class():
    try:
        return _make_class()
    except ImportError as err:
        raise ImportError(
            "tfkit.tuning.hypermodel needs keras-tuner: pip install 'tfkit[tuner]' "
            f"(or keras-tuner>=1.4); import failed with: {err}"
        ) from err


def __getattr__(name: str):
    if name == "TfkitHyperModel":
        return _hypermodel_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
