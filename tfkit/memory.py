"""Peak memory of a training step, on CPU (BFC allocator) and GPU.

TensorFlow reports allocator statistics through
``tf.config.experimental.get_memory_info(device)``: ``current`` and ``peak``
bytes in use, and ``reset_memory_stats(device)`` restarts the peak. On GPU this
always works. On CPU it works only with the BFC allocator, which TensorFlow
chooses at start-up when the environment has ``TF_CPU_ALLOCATOR_USE_BFC=true``;
that is why :func:`measure_in_subprocess` exists: it runs a measurement in a
fresh Python process with the right environment.

    step_peak = peak bytes during one call of the step - bytes in use before it

``step_peak`` is what activations, gradients and temporaries of one step cost;
``baseline`` is what persists (weights, optimizer slots, data).

Example (in a process started with ``TF_CPU_ALLOCATOR_USE_BFC=true``)::

    from tfkit.memory import peak_memory
    stats = peak_memory(lambda: train_step(x, y))
    print(stats.step_peak / 2**20, "MiB")

or from any process::

    from tfkit.memory import measure_in_subprocess
    result = measure_in_subprocess("mypackage.bench:measure", {"batch": 64})
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping

import tensorflow as tf

__all__ = ["MemoryStats", "default_device", "measure_in_subprocess", "peak_memory"]

_RESULT_MARKER = "TFKIT_MEMORY_RESULT "


@dataclasses.dataclass(frozen=True)
class MemoryStats:
    """Allocator statistics of one measured call.

    Attributes:
        device: the device measured, e.g. ``"CPU:0"``.
        baseline: bytes in use just before the call.
        peak: peak bytes in use during the call.
        step_peak: ``peak - baseline``, the transient memory of the call.
    """

    device: str
    baseline: int
    peak: int

    @property
    def step_peak(self) -> int:
        return self.peak - self.baseline

    def to_dict(self) -> dict:
        """JSON-ready form, ``step_peak`` included (for :func:`measure_in_subprocess`)."""
        return {**dataclasses.asdict(self), "step_peak": self.step_peak}


def default_device() -> str:
    """``"GPU:0"`` if TensorFlow sees a GPU, else ``"CPU:0"``."""
    return "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"


def _bfc_enabled() -> bool:
    return os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")


def _block_until_ready(result) -> None:
    # Step functions return tensors computed asynchronously on GPU; reading
    # them makes the peak include the whole step.
    for leaf in tf.nest.flatten(result):
        if hasattr(leaf, "numpy"):
            leaf.numpy()


def peak_memory(
    step: Callable[[], object], device: str | None = None, warmup: int = 1
) -> MemoryStats:
    """Measure the peak memory of one call of ``step``.

    ``step`` is called ``warmup`` times first (so tracing, XLA compilation and
    lazily created optimizer slots are not counted), then the device's peak is
    reset and ``step`` is called once more.

    Args:
        step: a zero-argument callable, e.g. ``lambda: train_step(x, y)`` or
            ``lambda: model.train_on_batch(x, y)``.
        device: ``"CPU:0"``, ``"GPU:0"``, ...; default :func:`default_device`.
        warmup: number of unmeasured calls first, ``>= 0``.

    Returns:
        :class:`MemoryStats`.

    Raises:
        RuntimeError: measuring a CPU in a process that was not started with
            ``TF_CPU_ALLOCATOR_USE_BFC=true`` (use :func:`measure_in_subprocess`).
    """
    if not callable(step):
        raise TypeError(f"peak_memory: argument `step` must be callable; received {step!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(
            f"peak_memory: argument `warmup` must be an integer >= 0; received {warmup!r}."
        )
    device = device or default_device()
    if device.upper().startswith("CPU") and not _bfc_enabled():
        raise RuntimeError(
            "peak_memory: TensorFlow reports CPU memory only with the BFC allocator, which "
            "must be chosen before TensorFlow starts: run in a process started with "
            "TF_CPU_ALLOCATOR_USE_BFC=true, e.g. via tfkit.memory.measure_in_subprocess."
        )
    for _ in range(warmup):
        _block_until_ready(step())
    tf.config.experimental.reset_memory_stats(device)
    baseline = tf.config.experimental.get_memory_info(device)["current"]
    _block_until_ready(step())
    peak = tf.config.experimental.get_memory_info(device)["peak"]
    return MemoryStats(device=device, baseline=int(baseline), peak=int(peak))


_CHILD = """
import importlib, importlib.util, json, sys
target, args = sys.argv[1], json.loads(sys.argv[2])
module_name, func_name = target.rsplit(":", 1)
if module_name.endswith(".py"):
    spec = importlib.util.spec_from_file_location("_tfkit_measured", module_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
else:
    module = importlib.import_module(module_name)
result = getattr(module, func_name)(**args)
print({marker!r} + json.dumps(result), flush=True)
"""


def measure_in_subprocess(
    target: str,
    kwargs: Mapping | None = None,
    *,
    mem_limit_mb: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
):
    """Run ``target(**kwargs)`` in a fresh Python process with the BFC CPU allocator.

    The child process starts with ``TF_CPU_ALLOCATOR_USE_BFC=true`` (and
    ``TF_CPU_BFC_MEM_LIMIT_IN_MB=mem_limit_mb`` if given, which turns exceeding
    that much CPU memory into a real ``ResourceExhaustedError``), imports
    ``target`` and prints its JSON-serializable return value, which is returned
    here. Typically ``target`` builds a model and returns
    ``peak_memory(...).to_dict()``.

    Args:
        target: ``"package.module:function"`` or ``"path/to/file.py:function"``.
        kwargs: JSON-serializable keyword arguments for ``function``.
        mem_limit_mb: optional CPU memory limit of the child, in MiB (> 0).
        env: extra environment variables for the child.
        timeout: seconds before the child is killed.

    Returns:
        The decoded return value of ``target``.

    Raises:
        ValueError: malformed ``target`` or ``mem_limit_mb``.
        RuntimeError: the child failed; the message carries its stderr tail.
    """
    if not isinstance(target, str) or ":" not in target:
        raise ValueError(
            "measure_in_subprocess: argument `target` must be 'module:function' or "
            f"'file.py:function'; received {target!r}."
        )
    if mem_limit_mb is not None and (
        isinstance(mem_limit_mb, bool) or not isinstance(mem_limit_mb, int) or mem_limit_mb <= 0
    ):
        raise ValueError(
            "measure_in_subprocess: argument `mem_limit_mb` must be a positive integer or "
            f"None; received {mem_limit_mb!r}."
        )
    child_env = dict(os.environ)
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    child_env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    if mem_limit_mb is not None:
        child_env["TF_CPU_BFC_MEM_LIMIT_IN_MB"] = str(mem_limit_mb)
    # The child must import the same tfkit as this process.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, child_env.get("PYTHONPATH", "")) if p
    )
    child_env.update(env or {})
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD.replace("{marker!r}", repr(_RESULT_MARKER)),
            target,
            json.dumps(dict(kwargs or {})),
        ],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_MARKER):
            return json.loads(line[len(_RESULT_MARKER) :])
    raise RuntimeError(
        f"measure_in_subprocess: {target} failed (exit code {proc.returncode}):\n"
        + proc.stderr[-4000:]
    )
