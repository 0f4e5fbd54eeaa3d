"""Shared pieces of every tfkit schedule: argument validation, dtypes, step math.

Numerics, decided once for the package:

* The *value* of a schedule is computed in float32, or in float64 when the
  initial rate is given as a float64 (``np.float64``, a float64 tensor) or
  ``dtype="float64"`` is passed.
* The *step arithmetic* (where in the schedule a step falls: fractions,
  cycle indices, phase positions) runs in float64, which represents every
  integer step below 2**53 exactly. A float32 step counter cannot tell step
  2**24 + 1 from 2**24, and a cyclic schedule at step 2**40 would otherwise land
  anywhere in its cycle. Only the resulting fraction in [0, 1] is cast to the
  value dtype, so float32 results stay within float32 rounding of the float64
  reference at every step.
* The step contract (``step_as_float64``): any int or float step, Python,
  NumPy or tensor, is evaluated in float64; bool, complex, str and None are a
  ``TypeError``; a negative or non-finite step is an error, never clamped.
* Optimizers pass a scalar step; every tfkit schedule is elementwise, so a
  vector of steps also works (one call for a whole curve, as ``tfkit.plot`` does).
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf

from tfkit import _validation
from tfkit.schedules.finished import warn_if_finished

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

_DTYPES = ("float32", "float64")


def register(cls):
    """Register ``cls`` with Keras serialization under package ``tfkit``."""
    return keras.saving.register_keras_serializable(package="tfkit")(cls)


class ScheduleBase(LearningRateSchedule):
    """Common behaviour: ``dtype``, ``name`` scope and ``from_config``.

    Subclasses implement ``_compute(step)`` where ``step`` is a float64 scalar
    tensor >= 0; ``__call__`` converts any step tensor to that form.
    """

    dtype: str
    name: str | None

    def __call__(self, step):
        warn_if_finished(self, step)  # trace time only: the optimizer's counter, past the end?
        with tf.name_scope(self.name or type(self).__name__):
            return with_step_contract(type(self).__name__, step, self._compute)

    def _compute(self, step: tf.Tensor) -> tf.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _peak(self) -> float | None:
        """An upper bound of every value (None: unknown). ``Product`` checks overflow with it."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def peak_of(schedule) -> float | None:
    """An upper bound of a schedule's values: tfkit schedules know theirs, others None."""
    peak = getattr(schedule, "_peak", None)
    return peak() if callable(peak) else None


def check_representable(owner: str, value: float, dtype: str, arguments: dict) -> None:
    """Reject a combination of ``arguments`` whose largest value ``dtype`` cannot hold."""
    if not value <= float(np.finfo(dtype).max):
        names = ", ".join(f"`{k}`" for k in arguments)
        received = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        raise ValueError(
            f"{owner}: {names} must together give a largest value {dtype} can represent "
            f"(here {value!r}); received {received}."
        )


def step_as_float64(step, owner: str = "schedule") -> tf.Tensor:
    """The step contract of every tfkit schedule: ``step`` as a float64 tensor, checked, never clamped.

    * Python and NumPy ints and floats, and int or float tensors (any width),
      are evaluated in float64. A Python float goes straight to float64 (a
      float32 detour would turn 16777217.0 into 16777216.0).
    * ``bool``, complex, ``str``/``bytes``, ``None`` (and tensors of those
      dtypes) raise ``TypeError`` naming ``step``.
    * A Python/NumPy step that is negative or not finite (or an int beyond
      float64, ``10**400``) raises ``ValueError`` naming ``step``.
    * A tensor step is checked when the graph runs: a negative or non-finite
      element raises ``tf.errors.InvalidArgumentError`` naming ``step``
      (``tf.debugging.check_numerics``). Under ``jit_compile=True`` XLA compiles
      every assertion to nothing, so there such a step gives a NaN value
      instead: loud, never a silently clamped rate.
    """
    if isinstance(step, bool | np.bool_ | str | bytes | complex | np.complexfloating) or (
        step is None
    ):
        _validation.fail(owner, "step", step, "an int or float number or tensor", TypeError)
    if _is_host_step(step):
        return _host_step(owner, step)
    step = tf.convert_to_tensor(step)
    if not (step.dtype.is_integer or step.dtype.is_floating):
        _validation.fail(
            owner, "step", step, f"an int or float tensor (not {step.dtype.name})", TypeError
        )
    if step.dtype != tf.float64:
        step = tf.cast(step, tf.float64)  # exact for every int below 2**53 and every float32
    # A negative or infinite step becomes NaN (`step >= 0` and `step < inf` are
    # both False for NaN), and check_numerics refuses it with a message naming `step`.
    ok = (step >= 0) & (step < np.inf)
    return tf.debugging.check_numerics(
        tf.where(ok, step, tf.constant(np.nan, tf.float64)),
        f"{owner}: `step` must be a finite number >= 0; received a negative or non-finite step",
    )


def with_step_contract(owner: str, step, compute):
    """``compute(step_as_float64(step))``, NaN where a tensor step broke the contract.

    Under XLA the ``check_numerics`` of ``step_as_float64`` compiles to nothing:
    the NaN it leaves in the step is carried to the value here, so a bad step
    never yields a plausible (clamped) rate.
    """
    checked = step_as_float64(step, owner)
    value = tf.convert_to_tensor(compute(checked))
    if _is_host_step(step):
        return value  # checked on the host already
    return tf.where(tf.math.is_nan(checked), tf.constant(np.nan, value.dtype), value)


def _is_host_step(step) -> bool:
    return isinstance(step, numbers.Number | np.generic | np.ndarray | list | tuple)


def _host_step(owner: str, step) -> tf.Tensor:
    """A Python/NumPy step, checked on the host (no graph op)."""
    try:
        array = np.asarray(step)
    except (OverflowError, ValueError):  # pragma: no cover - ragged lists
        _validation.fail(owner, "step", step, "an int or float number or tensor", TypeError)
    if array.dtype == object:  # Python ints beyond int64 (2**70, 10**400)
        try:
            array = np.asarray(step, dtype=np.float64)
        except (OverflowError, TypeError, ValueError):
            _validation.fail(
                owner, "step", _validation._Shown(step), "a finite number that fits a float64"
            )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        _validation.fail(owner, "step", step, "an int or float number or tensor", TypeError)
    array = array.astype(np.float64)  # int64 -> float64 rounds only beyond 2**53
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        _validation.fail(owner, "step", step, "a finite number >= 0")
    return tf.constant(array, tf.float64)


def constant(value: float, dtype: str) -> tf.Tensor:
    return tf.constant(value, dtype=dtype)


# ----------------------------------------------------------------------------
# Validation. The generic checks live in tfkit._validation (one module, one
# message shape); the names below keep the schedules' imports short.


def check_rate(owner: str, name: str, value, dtype: str) -> float:
    """A learning rate: a finite number >= 0 that ``dtype`` can represent."""
    return check_number(owner, name, value, low=0, high=float(np.finfo(dtype).max))


check_number = _validation.check_number
check_choice = _validation.check_choice
check_bool = _validation.check_bool
check_name = _validation.check_name
check_sequence = _validation.check_sequence
check_increasing = _validation.check_increasing


def resolve_dtype(owner: str, dtype, *rates) -> str:
    """``dtype`` if given, else float64 when any rate is a float64 array/tensor, else float32."""
    if dtype is not None:
        if isinstance(dtype, tf.DType):
            dtype = dtype.name
        if isinstance(dtype, np.dtype) or (
            isinstance(dtype, type) and issubclass(dtype, np.generic)
        ):
            dtype = np.dtype(dtype).name
        return check_choice(owner, "dtype", dtype, _DTYPES)
    for rate in rates:
        rate_dtype = getattr(rate, "dtype", None)
        if (
            rate_dtype is not None
            and np.dtype(getattr(rate_dtype, "as_numpy_dtype", rate_dtype)) == np.float64
        ):
            return "float64"
    return "float32"


def fraction(step: tf.Tensor, length: float) -> tf.Tensor:
    """``min(step, length) / length`` in float64: where a finite phase stands, in [0, 1]."""
    length = tf.constant(float(length), tf.float64)
    return tf.minimum(step, length) / length


def serialize(schedule) -> dict:
    return keras.saving.serialize_keras_object(schedule)


def deserialize(config):
    """A schedule from its config; anything else is returned as is for the caller to refuse."""
    if not isinstance(config, dict | str):
        return config
    try:
        return keras.saving.deserialize_keras_object(config)
    except (TypeError, ValueError):
        return config  # an unparsable config: refused by the caller, naming its argument
