"""Find the largest micro-batch a device can train, and plan accumulation to a target batch.

Memory, not the optimizer, usually caps the batch: a training step needs the
activations of the forward pass until the backward pass has used them. The
finder runs *real* training steps (forward, backward, optimizer update, through
``model.train_on_batch``) at growing batch sizes until TensorFlow raises
``ResourceExhaustedError``, then bisects between the last size that fitted and
the first that did not. Every trial starts from the same weights and optimizer
state (restored bit for bit), so the model is left exactly as it was.

The plan reaches ``target_batch`` with gradient accumulation:

    accumulation_steps = ceil(target_batch / max_micro_batch)
    micro_batch        = ceil(target_batch / accumulation_steps)   (<= max_micro_batch,
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

from tfkit.tuning._state import TrainingState

__all__ = ["MicroBatchPlan", "find_micro_batch"]


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    """How to reach ``target_batch`` on this device.

    Attributes:
        target_batch: the batch size asked for.
        max_micro_batch: largest batch size whose training step fitted.
        micro_batch: batch size per step in the plan (``<= max_micro_batch``).
        accumulation_steps: micro-batches per optimizer update.
        effective_batch: ``micro_batch * accumulation_steps``.
        exact: whether ``effective_batch == target_batch``.
        recompute_advised: whether recomputation is advisable (module docstring).
        notes: human-readable remarks (inexact target, why recompute, ...).
        trials: ``{batch_size: fitted}`` for every size tried, in order.
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

    def __str__(self) -> str:
        lines = [
            f"micro-batch {self.micro_batch} x {self.accumulation_steps} accumulation steps "
            f"= effective batch {self.effective_batch} (target {self.target_batch}; "
            f"largest that fits: {self.max_micro_batch})",
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
    x, y, sw = _tile_all(sample, batch_size)
    try:
        model.train_on_batch(x, y, sample_weight=sw)
        return True
    except tf.errors.ResourceExhaustedError:
        pass
    # Out of memory: drop the host copies and any tensors still referenced by the
    # failed step (its traceback frames) before the next attempt. Only here, since
    # a full collection costs ~0.5 s with TensorFlow loaded.
    del x, y, sw
    gc.collect()
    return False


def _plan(
    target_batch: int,
    max_micro: int,
    multiple_of: int,
    min_micro_batch: int,
    max_accumulation_steps: int,
    trials: dict[int, bool],
) -> MicroBatchPlan:
    steps = math.ceil(target_batch / max_micro)
    # Round the balanced size up to `multiple_of`, never past what fitted.
    micro = min(max_micro, math.ceil(math.ceil(target_batch / steps) / multiple_of) * multiple_of)
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
    )


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"find_micro_batch: `{name}` must be an int >= {minimum}, received {value!r}"
        )


def find_micro_batch(
    model: keras.Model,
    sample,
    target_batch: int,
    start: int = 1,
    multiple_of: int = 1,
    min_micro_batch: int = 8,
    max_accumulation_steps: int = 8,
) -> MicroBatchPlan:
    """Find the largest micro-batch whose training step fits in memory, and plan accumulation.

    Search: try ``start``, then double until a step raises
    ``tf.errors.ResourceExhaustedError`` or ``target_batch`` is reached (no
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
    """
    _check_int("target_batch", target_batch, 1)
    _check_int("start", start, 1)
    _check_int("multiple_of", multiple_of, 1)
    _check_int("min_micro_batch", min_micro_batch, 1)
    _check_int("max_accumulation_steps", max_accumulation_steps, 1)
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

    good, bad = 0, None
    size = start
    while True:
        if trial(size):
            good = size
            if size >= target_batch:
                break
            size = min(2 * size, target_batch)
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
    return _plan(target_batch, good, multiple_of, min_micro_batch, max_accumulation_steps, trials)


def _tile_all(sample, batch_size: int):
    return tuple(None if s is None else _tile(s, batch_size) for s in sample)
