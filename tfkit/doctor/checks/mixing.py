"""Whether examples mix within a batch (the batch-independence probe)."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.doctor.checks._common import (
    MIXING_TOLERANCE,
    _slice,
    _walk,
)
from tfkit.doctor.checks.registry import register
from tfkit.doctor.report import Finding
from tfkit.tuning._state import TrainingState


def _probe_outputs(model):
    """A function from inputs to the outputs of every top-level layer (None: model only)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if isinstance(model, keras.Sequential):

        def chain(x, training=False):
            outputs = []
            for layer in layers:
                x = layer(x, training=training)
                outputs.append(x)
            return outputs

        return chain, names
    try:
        probe = keras.Model(model.input, [layer.output for layer in layers])
    except (AttributeError, ValueError, TypeError):
        return None, None
    return probe, names


def _changes(run, first, second) -> list[float]:
    """Per output: relative change of example 0's output between the two batches."""
    outs = run(first), run(second)
    changes = []
    for a, b in zip(*outs, strict=True):
        worst = 0.0
        for ta, tb in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True):
            ta = np.asarray(ta, dtype="float64")[:1]
            tb = np.asarray(tb, dtype="float64")[:1]
            scale = float(np.max(np.abs(ta))) if ta.size else 0.0
            diff = float(np.max(np.abs(ta - tb))) if ta.size else 0.0
            worst = max(worst, diff / scale if scale > 0 else diff)
        changes.append(worst)
    return changes


def _batchnorm_in_inference(model, stack: contextlib.ExitStack) -> None:
    """Make every BatchNormalization use its moving statistics until ``stack`` closes."""
    for _, layer in _walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            original = layer.call

            def call(inputs, training=None, mask=None, _original=original):
                return _original(inputs, training=False, mask=mask)

            # An instance attribute shadows the class's call for this probe only.
            stack.enter_context(_internals.shadow_attribute(layer, "call", call))


@register("batch_independence")
def check_batch_independence(ctx) -> list[Finding]:
    model = ctx.model
    x = ctx.batch[0]
    n = len(tf.nest.flatten(x)[0])
    k = (n + 1) // 2
    if k < 2:
        return [
            Finding("batch_independence", "info", "skipped: needs a batch of at least 3 examples.")
        ]
    # Example 0 with examples 1..k-1, then with examples k..2k-2: only the others change.
    first = _slice(x, np.arange(k))
    second = _slice(x, np.concatenate([[0], np.arange(k, 2 * k - 1)]))
    probe, names = _probe_outputs(model)
    if probe is None:
        probe, names = (lambda v, training: [model(v, training=training)]), [model.name]
    data = {"layers": names, "examples": k}
    # Inference mode first; then training mode with BatchNormalization (the legitimate
    # mixer) on its moving statistics, and the random state (dropout masks) replayed
    # identically for both batches.
    data["relative_change"] = _changes(lambda v: probe(v, training=False), first, second)
    mode = "inference"
    if max(data["relative_change"]) <= MIXING_TOLERANCE:
        state = TrainingState.capture(model)

        def replay(v):
            state.restore()
            return probe(v, training=True)

        try:
            with contextlib.ExitStack() as stack:
                _batchnorm_in_inference(model, stack)
                data["relative_change_training"] = _changes(replay, first, second)
        finally:
            state.restore()
        mode = "training"
    changes = data["relative_change"] if mode == "inference" else data["relative_change_training"]
    for name, change in zip(names, changes, strict=True):
        if change > MIXING_TOLERANCE:
            return [
                Finding(
                    "batch_independence",
                    "error",
                    f"layer {name!r} mixes examples: the output of example 0 changes by "
                    f"{change:.2g} (relative) when only the other examples of the batch change, "
                    f"in {mode} mode. An op reduces or reshapes across the batch axis (a mean "
                    "over axis 0, a reshape/transpose that moves the batch axis); keep it per "
                    "example.",
                    layer=name,
                    data=data,
                )
            ]
    return [
        Finding(
            "batch_independence",
            "info",
            "each example's output depends on that example only, in inference and in training "
            "mode (BatchNormalization, which legitimately mixes, on its moving statistics).",
            data=data,
        )
    ]
