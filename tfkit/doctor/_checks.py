"""The doctor's checks. Each takes the examination context and returns a list of findings.

Thresholds are module constants, chosen so that the healthy models of the test
suite (MLP, CNN with BatchNorm, Transformer with padding masks, mixed precision,
accumulation, recomputation) produce no warning: a false alarm is a bug.
"""

from __future__ import annotations

import contextlib
import math
import time

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.doctor.report import Finding
from tfkit.optimizers import innermost
from tfkit.tuning._state import TrainingState

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


def _dataset_ops(dataset) -> set[str]:
    try:
        graph = tf.raw_ops.DatasetToGraphV2(input_dataset=_internals.dataset_variant(dataset))
        graph_def = tf.compat.v1.GraphDef.FromString(graph.numpy())
    except Exception:  # noqa: BLE001 - structure is advice only
        return set()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def _pipeline_advice(ops: set[str]) -> list[str]:
    advice = []
    if not any(op.startswith("Prefetch") for op in ops):
        advice.append(
            "end the pipeline with .prefetch(tf.data.AUTOTUNE) so batches are "
            "produced while the model trains"
        )
    if "MapDataset" in ops:
        advice.append("pass num_parallel_calls=tf.data.AUTOTUNE to .map()")
    if ops & {"PyFunc", "EagerPyFunc", "GeneratorDataset"}:
        advice.append(
            "Python code runs in the pipeline (from_generator / py_function, one "
            "thread under the GIL): rewrite it in TensorFlow ops or precompute it"
        )
    if not any(op.startswith("Cache") for op in ops):
        advice.append(
            "cache() the data after the expensive deterministic steps (before "
            "shuffle/augmentation) when it fits in memory"
        )
    return advice


def check_input_pipeline(ctx) -> list[Finding]:
    x, y, sw = ctx.batch
    budget = ctx.time_left() / 2
    # Train time per batch: one warm-up call (tracing), then the median of a few.
    _train_steps(ctx, x, y, sw, 1)
    step_times = []
    start = time.perf_counter()
    while len(step_times) < 5 and (time.perf_counter() - start < budget or not step_times):
        t = time.perf_counter()
        _train_steps(ctx, x, y, sw, 1)
        step_times.append(time.perf_counter() - t)
    step = float(np.median(step_times))
    if not isinstance(ctx.data, tf.data.Dataset):
        return [
            Finding(
                "input_pipeline",
                "info",
                f"in-memory arrays (Keras batches and prefetches them); one training "
                f"step takes {step * 1e3:.3g} ms.",
                data={"step_seconds": step},
            )
        ]
    iterator = iter(ctx.data)
    next(iterator)  # the first batch includes start-up (shuffle buffer, iterator creation)
    data_times = []
    start = time.perf_counter()
    while len(data_times) < 10 and (time.perf_counter() - start < budget or not data_times):
        t = time.perf_counter()
        try:
            next(iterator)
        except StopIteration:
            break
        data_times.append(time.perf_counter() - t)
    produce = float(np.median(data_times)) if data_times else 0.0
    advice = _pipeline_advice(_dataset_ops(ctx.data))
    data = {
        "step_seconds": step,
        "batch_seconds": produce,
        "ratio": produce / step if step > 0 else math.inf,
        "advice": advice,
    }
    if produce > step:
        fixes = (
            "; ".join(advice)
            if advice
            else ("parallelise the slow step (interleave/map with num_parallel_calls)")
        )
        return [
            Finding(
                "input_pipeline",
                "warning",
                f"input-bound: producing a batch takes {produce * 1e3:.3g} ms, training "
                f"on it {step * 1e3:.3g} ms, so the device waits for data. Fix: "
                f"{fixes}.",
                data=data,
            )
        ]
    note = f" Could still: {'; '.join(advice)}." if advice else ""
    return [
        Finding(
            "input_pipeline",
            "info",
            f"not input-bound: a batch takes {produce * 1e3:.3g} ms to produce and "
            f"{step * 1e3:.3g} ms to train on.{note}",
            data=data,
        )
    ]


_AUDIT_SEVERITY = {
    "half_output": "warning",
    "half_softmax": "warning",
    "half_loss": "warning",
    "half_variable": "warning",
    "no_loss_scaling": "warning",
}


def check_precision(ctx) -> list[Finding]:
    from tfkit.precision import audit

    batch = len(tf.nest.flatten(ctx.batch[0])[0])
    found = audit(
        ctx.model,
        batch_size=batch if isinstance(ctx.data, tf.data.Dataset) else ctx.options["batch_size"],
    )
    findings = [
        Finding(
            "precision",
            _AUDIT_SEVERITY.get(f.code, "info"),
            f"[{f.code}] {f.problem} Fix: {f.fix}",
            layer=f.layer,
            data={"code": f.code},
        )
        for f in found
    ]
    return findings or [Finding("precision", "info", "precision.audit: nothing to fix.")]


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


def _train_for(ctx, x, y, sw, steps):
    losses = []
    for _ in range(steps):
        losses.append(float(np.mean(_train_steps(ctx, x, y, sw, ctx.micro))))
        if not math.isfinite(losses[-1]) or ctx.time_left() <= 0:
            break
    return losses


CHECKS = {
    "nonfinite": check_nonfinite,
    "initial_loss": check_initial_loss,
    "batch_independence": check_batch_independence,
    "gradient_flow": check_gradient_flow,
    "dead_units": check_dead_units,
    "update_ratio": check_update_ratio,
    "overfit_batch": check_overfit_batch,
    "input_pipeline": check_input_pipeline,
    "precision": check_precision,
    "learning_rate": check_learning_rate,
    "zero_input": check_zero_input,
}
