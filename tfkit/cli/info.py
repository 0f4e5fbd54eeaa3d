"""``tfkit info``: versions, devices, and whether XLA and mixed precision are usable."""

from __future__ import annotations

import argparse
import platform


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="print TensorFlow/Keras versions, devices, XLA and mixed-precision support"
    )
    p.set_defaults(func=run)


def _xla_usable() -> tuple[bool, str]:
    import tensorflow as tf

    try:
        f = tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)
        f(tf.ones([2]))
        return True, "jit_compile=True works"
    except Exception as err:  # XLA missing or broken: say why instead of crashing
        return False, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"


def precision_support(devices) -> dict[str, str]:
    """What each mixed policy gives on ``devices`` (list of ``DeviceDescription``)."""
    gpus = [d for d in devices if d.device_type == "GPU"]
    if not gpus:
        return {
            "mixed_float16": "runs, no speed-up (no GPU)",
            "mixed_bfloat16": "runs, no speed-up expected on CPU",
        }
    cc = min((d.compute_capability or (0, 0)) for d in gpus)
    return {
        "mixed_float16": "fast (tensor cores)" if cc >= (7, 0) else "runs, no tensor cores",
        "mixed_bfloat16": "fast (tensor cores)" if cc >= (8, 0) else "runs, no bf16 tensor cores",
    }


def run(args: argparse.Namespace) -> int:
    import keras
    import tensorflow as tf

    from tfkit._version import __version__
    from tfkit.devices import list_devices

    devices = list_devices()
    print(f"tfkit       {__version__}")
    print(f"python      {platform.python_version()}")
    print(f"tensorflow  {tf.__version__}")
    print(f"keras       {keras.__version__} (backend: {keras.backend.backend()})")
    print("devices:")
    for d in devices:
        extra = ""
        if d.model:
            extra += f"  {d.model}"
        if d.compute_capability:
            extra += f"  compute capability {d.compute_capability[0]}.{d.compute_capability[1]}"
        print(f"  {d.name:8s}{extra}")
    if not any(d.device_type == "GPU" for d in devices):
        print("  (no GPU visible to TensorFlow)")
    ok, why = _xla_usable()
    print(f"xla         {'usable' if ok else 'NOT usable'} ({why})")
    for policy, verdict in precision_support(devices).items():
        print(f"{policy:15s} {verdict}")
    from tfkit.precision import auto_policy

    name, reason = auto_policy(devices)
    print(f"{'auto policy':15s} {name} ({reason})")
    return 0
