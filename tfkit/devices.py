"""Describe the accelerators TensorFlow can see, in a form that can be injected.

Device-dependent choices (the ``"auto"`` precision policy, what ``tfkit info``
prints) take a list of :class:`DeviceDescription` instead of asking TensorFlow
directly, so every GPU branch is testable on a CPU-only machine::

    >>> from tfkit.devices import DeviceDescription
    >>> a100 = DeviceDescription("GPU:0", "GPU", "NVIDIA A100", (8, 0))
    >>> a100.compute_capability >= (8, 0)
    True
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

__all__ = ["DeviceDescription", "list_devices"]


@dataclasses.dataclass(frozen=True)
class DeviceDescription:
    """One visible device.

    Args:
        name: TensorFlow device name, e.g. ``"GPU:0"``.
        device_type: ``"CPU"``, ``"GPU"`` or ``"TPU"``.
        model: human-readable model name (``"NVIDIA A100-SXM4-40GB"``), or ``""``.
        compute_capability: CUDA compute capability ``(major, minor)`` for NVIDIA
            GPUs, ``None`` otherwise.
    """

    name: str
    device_type: str
    model: str = ""
    compute_capability: tuple[int, int] | None = None


def list_devices() -> list[DeviceDescription]:
    """Return a description of every physical device TensorFlow sees."""
    out = []
    for i, dev in enumerate(tf.config.list_physical_devices()):
        details = {}
        if dev.device_type == "GPU":
            try:
                details = tf.config.experimental.get_device_details(dev)
            except (ValueError, RuntimeError):  # details are best-effort
                details = {}
        index = dev.name.rsplit(":", 1)[-1]
        cc = details.get("compute_capability")
        out.append(
            DeviceDescription(
                name=f"{dev.device_type}:{index if index.isdigit() else i}",
                device_type=dev.device_type,
                model=str(details.get("device_name", "")),
                compute_capability=tuple(cc) if cc else None,
            )
        )
    return out
