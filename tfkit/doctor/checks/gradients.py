"""Gradient flow, dead units and the update/weight ratio."""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.doctor.checks._common import (
    DEAD_FRACTION,
    GRADIENT_CEILING,
    GRADIENT_SPREAD,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    _current_rate,
    _gradients,
    _norm,
    _owned,
    _past_warmup,
    _train_steps,
    _walk,
)
from tfkit.doctor.checks.registry import register
from tfkit.doctor.report import Finding


@register("gradient_flow")
def check_gradient_flow(ctx) -> list[Finding]:
    model = ctx.model
    x, y, sw = ctx.batch
    loss, variables, grads = _gradients(model, x, y, sw, training=True)
    by_id = {id(v): g for v, g in zip(variables, grads, strict=True)}
    names, grad_norms, weight_norms, ratios, missing, zero = [], [], [], [], [], []
    for path, own in _owned(model):
        gs = [by_id.get(id(v)) for v in own]
        if all(g is None for g in gs):
            missing.append(path)
            continue
        g = _norm([g for g in gs if g is not None])
        w = _norm([v.numpy() for v in own])
        names.append(path)
        grad_norms.append(g)
        weight_norms.append(w)
        ratios.append(g / w if w > 0 else float("inf") if g > 0 else 0.0)
        if g == 0.0:
            zero.append(path)
    data = {
        "layers": names,
        "grad_norms": grad_norms,
        "weight_norms": weight_norms,
        "ratios": ratios,
        "no_gradient": missing,
        "zero_gradient": zero,
        "loss": loss,
    }
    findings = []
    for path in missing:
        findings.append(
            Finding(
                "gradient_flow",
                "warning",
                f"layer {path!r} has trainable weights but gets no gradient: it does not reach the "
                "loss (an unused branch, a stop_gradient, an integer cast). Connect it or set "
                "trainable=False.",
                layer=path,
                data=data,
            )
        )
    for path in zero:
        findings.append(
            Finding(
                "gradient_flow",
                "warning",
                f"layer {path!r} gets an exactly zero gradient on this batch: dead ReLUs or a "
                "saturated activation upstream block it (see dead_units).",
                layer=path,
                data=data,
            )
        )
    live = [(n, r) for n, r in zip(names, ratios, strict=True) if r > 0 and math.isfinite(r)]
    if not findings and live:
        high = max(live, key=lambda t: t[1])
        # First against last layer (CS231n): single layers in between may legitimately get
        # tiny gradients at init (attention keys: a near-uniform softmax hides them).
        first, last = live[0], live[-1]
        if high[1] > GRADIENT_CEILING:
            findings.append(
                Finding(
                    "gradient_flow",
                    "warning",
                    f"gradients explode: layer {high[0]!r} has ||g||/||w|| = {high[1]:.3g}: scale the "
                    "initialisation down (he_normal/glorot), normalise inputs and targets, add "
                    "normalisation layers or clip gradients (global_clipnorm=1.0).",
                    layer=high[0],
                    data=data,
                )
            )
        elif max(first[1] / last[1], last[1] / first[1]) > GRADIENT_SPREAD:
            vanishing = first[1] < last[1]
            findings.append(
                Finding(
                    "gradient_flow",
                    "warning",
                    f"gradients {'vanish' if vanishing else 'explode'} toward the input: "
                    f"||g||/||w|| is {first[1]:.3g} at the first layer {first[0]!r} and "
                    f"{last[1]:.3g} at the last {last[0]!r}. Use ReLU-family activations with "
                    "he_normal init, residual connections or normalisation layers.",
                    layer=first[0],
                    data=data,
                )
            )
    if not findings:
        findings.append(
            Finding(
                "gradient_flow",
                "info",
                f"{len(names)} layers get gradients; ||g||/||w|| from "
                f"{min(ratios) if ratios else 0:.3g} to {max(ratios) if ratios else 0:.3g}.",
                data=data,
            )
        )
    return findings


def _is_relu(layer) -> str | None:
    if isinstance(layer, keras.layers.ReLU):
        return "call" if not layer.negative_slope else None
    act = getattr(layer, "activation", None)
    if act is keras.activations.relu or act is keras.activations.relu6:
        return "activation"
    return None


@register("dead_units")
def check_dead_units(ctx) -> list[Finding]:
    model = ctx.model
    targets = [
        (path, layer, how) for path, layer in _walk(model) if (how := _is_relu(layer)) is not None
    ]
    if not targets:
        return [Finding("dead_units", "info", "no ReLU-family layer.")]
    active: dict[str, np.ndarray] = {}
    zeros: dict[str, list] = {path: [0, 0] for path, _, _ in targets}

    def recorder(path, fn):
        def record(*args, **kwargs):
            out = fn(*args, **kwargs)
            a = np.asarray(out)
            flat = a.reshape(-1, a.shape[-1])
            seen = (flat > 0).any(axis=0)
            active[path] = seen if path not in active else active[path] | seen
            zeros[path][0] += int((flat == 0).sum())
            zeros[path][1] += flat.size
            return out

        return record

    with contextlib.ExitStack() as stack:
        for path, layer, how in targets:
            # Instance attributes shadow the class: the eager forward below calls the recorder.
            recorded = recorder(path, getattr(layer, how))
            stack.enter_context(_internals.shadow_attribute(layer, how, recorded))
        for x, _, _ in ctx.batches:
            model(x, training=False)
    names = [p for p, _, _ in targets if p in active]
    dead = [float(1 - active[p].mean()) for p in names]
    zero = [zeros[p][0] / max(zeros[p][1], 1) for p in names]
    units = [int(active[p].size) for p in names]
    data = {
        "layers": names,
        "dead_fractions": dead,
        "zero_fractions": zero,
        "units": units,
        "examples": sum(len(tf.nest.flatten(b[0])[0]) for b in ctx.batches),
    }
    findings = []
    for name, d, u in zip(names, dead, units, strict=True):
        if d >= DEAD_FRACTION:
            findings.append(
                Finding(
                    "dead_units",
                    "warning",
                    f"layer {name!r}: {d:.0%} of its {u} ReLU units are never active on "
                    f"{data['examples']} examples (dead: no gradient reaches their weights). Check "
                    "the bias initialisation (not strongly negative), lower the learning rate, or "
                    "use leaky_relu/gelu.",
                    layer=name,
                    data=data,
                )
            )
    if not findings:
        worst = max(dead) if dead else 0.0
        findings.append(
            Finding(
                "dead_units",
                "info",
                f"{len(names)} ReLU-family layers; at most {worst:.0%} of a "
                "layer's units never active.",
                data=data,
            )
        )
    return findings


@register("update_ratio")
def check_update_ratio(ctx) -> list[Finding]:
    model = ctx.model
    x, y, sw = ctx.batch
    groups = _owned(model)
    moved = _past_warmup(model)
    rate = _current_rate(model)
    before = [[np.array(v.numpy(), dtype="float64") for v in vs] for _, vs in groups]
    for _update in range(10):  # loss scaling may skip the first updates (overflow)
        _train_steps(ctx, x, y, sw, ctx.micro)
        after = [[np.asarray(v.numpy(), dtype="float64") for v in vs] for _, vs in groups]
        deltas = [
            _norm([a - b for a, b in zip(aa, bb, strict=True)])
            for aa, bb in zip(after, before, strict=True)
        ]
        if any(d > 0 for d in deltas):
            break
    names, ratios = [], []
    for (path, _), d, b in zip(groups, deltas, before, strict=True):
        w = _norm(b)
        if w > 0:
            names.append(path)
            ratios.append(d / w)
    data = {"layers": names, "ratios": ratios, "low": UPDATE_RATIO_LOW, "high": UPDATE_RATIO_HIGH}
    at = (f" (learning rate {rate:.3g})" if rate is not None else "") + moved
    findings = []
    trained = [(n, r) for n, r in zip(names, ratios, strict=True) if r > 0]
    if trained:
        high = max(trained, key=lambda t: t[1])
        low = min(trained, key=lambda t: t[1])
        if high[1] > UPDATE_RATIO_HIGH:
            findings.append(
                Finding(
                    "update_ratio",
                    "warning",
                    f"one update changes layer {high[0]!r} by {high[1]:.2g} of its norm{at}; "
                    f"~1e-3 is healthy, above {UPDATE_RATIO_HIGH:g} training is unstable: lower "
                    "the learning rate.",
                    layer=high[0],
                    data=data,
                )
            )
        elif low[1] < UPDATE_RATIO_LOW:
            findings.append(
                Finding(
                    "update_ratio",
                    "warning",
                    f"one update changes layer {low[0]!r} by only {low[1]:.2g} of its norm{at}; "
                    f"~1e-3 is healthy, below {UPDATE_RATIO_LOW:g} it barely learns: raise the "
                    "learning rate.",
                    layer=low[0],
                    data=data,
                )
            )
    elif names:
        findings.append(
            Finding(
                "update_ratio",
                "warning",
                f"no weight changed in {ctx.micro * 10} training steps{at}: zero learning rate, "
                "frozen layers, or every update skipped by loss scaling.",
                data=data,
            )
        )
    if not findings:
        findings.append(
            Finding(
                "update_ratio",
                "info",
                f"update/weight ratio from {min(ratios):.2g} to {max(ratios):.2g} per update "
                f"(healthy near 1e-3).",
                data=data,
            )
        )
    return findings
