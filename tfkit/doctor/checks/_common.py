"""Thresholds and helpers shared by the doctor's check families."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.optimizers import innermost

# initial_loss: the loss at init may exceed its uniform-prediction value by this
# much (absolute, or relative to it, whichever is larger) before it is flagged.
INITIAL_LOSS_SLACK = 0.5


# overfit_batch: success when the loss falls to this fraction of its first value.
OVERFIT_TARGET = 0.1


# gradient_flow: ||g||/||w|| spread between the first and the last layer, and the
# absolute ceiling of any layer's ratio.
GRADIENT_SPREAD = 1e4


GRADIENT_CEILING = 1e2


# dead_units: a layer with at least this fraction of never-active units is flagged.
DEAD_FRACTION = 0.5


# update_ratio: healthy band around ~1e-3 (UpdateRatioMonitor's defaults).
UPDATE_RATIO_LOW = 1e-5


UPDATE_RATIO_HIGH = 1e-1


# batch_independence: relative change of one sample's output that counts as mixing.
MIXING_TOLERANCE = 1e-3


# learning_rate: configured rate this many times off lr_find's suggestion.
LEARNING_RATE_FACTOR = 30.0


_CROSS_ENTROPIES = {
    "sparse_categorical_crossentropy": "sparse_ce",
    "sparsecategoricalcrossentropy": "sparse_ce",
    "categorical_crossentropy": "ce",
    "categoricalcrossentropy": "ce",
    "binary_crossentropy": "bce",
    "binarycrossentropy": "bce",
}


# ---------------------------------------------------------------- helpers


def _walk(model) -> list[tuple[str, keras.layers.Layer]]:
    """Every layer below ``model`` (nested models and wrappers included), with its path."""
    found, seen = [], set()

    def visit(layer, prefix):
        for sub in _internals.flatten_layers(layer, include_self=False, recursive=False):
            if id(sub) in seen or isinstance(sub, keras.layers.InputLayer):
                continue
            seen.add(id(sub))
            path = f"{prefix}{sub.name}"
            found.append((path, sub))
            visit(sub, path + "/")

    visit(model, "")
    return found


def _owned(model, trainable=True) -> list[tuple[str, list]]:
    """``(layer path, variables the layer owns itself)`` for the layers that own any."""
    groups = []
    for path, layer in _walk(model):
        subs = _internals.flatten_layers(layer, include_self=False, recursive=False)
        below = {id(v) for s in subs for v in (s.trainable_weights if trainable else s.weights)}
        own = [
            v
            for v in (layer.trainable_weights if trainable else layer.weights)
            if id(v) not in below
        ]
        if own:
            groups.append((path, own))
    return groups


def _norm(values) -> float:
    total = 0.0
    for v in values:
        if isinstance(v, tf.IndexedSlices):
            v = tf.convert_to_tensor(v)
        a = np.asarray(v, dtype="float64")
        total += float(np.sum(a * a))
    return math.sqrt(total)


def _finite(structure) -> bool:
    for a in tf.nest.flatten(structure):
        a = np.asarray(a)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return False
    return True


def _loss(model, x, y, sw, y_pred, training):
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw, training=training)


def _gradients(model, x, y, sw, training=True):
    """Loss and unscaled gradients of ``model.trainable_variables``, loss-scaled as in fit."""
    variables = model.trainable_variables
    optimizer = model.optimizer
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=training)
        loss = _loss(model, x, y, sw, y_pred, training)
        scaled = optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, [v.value for v in variables])
    factor = float(optimizer.scale_loss(tf.constant(1.0)))
    if factor != 1.0:
        grads = [None if g is None else g / factor for g in grads]
        if not _finite([tf.convert_to_tensor(g) for g in grads if g is not None]):
            # The scale overflowed: a real step would be skipped and the scale lowered.
            grads = tape.gradient(loss, [v.value for v in variables])
    del tape
    return float(loss), variables, grads


def _train_steps(ctx, x, y, sw, steps):
    """``steps`` real ``train_on_batch`` calls; returns their losses."""
    losses = []
    for _ in range(steps):
        logs = ctx.model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        losses.append(float(logs["loss"]))
    return losses


def _loss_kind(model):
    """``(kind, from_logits, ignore_class)`` of the compiled loss; kind None when unknown."""
    loss = model.loss
    from_logits, ignore_class = False, None
    if isinstance(loss, str):
        resolved = keras.losses.get(loss)
        name = getattr(resolved, "__name__", loss)
    elif isinstance(loss, keras.losses.Loss):
        name = type(loss).__name__
        from_logits = bool(getattr(loss, "from_logits", False))
        ignore_class = getattr(loss, "ignore_class", None)
    elif callable(loss):
        name = getattr(loss, "__name__", "")
    else:
        return None, False, None
    return _CROSS_ENTROPIES.get(name.lower()), from_logits, ignore_class


def _mean_loss(model, batches, preds) -> float:
    total, count = 0.0, 0
    for (x, y, sw), y_pred in zip(batches, preds, strict=True):
        n = len(tf.nest.flatten(x)[0])
        total += float(_loss(model, x, y, sw, y_pred, False)) * n
        count += n
    return total / count


def _output_layer(model) -> str:
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return layers[-1].name if layers else model.name


def _slice(structure, idx):
    return tf.nest.map_structure(lambda a: np.asarray(a)[idx], structure)


def _concat(arrays):
    return np.concatenate([np.asarray(a) for a in arrays], axis=0)


# ---------------------------------------------------------------- checks


def _current_rate(model) -> float | None:
    try:
        return float(innermost(model.optimizer).learning_rate)
    except Exception:  # noqa: BLE001 - MultiOptimizer has no single rate and says so by raising
        return None


def _past_warmup(model) -> str:
    """Move the schedule past a warm-up before checks that judge the learning rate.

    With a ``LearningRateSchedule`` whose rate at the current step is under a
    tenth of its peak (probed at steps ``t + 2**k``), the innermost optimizer's
    ``iterations`` jumps to the peak step: a warm-up from ~0 would otherwise
    read as "learning rate too low". The caller's snapshot restores it.
    Returns a note for messages ("" when nothing moved).
    """
    try:
        owner = innermost(model.optimizer)
        schedule = _internals.learning_rate_object(owner)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return ""
        now = int(owner.iterations.numpy())
        steps = [now] + [now + 2**k for k in range(25)]
        rates = [float(schedule(step)) for step in steps]
    except Exception:  # noqa: BLE001 - no schedule to read: judge the rate as it is
        return ""
    peak = max(range(len(steps)), key=rates.__getitem__)
    if rates[0] >= rates[peak] / 10:
        return ""
    owner.iterations.assign(steps[peak])
    return f" (schedule moved past its warm-up to step {steps[peak]}, rate {rates[peak]:.3g})"


def _train_for(ctx, x, y, sw, steps):
    losses = []
    for _ in range(steps):
        losses.append(float(np.mean(_train_steps(ctx, x, y, sw, ctx.micro))))
        if not math.isfinite(losses[-1]) or ctx.time_left() <= 0:
            break
    return losses
