"""Where a schedule ends, and a one-line warning when training starts past that end.

A finite schedule holds its final value past its end (tfkit's rule). Training
that starts there -- a ``fit`` continued after a reload once a ``linear``
decay reached 0 -- trains at that value with no word. ``schedule_end`` gives
the first step from which a schedule's value no longer changes;
``warn_if_finished`` is called once when the optimizer's step function is
traced (the first ``fit`` of a model, or after ``compile``/a reload) and warns
when every update of that run uses the final value. ``tfkit.doctor`` reports
the same (check ``schedule_end``).
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

__all__ = ["schedule_end", "warn_if_finished"]


def schedule_end(schedule) -> int | None:
    """The first step from which ``schedule`` holds its final value; None if it never ends.

    Known for every finite tfkit schedule and for Keras' ``CosineDecay``,
    ``PolynomialDecay`` (``cycle=False``) and ``PiecewiseConstantDecay``; None
    for schedules that keep changing (exponential, inverse-time, cyclic,
    restarts, inverse square root) and for unknown ones.

    Example:
        >>> from tfkit.schedules import get_scheduler
        >>> from tfkit.schedules.finished import schedule_end
        >>> schedule_end(get_scheduler("linear", 0.1, 10, 100))
        100
    """
    from tfkit import schedules as s

    keras_schedules = keras.optimizers.schedules
    if isinstance(schedule, s.Constant):
        return 0
    if isinstance(schedule, s.PolynomialDecay | keras_schedules.PolynomialDecay):
        return None if schedule.cycle else int(schedule.decay_steps)
    if isinstance(schedule, s.CosineDecay | keras_schedules.CosineDecay):
        return int(getattr(schedule, "warmup_steps", 0) or 0) + int(schedule.decay_steps)
    if isinstance(schedule, s.LinearCosineDecay):
        return int(schedule.decay_steps)
    if isinstance(schedule, s.OneCycle | s.OneCycleMomentum):
        return int(schedule.total_steps) - 1
    if isinstance(schedule, s.WarmupStableDecay):
        return int(schedule.warmup_steps + schedule.stable_steps + schedule.decay_steps)
    if isinstance(schedule, s.PiecewiseConstantDecay | keras_schedules.PiecewiseConstantDecay):
        return int(max(schedule.boundaries)) + 1  # the last value starts after the boundary
    if isinstance(schedule, s.MultiStepDecay):
        return int(max(schedule.milestones))
    if isinstance(schedule, s.Warmup):
        inner = schedule_end(schedule.schedule)
        return None if inner is None else int(schedule.warmup_steps) + inner
    if isinstance(schedule, s.Join):
        last = schedule_end(schedule.schedules[-1])
        return None if last is None else int(schedule.boundaries[-1]) + last
    if isinstance(schedule, s.Product):
        ends = [schedule_end(f) for f in schedule.schedules]
        return None if any(e is None for e in ends) else max(ends)
    if isinstance(schedule, s.ScaledSchedule):
        return schedule_end(schedule.schedule)
    return None


def finished_message(schedule, step: int, owner: str = "the optimizer") -> str | None:
    """The one-line warning for training from ``step`` on, or None while the schedule still moves."""
    end = schedule_end(schedule)
    if end is None or end == 0 or step < end:
        return None
    final = float(schedule(end))
    return (
        f"tfkit: the learning-rate schedule of {owner} ended at update {end} and training "
        f"starts at update {step}: every update uses its final rate {final:.3g} "
        f"({type(schedule).__name__}); extend the schedule or start a new one to keep training."
    )


def warn_if_finished(schedule, step) -> None:
    """Warn once per trace when the optimizer's step counter is already past the schedule's end.

    ``step`` is the optimizer's ``iterations`` variable, handed to the
    schedule while Keras traces the train step; it is read outside the graph
    (``tf.init_scope``), so this costs nothing per step.
    """
    if tf.executing_eagerly() or not isinstance(step, tf.Variable | keras.Variable):
        return
    with tf.init_scope():
        try:
            current = int(keras.ops.convert_to_numpy(step))
        except (TypeError, ValueError):  # pragma: no cover - an uninitialized variable
            return
        message = finished_message(schedule, current)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
