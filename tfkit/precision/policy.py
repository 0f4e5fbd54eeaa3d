"""Choose and apply the global Keras dtype policy, by name or from the hardware.

Mixed precision runs the heavy layer math in a 16-bit type and keeps the
variables ("master weights") in float32. Which 16-bit type pays off depends on
the accelerator:

* compute capability >= 8.0 (Ampere, Hopper, ...): ``"mixed_bfloat16"``.
  bfloat16 keeps float32's 8-bit exponent, so gradients neither underflow nor
  overflow any more than in float32 and no loss scaling is needed.
* compute capability 7.x (Volta, Turing): ``"mixed_float16"``. These tensor
  cores have no bfloat16; float16's 5-bit exponent needs dynamic loss scaling.
  Compile with :func:`tfkit.precision.wrap` ``(optimizer, policy=change)``: it
  adds tfkit's bounded, observable :class:`~tfkit.precision.LossScaleOptimizer`
  (left alone, ``Model.compile`` adds Keras' unbounded one).
* older GPUs, CPU only, or a GPU whose capability is unknown: ``"float32"``.
  16-bit math gives no speed-up there and costs accuracy.
* no GPU but a TPU: ``"mixed_bfloat16"`` (the TPU's native matmul type).

With several GPUs the *lowest* capability decides, because every replica of a
``tf.distribute`` strategy runs the same policy.

Reference: NVIDIA, "Train With Mixed Precision" (Deep Learning Performance
documentation); Keras mixed precision guide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras

from tfkit import _validation
from tfkit.devices import DeviceDescription, list_devices

__all__ = ["POLICIES", "PolicyChange", "auto_policy", "set_policy"]

#: The policy names :func:`set_policy` accepts.
POLICIES = ("mixed_float16", "mixed_bfloat16", "float32", "auto")


@dataclasses.dataclass(frozen=True)
class PolicyChange:
    """What :func:`set_policy` applied; also a context manager that undoes it.

    Attributes:
        name: the policy now in force (``"auto"`` resolved to a concrete name).
        requested: the name passed to :func:`set_policy`.
        reason: why this policy (for ``"auto"``: which device decided).
        policy: the ``keras.DTypePolicy`` now global.
        previous: the global ``keras.DTypePolicy`` before the call; restored
            when a ``with`` block around :func:`set_policy` exits.
    """

    name: str
    requested: str
    reason: str
    policy: keras.DTypePolicy
    previous: keras.DTypePolicy

    def __enter__(self) -> PolicyChange:
        return self

    def __exit__(self, *exc_info) -> None:
        keras.config.set_dtype_policy(self.previous)

    def __str__(self) -> str:
        return self.name


def auto_policy(devices: Sequence[DeviceDescription] | None = None) -> tuple[str, str]:
    """Return ``(policy_name, reason)`` that ``set_policy("auto")`` would apply.

    Args:
        devices: the visible devices; defaults to :func:`tfkit.devices.list_devices`.
            Pass a list of :class:`~tfkit.devices.DeviceDescription` to decide
            for other hardware (this is how every branch is tested on a CPU).

    Example:
        >>> from tfkit.devices import DeviceDescription
        >>> auto_policy([DeviceDescription("GPU:0", "GPU", "T4", (7, 5))])[0]
        'mixed_float16'
    """
    devices = _check_devices(list_devices() if devices is None else devices)
    gpus = [d for d in devices if d.device_type == "GPU"]
    if gpus:
        unknown = [d.name for d in gpus if d.compute_capability is None]
        if unknown:
            return "float32", f"compute capability of {', '.join(unknown)} is unknown"
        weakest = min(gpus, key=lambda d: tuple(d.compute_capability))
        cc = tuple(weakest.compute_capability)
        where = f"{weakest.name} ({weakest.model or 'GPU'}) has compute capability {cc[0]}.{cc[1]}"
        if len(gpus) > 1:
            where = f"lowest of {len(gpus)} GPUs: {where}"
        if cc >= (8, 0):
            return "mixed_bfloat16", f"{where} >= 8.0: bfloat16 tensor cores"
        if cc >= (7, 0):
            return "mixed_float16", f"{where} is 7.x: float16 tensor cores, no bfloat16"
        return "float32", f"{where} < 7.0: no tensor cores"
    if any(d.device_type == "TPU" for d in devices):
        return "mixed_bfloat16", "TPU: bfloat16 is its native matmul type"
    return "float32", "no GPU or TPU: 16-bit compute gives no speed-up"


def set_policy(policy: str, devices: Sequence[DeviceDescription] | None = None) -> PolicyChange:
    """Set the global Keras dtype policy; use as a context manager to restore it.

    The policy applies to layers created *after* the call (Keras reads the global
    policy when a layer is constructed), so call it before building the model.

    Args:
        policy: one of ``"mixed_float16"``, ``"mixed_bfloat16"``, ``"float32"``
            or ``"auto"`` (see :func:`auto_policy` for the rule).
        devices: device descriptions used by ``"auto"`` only; defaults to the
            devices TensorFlow sees.

    Then compile with ``tfkit.precision.wrap(optimizer, policy=change)`` so
    that ``"mixed_float16"`` gets tfkit's bounded loss scaler, not Keras'.

    Returns:
        A :class:`PolicyChange`: ``.name`` is the policy applied. The change is
        already in force when ``set_policy`` returns; used in a ``with`` statement
        the previous global policy comes back when the block exits.

    Raises:
        ValueError: ``policy`` is not one of the allowed names.
        TypeError: ``policy`` is not a string, or ``devices`` holds something
            other than ``DeviceDescription``.

    Example:
        >>> import keras
        >>> from tfkit.precision import set_policy
        >>> with set_policy("mixed_bfloat16"):
        ...     keras.layers.Dense(8).compute_dtype
        'bfloat16'
        >>> keras.config.dtype_policy().name
        'float32'
    """
    if not isinstance(policy, str):
        _validation.fail("set_policy", "policy", policy, f"a string, one of {list(POLICIES)}", TypeError)
    _validation.check_choice("set_policy", "policy", policy, list(POLICIES))
    if policy == "auto":
        name, reason = auto_policy(devices)
    else:
        if devices is not None:
            _check_devices(devices)
        name, reason = policy, "requested explicitly"
    previous = keras.config.dtype_policy()
    applied = keras.DTypePolicy(name)
    keras.config.set_dtype_policy(applied)
    return PolicyChange(name, policy, reason, applied, previous)


def _check_devices(devices) -> list[DeviceDescription]:
    allowed = "a list of tfkit.devices.DeviceDescription"
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
        _validation.fail("set_policy", "devices", devices, allowed, TypeError)
    for d in devices:
        if not isinstance(d, DeviceDescription):
            _validation.fail("set_policy", "devices", devices, allowed, TypeError)
    return list(devices)
