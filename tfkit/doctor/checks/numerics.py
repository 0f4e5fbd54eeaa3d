"""Numerics at initialisation: non-finite values, the loss at init, the zero-input baseline."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfkit.doctor.checks._common import (
    INITIAL_LOSS_SLACK,
    _concat,
    _finite,
    _loss,
    _loss_kind,
    _mean_loss,
    _output_layer,
    _owned,
    _past_warmup,
    _slice,
    _train_for,
    _train_steps,
)
from tfkit.doctor.checks.registry import register
from tfkit.doctor.report import Finding
from tfkit.tuning._state import TrainingState


@register("nonfinite")
def check_nonfinite(ctx) -> list[Finding]:
    from tfkit.callbacks.nan_guard import NaNGuard

    model, findings = ctx.model, []
    for i, (x, y, sw) in enumerate(ctx.batches):
        if not _finite((x, y, sw)):
            findings.append(
                Finding(
                    "nonfinite",
                    "error",
                    f"the data holds NaN or inf (batch {i} of the sample): clean or impute it "
                    "before training (np.nan_to_num, dropping rows, tf.data filter).",
                    data={"batch": i},
                )
            )
            return findings
    for path, variables in _owned(model, trainable=False):
        if not _finite([v.numpy() for v in variables]):
            findings.append(
                Finding(
                    "nonfinite",
                    "error",
                    f"layer {path!r} holds non-finite weights before training: re-initialise it "
                    "(or load a finite checkpoint).",
                    layer=path,
                    data={"stage": "weights"},
                )
            )
            return findings
    x, y, sw = ctx.batch
    guard = NaNGuard()
    guard.set_model(model)
    report = guard.diagnose(x, y)
    loss = float(_loss(model, x, y, sw, model(x, training=False), False))
    data = {
        "loss": loss,
        **{k: report[k] for k in ("forward_origin", "gradient_layers", "gradient_origin")},
    }
    if report["forward_origin"] is not None:
        layer = report["forward_origin"]
        findings.append(
            Finding(
                "nonfinite",
                "error",
                f"the forward pass first turns non-finite at layer {layer!r} (finite inputs): "
                "guard its operation (log/sqrt/divide of values <= 0, overflow of exp); "
                "clip or add an epsilon.",
                layer=layer,
                data=data,
            )
        )
    elif not math.isfinite(loss):
        findings.append(
            Finding(
                "nonfinite",
                "error",
                f"the loss is {loss} on finite outputs: the labels or the loss function produce it "
                "(log of 0 probabilities? labels out of range?).",
                data=data,
            )
        )
    elif report["gradient_layers"]:
        layer = report["gradient_origin"]
        findings.append(
            Finding(
                "nonfinite",
                "error",
                f"gradients are non-finite, first produced by layer {layer!r} in the backward pass "
                "(finite forward): a non-differentiable point (sqrt(0), abs at 0 under a log); "
                "add an epsilon inside it.",
                layer=layer,
                data=data,
            )
        )
    if findings:
        return findings
    # One real update: an overflow in the optimizer shows as non-finite weights.
    _train_steps(ctx, x, y, sw, ctx.micro)
    for path, variables in _owned(model, trainable=False):
        if not _finite([v.numpy() for v in variables]):
            findings.append(
                Finding(
                    "nonfinite",
                    "error",
                    f"one optimizer update made the weights of layer {path!r} non-finite: the "
                    "learning rate is far too large, or gradients overflow (clip them: "
                    "global_clipnorm=1.0).",
                    layer=path,
                    data={**data, "stage": "update"},
                )
            )
            return findings
    findings.append(
        Finding(
            "nonfinite",
            "info",
            f"loss ({loss:.4g}), gradients and weights are finite, also after one update.",
            data=data,
        )
    )
    return findings


@register("initial_loss")
def check_initial_loss(ctx) -> list[Finding]:
    model = ctx.model
    kind, from_logits, ignore_class = _loss_kind(model)
    preds = [model(x, training=False) for x, _, _ in ctx.batches]
    ys = [y for _, y, _ in ctx.batches]
    if kind is None or len(tf.nest.flatten(preds[0])) != 1 or len(tf.nest.flatten(ys[0])) != 1:
        loss = _mean_loss(model, ctx.batches, preds)
        return [
            Finding(
                "initial_loss",
                "info",
                f"loss at init {loss:.4g}; no reference value for this loss/output "
                "(cross-entropies only).",
                data={"loss": loss},
            )
        ]
    # Per-position rows: sequence outputs of batches padded to different lengths concatenate.
    width = int(np.shape(tf.nest.flatten(preds[0])[0])[-1])
    p = _concat(
        [np.reshape(np.asarray(tf.nest.flatten(q)[0], dtype="float64"), (-1, width)) for q in preds]
    )
    y = _concat(
        [
            np.reshape(
                np.asarray(tf.nest.flatten(t)[0], dtype="float64"),
                (-1,) if kind == "sparse_ce" else (-1, width),
            )
            for t in ys
        ]
    )
    out = _output_layer(model)
    findings = []
    classes = p.shape[-1] if kind != "bce" else 2
    expected = math.log(classes)
    data = {"expected": expected, "classes": classes, "kind": kind, "from_logits": from_logits}
    # Labels against the output.
    if kind == "sparse_ce":
        labels = y.astype("float64")
        valid = labels if ignore_class is None else labels[labels != ignore_class]
        if valid.size and (
            valid.min() < 0 or valid.max() >= classes or not np.all(valid == np.round(valid))
        ):
            findings.append(
                Finding(
                    "initial_loss",
                    "error",
                    f"labels range over [{valid.min():g}, {valid.max():g}] but the output "
                    f"{out!r} has {classes} classes: sparse labels must be integers in "
                    f"[0, {classes - 1}]; fix the labels or the number of units.",
                    layer=out,
                    data=data,
                )
            )
    elif kind == "ce":
        if (
            y.shape != p.shape
            or y.min() < 0
            or y.max() > 1
            or not np.allclose(y.sum(axis=-1), 1, atol=1e-3)
        ):
            findings.append(
                Finding(
                    "initial_loss",
                    "error",
                    f"categorical_crossentropy needs one-hot (or probability) labels of shape "
                    f"{p.shape[1:]}, received labels of shape {y.shape[1:]} with values in "
                    f"[{y.min():g}, {y.max():g}]: one-hot them or use "
                    "sparse_categorical_crossentropy.",
                    layer=out,
                    data=data,
                )
            )
    elif kind == "bce" and (y.min() < 0 or y.max() > 1):
        findings.append(
            Finding(
                "initial_loss",
                "error",
                f"binary_crossentropy needs labels in [0, 1], received [{y.min():g}, {y.max():g}].",
                layer=out,
                data=data,
            )
        )
    # The output against from_logits. Row sums get float16 slack; a binary output counts as
    # a probability only strictly inside (0, 1), so zero-initialised logits (exactly 0) pass.
    if kind == "bce":
        looks_like_probabilities = p.min() > 0 and p.max() < 1
        probabilities = p.min() >= 0 and p.max() <= 1
    else:
        probabilities = p.min() >= 0 and np.allclose(p.sum(axis=-1), 1, atol=1e-2)
        looks_like_probabilities = probabilities
    if from_logits and looks_like_probabilities:
        findings.append(
            Finding(
                "initial_loss",
                "error",
                f"the output {out!r} already holds probabilities (a sigmoid/softmax) but the loss has "
                "from_logits=True, so it squashes them again and the loss cannot go to zero: drop "
                "the output activation or set from_logits=False.",
                layer=out,
                data=data,
            )
        )
    elif not from_logits and not probabilities:
        findings.append(
            Finding(
                "initial_loss",
                "error",
                f"the output {out!r} is not a probability (values in [{p.min():.3g}, "
                f"{p.max():.3g}]) but the loss has from_logits=False: compile the loss with "
                "from_logits=True (or end the model with a softmax/sigmoid).",
                layer=out,
                data=data,
            )
        )
    if findings:
        return findings
    loss = data["loss"] = _mean_loss(model, ctx.batches, preds)
    slack = max(INITIAL_LOSS_SLACK, INITIAL_LOSS_SLACK * expected)
    if loss > expected + slack:
        return [
            Finding(
                "initial_loss",
                "warning",
                f"loss at init {loss:.4g} is well above log({classes}) = {expected:.4g}, the loss of "
                f"a uniform prediction: the last layer {out!r} starts confidently wrong. Initialise "
                "its kernel small (kernel_initializer='zeros' or a small stddev) and its bias to "
                "the log class priors.",
                layer=out,
                data=data,
            )
        ]
    return [
        Finding(
            "initial_loss",
            "info",
            f"loss at init {loss:.4g}, log({classes}) = {expected:.4g} expected for a "
            "uniform prediction.",
            data=data,
        )
    ]


@register("zero_input")
def check_zero_input(ctx) -> list[Finding]:
    model = ctx.model
    x, y, sw = ctx.batch
    idx = np.arange(min(ctx.options["overfit_batch_size"], len(tf.nest.flatten(x)[0])))
    x, y = _slice(x, idx), _slice(y, idx)
    sw = None if sw is None else _slice(sw, idx)
    steps = max(len(ctx.results.get("overfit_batch", {}).get("losses", [])), 30)
    ctx.options = {**ctx.options, "overfit_steps": steps}
    _past_warmup(model)
    state = TrainingState.capture(model)
    real = _train_for(ctx, x, y, sw, steps)
    state.restore()
    zeros = tf.nest.map_structure(np.zeros_like, x)
    ctx.deadline = math.inf  # the same number of steps as the real run, for a fair comparison
    baseline = _train_for(ctx, zeros, y, sw, len(real))
    data = {"real": real, "zero_input": baseline}
    if real[-1] >= 0.9 * baseline[-1]:
        return [
            Finding(
                "zero_input",
                "warning",
                f"the model does as well on all-zero inputs (loss {baseline[-1]:.4g}) as "
                f"on the real ones ({real[-1]:.4g}) after {steps} steps: the input does "
                "not reach the output (check the wiring and the preprocessing).",
                data=data,
            )
        ]
    return [
        Finding(
            "zero_input",
            "info",
            f"real inputs reach loss {real[-1]:.4g}, zero inputs {baseline[-1]:.4g} "
            f"after {steps} steps.",
            data=data,
        )
    ]
