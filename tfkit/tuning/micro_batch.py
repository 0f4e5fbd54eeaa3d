"""Find the largest micro-batch a device can train, and plan accumulation to a target batch.

Memory, not the optimizer, usually caps the batch: a training step needs the
activations of the forward pass until the backward pass has used them. The
finder runs *real* training steps at growing batch sizes until TensorFlow
raises ``ResourceExhaustedError``, then bisects between the last size that
fitted and the first that did not. Every trial starts from the same weights and
optimizer state (restored bit for bit), so the model is left exactly as it was.

A trial is a real ``model.fit`` of two batches, so it holds what the fit it
plans for holds: the input arrays converted to tensors, the batch itself, the
input pipeline's prefetch buffer for the next batch, and the step. What it
cannot see (a larger dataset held in memory, callbacks' tensors, other models,
allocator fragmentation later in training) is covered by a safety margin: the
plan uses at most ``safety_margin`` (0.9 by default, the factor by which
Hugging Face Accelerate's ``find_executable_batch_size`` shrinks the batch
after each OOM) of the largest size that fitted. Ten per cent does not cover a
whole dataset held in the device's own memory (a CPU, where a NumPy array and
Keras' tensor copy of it share the pool with the step): stream such data
through ``tf.data``, or lower ``safety_margin``.

The plan reaches ``target_batch`` with gradient accumulation:

    usable             = floor(safety_margin * max_micro_batch)     (down to multiple_of)
    accumulation_steps = ceil(target_batch / usable)
    micro_batch        = ceil(target_batch / accumulation_steps)   (<= usable,
                                                                    rounded up to multiple_of)
    effective_batch    = micro_batch * accumulation_steps          (>= target_batch)

Balancing the micro-batch this way keeps ``effective_batch`` as close to the
target as the accumulation count allows (target 100 with at most 48 per step
gives 3 x 34 = 102, not 3 x 48 = 144).

Recomputation (gradient checkpointing) is advised when the micro-batch that fits
is below ``min_micro_batch`` (default 8: smaller batches leave the device
under-used and make BatchNorm statistics noisy), or when reaching the target
needs more than ``max_accumulation_steps`` (default 8: each accumulation step
costs a full forward/backward on a small batch). Recomputing activations costs
about one extra forward pass (~30% more compute) and typically lets a 2-4x
larger micro-batch fit.
"""

from __future__ import annotations

import dataclasses
import gc
import math

import keras
import numpy as np
import tensorflow as tf

from tfkit import _validation
from tfkit.tuning._state import TrainingState

__all__ = ["MicroBatchPlan", "find_micro_batch"]


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    """How to reach ``target_batch`` on this device.

    Attributes:
        target_batch: the batch size asked for.
        max_micro_batch: largest batch size whose training (a ``fit`` of two
            batches) fitted.
        micro_batch: batch size per step in the plan (``<= max_micro_batch``).
        accumulation_steps: micro-batches per optimizer update.
        effective_batch: ``micro_batch * accumulation_steps``.
        exact: whether ``effective_batch == target_batch``.
        recompute_advised: whether recomputation is advisable (module docstring).
        notes: human-readable remarks (inexact target, why recompute, ...).
        trials: ``{batch_size: fitted}`` for every size tried, in order.
        safety_margin: the fraction of ``max_micro_batch`` the plan may use.
    """

    target_batch: int
    max_micro_batch: int
    micro_batch: int
    accumulation_steps: int
    effective_batch: int
    exact: bool
    recompute_advised: bool
    notes: tuple[str, ...]
    trials: dict[int, bool]
    safety_margin: float = 1.0

    def __str__(self) -> str:
        lines = [
            f"micro-batch {self.micro_batch} x {self.accumulation_steps} accumulation steps "
            f"= effective batch {self.effective_batch} (target {self.target_batch}; "
            f"largest that fits: {self.max_micro_batch}, safety margin {self.safety_margin:g})",
            f"recompute advised: {'yes' if self.recompute_advised else 'no'}",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _tile(structure, batch_size: int):
    """Repeat the examples of a batch along axis 0 to exactly ``batch_size`` rows."""

    def tile(a):
        a = np.asarray(a)
        reps = math.ceil(batch_size / len(a))
        return np.concatenate([a] * reps, axis=0)[:batch_size]

    return tf.nest.map_structure(tile, structure)


def _fits(model: keras.Model, sample, batch_size: int) -> bool:
    """Whether ``model.fit`` of two batches of ``batch_size`` runs without OOM.

    ``fit``, not ``train_on_batch``: the trial goes through the same data
    adapter and ``tf.data`` pipeline as the training it plans for, so the
    input tensors and the prefetched next batch are counted with the step.
    """
    x, y, sw = _tile_all(sample, 2 * batch_size)
    try:
        model.fit(x, y, sample_weight=sw, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        return True
    except tf.errors.ResourceExhaustedError:
        pass
    # Out of memory: drop the host copies and any tensors still referenced by the
    # failed step (its traceback frames) before the next attempt. Only here, since
    # a full collection costs ~0.5 s with TensorFlow loaded.
    del x, y, sw
    gc.collect()
    return False


def _usable(max_micro: int, safety_margin: float, multiple_of: int) -> int:
    """``floor(safety_margin * max_micro)``, down to a multiple of ``multiple_of`` when possible."""
    # The epsilon keeps floor(0.9 * ceil(t / 0.9)) at t despite rounding.
    usable = max(1, math.floor(safety_margin * max_micro + 1e-9))
    if usable >= multiple_of:
        usable = usable // multiple_of * multiple_of
    return usable


def _plan(
    target_batch: int,
    max_micro: int,
    multiple_of: int,
    min_micro_batch: int,
    max_accumulation_steps: int,
    trials: dict[int, bool],
    safety_margin: float = 1.0,
) -> MicroBatchPlan:
    usable = _usable(max_micro, safety_margin, multiple_of)
    steps = math.ceil(target_batch / usable)
    # Round the balanced size up to `multiple_of`, never past the usable size.
    micro = min(usable, math.ceil(math.ceil(target_batch / steps) / multiple_of) * multiple_of)
    effective = micro * steps
    notes = []
    if effective != target_batch:
        notes.append(
            f"target_batch={target_batch} is not a multiple of {steps} accumulation steps: "
            f"the effective batch is {effective}"
        )
    recompute = False
    if max_micro < min_micro_batch:
        recompute = True
        notes.append(
            f"only {max_micro} examples fit per step (< min_micro_batch={min_micro_batch}): "
            "recompute activations to fit a larger micro-batch"
        )
    if steps > max_accumulation_steps:
        recompute = True
        notes.append(
            f"{steps} accumulation steps needed (> max_accumulation_steps="
            f"{max_accumulation_steps}): recompute activations to need fewer"
        )
    return MicroBatchPlan(
        target_batch=target_batch,
        max_micro_batch=max_micro,
        micro_batch=micro,
        accumulation_steps=steps,
        effective_batch=effective,
        exact=effective == target_batch,
        recompute_advised=recompute,
        notes=tuple(notes),
        trials=dict(trials),
        safety_margin=safety_margin,
    )


def _check_int(name: str, value, minimum: int) -> None:
    _validation.check_int("find_micro_batch", name, value, low=minimum)


def find_micro_batch(
    model: keras.Model,
    sample,
    target_batch: int,
    start: int = 1,
    multiple_of: int = 1,
    min_micro_batch: int = 8,
    max_accumulation_steps: int = 8,
    safety_margin: float = 0.9,
) -> MicroBatchPlan:
    """Find the largest micro-batch whose training step fits in memory, and plan accumulation.

    Search: try ``start``, then double until a trial raises
    ``tf.errors.ResourceExhaustedError`` or ``ceil(target_batch /
    safety_margin)`` is reached (the target with its margin of headroom; no
    larger size is ever tried), then bisect between the last size that fitted
    and the first that did not. After each trial the weights and optimizer
    state are restored, and after an OOM Python garbage is collected so the
    failed step's buffers are released. ``keras.backend.clear_session()`` is
    deliberately not called: it resets Keras' global state, not the memory of
    live variables, and would invalidate the caller's model.

    Args:
        model: a compiled Keras model (optimizer wrappers, mixed precision,
            recomputation and ``jit_compile`` all apply, as in ``fit``).
        sample: ``(x, y[, sample_weight])`` with at least one example; its
            examples are repeated to build each trial batch.
        target_batch: the batch size the optimizer should see, >= 1.
        start: first size tried, in ``[1, target_batch]``.
        multiple_of: bisect only down to multiples of this (8 suits most
            accelerators and saves trials); the doubling phase still starts at
            ``start`` and ``target_batch`` itself is always a candidate.
        min_micro_batch: below this micro-batch, recomputation is advised.
        max_accumulation_steps: above this many accumulation steps,
            recomputation is advised.
        safety_margin: in ``(0, 1]``: the plan's micro-batch is at most
            ``floor(safety_margin * max_micro_batch)`` (module docstring).
            Compile ``model`` as it will be trained (a ``GradientAccumulator``
            adds one float32 copy of the weights).

    Returns:
        A :class:`MicroBatchPlan`.

    Raises:
        ValueError: bad arguments or an empty ``sample``.
        RuntimeError: not even a batch of ``start`` examples fits.

    Example:
        >>> import keras, numpy as np
        >>> from tfkit.tuning.micro_batch import find_micro_batch
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile("adam", "mse")
        >>> plan = find_micro_batch(model, (np.ones((1, 4)), np.ones((1, 1))), target_batch=64)
        >>> (plan.micro_batch, plan.accumulation_steps)  # a tiny model fits it whole
        (64, 1)
        >>> plan.max_micro_batch  # tried up to ceil(64 / 0.9): the margin is there too
        72
    """
    _check_int("target_batch", target_batch, 1)
    _check_int("start", start, 1)
    _check_int("multiple_of", multiple_of, 1)
    _check_int("min_micro_batch", min_micro_batch, 1)
    _check_int("max_accumulation_steps", max_accumulation_steps, 1)
    _validation.check_float(
        "find_micro_batch", "safety_margin", safety_margin, low=0, low_open=True, high=1
    )
    if start > target_batch:
        raise ValueError(
            f"find_micro_batch: `start` must be <= target_batch={target_batch}, received {start}"
        )
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError(
            "find_micro_batch: `model` must be compiled with an optimizer (call model.compile)"
        )
    if not isinstance(sample, (tuple, list)) or not 1 <= len(sample) <= 3:
        raise ValueError(
            "find_micro_batch: `sample` must be a tuple (x, y[, sample_weight]), "
            f"received {type(sample).__name__}"
        )
    sample = tuple(sample) + (None,) * (3 - len(sample))
    if len(tf.nest.flatten(sample[0])[0]) == 0:
        raise ValueError("find_micro_batch: `sample` holds 0 examples")

    state = TrainingState.capture(model, _tile_all(sample, 1))
    trials: dict[int, bool] = {}

    def trial(size: int) -> bool:
        try:
            trials[size] = _fits(model, sample, size)
        finally:
            state.restore()
        return trials[size]

    # The largest size worth trying: the target plus its margin of headroom.
    ceiling = max(target_batch, math.ceil(target_batch / safety_margin))
    good, bad = 0, None
    size = start
    while True:
        if trial(size):
            good = size
            if size >= ceiling:
                break
            size = min(2 * size, ceiling)
        else:
            bad = size
            break
    if good == 0:
        raise RuntimeError(
            f"find_micro_batch: a training step on a batch of {start} example(s) does not fit "
            "in memory (ResourceExhaustedError); recompute activations, use mixed precision "
            "or a smaller model"
        )
    while bad is not None:
        # Largest multiple of `multiple_of` strictly between good and bad.
        mid = ((good + bad) // 2) // multiple_of * multiple_of
        if mid <= good:
            mid = (bad - 1) // multiple_of * multiple_of
            if mid <= good:
                break
        if trial(mid):
            good = mid
        else:
            bad = mid
    return _plan(
        target_batch,
        good,
        multiple_of,
        min_micro_batch,
        max_accumulation_steps,
        trials,
        float(safety_margin),
    )


def _tile_all(sample, batch_size: int):
    return tuple(None if s is None else _tile(s, batch_size) for s in sample)
