"""Whether the model can learn: overfit one batch, the learning-rate check."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfkit.doctor.checks._common import (
    LEARNING_RATE_FACTOR,
    OVERFIT_TARGET,
    _current_rate,
    _past_warmup,
    _slice,
    _train_steps,
)
from tfkit.doctor.checks.registry import register
from tfkit.doctor.report import Finding


@register("overfit_batch")
def check_overfit_batch(ctx) -> list[Finding]:
    model = ctx.model
    x, y, sw = ctx.batch
    idx = np.arange(min(ctx.options["overfit_batch_size"], len(tf.nest.flatten(x)[0])))
    x, y = _slice(x, idx), _slice(y, idx)
    sw = None if sw is None else _slice(sw, idx)
    if not model.trainable_variables:
        return [
            Finding(
                "overfit_batch",
                "error",
                "the model has no trainable weights (all layers frozen): set "
                "layer.trainable = True where it should learn, then recompile.",
            )
        ]
    before = [np.array(v.numpy()) for v in model.trainable_variables]
    moved = _past_warmup(model)
    losses = _overfit(ctx, x, y, sw)
    first, best = losses[0], min(losses) if losses else math.nan
    data = {"losses": losses, "target": OVERFIT_TARGET * first, "examples": len(idx)}
    ctx.results["overfit_batch"] = data
    rate = _current_rate(model)
    at = (f" at learning rate {rate:.3g}" if rate is not None else "") + moved
    if all(
        np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables, strict=True)
    ):
        return [
            Finding(
                "overfit_batch",
                "error",
                f"no weight changed in {len(losses)} steps{at}: the weights are frozen "
                "(trainable=False), the learning rate is 0 or no gradient reaches them.",
                data=data,
            )
        ]
    if not all(math.isfinite(v) for v in losses):
        return [
            Finding(
                "overfit_batch",
                "error",
                f"the loss became non-finite after {len(losses)} steps on one batch{at}: "
                "the learning rate is too high (or see nonfinite).",
                data=data,
            )
        ]
    if best <= OVERFIT_TARGET * first:
        return [
            Finding(
                "overfit_batch",
                "info",
                f"memorised {len(idx)} examples: loss {first:.4g} -> {best:.4g} in "
                f"{len(losses)} steps.",
                data=data,
            )
        ]
    tail = losses[-max(3, len(losses) // 5) :]
    if best > 0.9 * first or tail[-1] > tail[0] * 1.05:
        why = (
            "the loss does not go down or rises: the learning rate is too high, the "
            "output and the loss do not match (see initial_loss), or the labels are "
            "wrong"
        )
    elif tail[-1] > 0.95 * tail[0]:
        why = (
            "the loss plateaus: the output activation cannot reach the targets "
            "(e.g. a sigmoid/softmax against targets outside [0, 1], from_logits twice) "
            "or the model is too small"
        )
    else:
        why = (
            "the loss still falls slowly: the learning rate is too low (or raise "
            "overfit_steps / time_budget)"
        )
    return [
        Finding(
            "overfit_batch",
            "warning",
            f"cannot overfit {len(idx)} examples: loss {first:.4g} -> {best:.4g} in "
            f"{len(losses)} steps{at} (target {OVERFIT_TARGET:g} x initial); {why}.",
            data=data,
        )
    ]


def _overfit(ctx, x, y, sw) -> list[float]:
    """Train on one batch until the loss reaches the target, the step budget or the time."""
    losses = []
    for _ in range(ctx.options["overfit_steps"]):
        step = _train_steps(ctx, x, y, sw, ctx.micro)
        losses.append(float(np.mean(step)))
        if not math.isfinite(losses[-1]) or losses[-1] <= OVERFIT_TARGET * losses[0]:
            break
        if ctx.time_left() <= 0:
            break
    return losses


@register("learning_rate")
def check_learning_rate(ctx) -> list[Finding]:
    from tfkit.tuning.lr_find import lr_find

    rate = _current_rate(ctx.model)
    if rate is None:
        return [
            Finding(
                "learning_rate",
                "info",
                "skipped: the optimizer has no single learning rate (parameter groups).",
            )
        ]
    steps = max(20, min(100, ctx.options["overfit_steps"] // 3))
    result = lr_find(
        ctx.model,
        ctx.data,
        steps=steps,
        verbose=0,
        seed=ctx.options["seed"],
        batch_size=ctx.options["batch_size"],
    )
    data = {
        "configured": rate,
        "suggestion": result.suggestion,
        "lrs": result.lrs.tolist(),
        "losses": result.losses.tolist(),
    }
    if result.suggestion is None:
        return [
            Finding(
                "learning_rate", "info", f"lr_find made no suggestion ({result.reason}).", data=data
            )
        ]
    factor = rate / result.suggestion
    if factor > LEARNING_RATE_FACTOR or factor < 1 / LEARNING_RATE_FACTOR:
        side = "above" if factor > 1 else "below"
        return [
            Finding(
                "learning_rate",
                "warning",
                f"the configured learning rate {rate:.3g} is {max(factor, 1 / factor):.0f}x "
                f"{side} lr_find's suggestion {result.suggestion:.3g}: try the "
                "suggestion.",
                data=data,
            )
        ]
    return [
        Finding(
            "learning_rate",
            "info",
            f"configured learning rate {rate:.3g}, lr_find suggests {result.suggestion:.3g}.",
            data=data,
        )
    ]


@register("schedule_end")
def check_schedule_end(ctx) -> list[Finding]:
    """Warn when the optimizer's schedule has ended: every next update uses its final rate."""
    import keras

    from tfkit import _internals
    from tfkit.optimizers import leaves
    from tfkit.optimizers.hyperparameters import ControlledLearningRate
    from tfkit.schedules.finished import finished_message, schedule_end

    optimizer = getattr(ctx.model, "optimizer", None)
    findings = []
    for leaf in leaves(optimizer) if optimizer is not None else []:
        schedule = _internals.learning_rate_object(leaf)
        if isinstance(schedule, ControlledLearningRate):  # under tfkit's control plane
            schedule = schedule.rate
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            continue
        step = int(keras.ops.convert_to_numpy(leaf.iterations))
        message = finished_message(schedule, step, owner=f"optimizer {leaf.name!r}")
        if message:
            data = {"end": schedule_end(schedule), "step": step}
            findings.append(Finding("schedule_end", "warning", message, data=data))
    return findings or [Finding("schedule_end", "info", "no learning-rate schedule has ended.")]
