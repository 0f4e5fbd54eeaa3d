"""Find the mixed-precision mistakes in a model that a user should fix.

``audit(model)`` returns a list of :class:`Finding` (empty when there is
nothing to fix). It checks, for a built model:

* ``half_output``: a model output is float16/bfloat16. Softmax, log-probabilities
  and the loss must be computed in float32: float16 overflows above 65504 and
  rounds probabilities to ~3 decimal digits. Fix: give the last layer
  ``dtype="float32"`` (or append ``keras.layers.Activation("linear", dtype="float32")``).
* ``half_softmax``: a softmax (``Softmax`` layer or ``activation="softmax"``) is
  computed in 16 bits anywhere in the model's own layers (not only at the output).
* ``half_loss``: a compiled ``keras.losses.Loss`` has a 16-bit ``dtype``.
* ``half_variable``: a float variable is float16/bfloat16 (e.g. a layer built
  with ``dtype="float16"`` instead of ``"mixed_float16"``): updates smaller than
  the 16-bit resolution of the weight are lost, there is no float32 master copy.
* ``not_multiple_of_8``: a 16-bit ``Dense``/convolution/recurrent layer whose
  ``units``/``filters`` or input features are not multiples of 8, or a
  ``batch_size`` that is not: tensor cores need every GEMM dimension
  (M, N, K) to be a multiple of 8 for float16/bfloat16 (NVIDIA, "Deep Learning
  Performance: Matrix Multiplication", Tensor Core requirements). Float32 layers
  are not reported (no tensor cores in play).
* ``no_loss_scaling``: float16 layers, a compiled optimizer, and no
  ``LossScaleOptimizer`` in its ``inner_optimizer`` chain (e.g. compiled with
  ``auto_scale_loss=False``): small gradients underflow to zero.
* ``unneeded_loss_scaling``: a ``LossScaleOptimizer`` on a model without float16
  layers (bfloat16 and float32 keep float32's exponent range).
* ``unbounded_loss_scale``: Keras' own ``LossScaleOptimizer`` (which ``compile``
  adds under ``"mixed_float16"``): its scale has no bounds and its skipped steps
  are invisible; ``tfkit.precision.LossScaleOptimizer`` fixes both.

Nested functional/Sequential models are walked; the internals of built-in
layers (e.g. ``MultiHeadAttention``'s softmax) are Keras' responsibility and are
not reported.
"""

from __future__ import annotations

import dataclasses

import keras

from tfkit import _internals
from tfkit.optimizers import optimizer_chain

__all__ = ["Finding", "audit"]

_HALF = ("float16", "bfloat16")
_SOFTMAX_NAMES = ("softmax", "log_softmax")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found by :func:`audit`.

    Attributes:
        layer: name of the layer (or model, for model-wide findings) concerned.
        problem: what is wrong and why it matters.
        fix: what to change.
        code: a stable identifier of the check (``"half_output"``, ...).
    """

    layer: str
    problem: str
    fix: str
    code: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.layer}: {self.problem} Fix: {self.fix}"


def audit(model: keras.Model, batch_size: int | None = None) -> list[Finding]:
    """Return the mixed-precision findings for ``model`` (see the module docstring).

    Args:
        model: a built ``keras.Model`` (functional, Sequential or subclassed);
            compile it first to have the loss and optimizer checked too.
        batch_size: the training batch size, checked for being a multiple of 8
            when the model computes in 16 bits. ``None`` skips that check.

    Returns:
        A list of :class:`Finding`, in model order; empty when nothing needs fixing.

    Example:
        >>> import keras
        >>> from tfkit.precision import audit, set_policy
        >>> with set_policy("mixed_float16"):
        ...     inputs = keras.Input((64,))
        ...     hidden = keras.layers.Dense(64, activation="relu")(inputs)
        ...     outputs = keras.layers.Dense(10, activation="softmax", name="probs")(hidden)
        ...     model = keras.Model(inputs, outputs)
        >>> [(f.layer, f.code) for f in audit(model)]
        [('probs', 'half_output'), ('probs', 'not_multiple_of_8')]
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model. Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive integer or None. Received: {batch_size!r}"
        )
    if not model.built:
        raise ValueError(
            f"audit() needs a built model; {model.name!r} is not built. Call "
            "model.build(input_shape) or run it on a batch first."
        )
    layers = _user_layers(model)
    findings: list[Finding] = []
    output_layers = _check_outputs(model, findings)
    for layer in layers:
        if layer.name not in output_layers:
            _check_softmax(layer, findings)
        _check_tensor_core_shapes(layer, findings)
    _check_variables(model, findings)
    sixteen_bit = {_compute_dtype(layer) for layer in layers} & set(_HALF)
    if batch_size is not None and sixteen_bit and batch_size % 8:
        findings.append(
            Finding(
                model.name,
                f"batch_size={batch_size} is not a multiple of 8; the batch is a GEMM "
                "dimension, so 16-bit tensor cores are not fully used.",
                f"use batch_size={_round_up(batch_size)} (or another multiple of 8).",
                "not_multiple_of_8",
            )
        )
    _check_loss(model, findings)
    _check_optimizer(model, "float16" in sixteen_bit, findings)
    return findings


def _user_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers of ``model`` and of nested models, not the internals of other layers."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_user_layers(layer))
    return out


def _compute_dtype(layer) -> str:
    return keras.backend.standardize_dtype(layer.compute_dtype)


def _round_up(n: int) -> int:
    return -(-n // 8) * 8


def _output_tensors(model: keras.Model):
    try:
        return list(keras.tree.flatten(model.outputs))
    except (AttributeError, ValueError):
        pass
    shapes = _internals.build_shapes(model)
    if len(shapes) != 1:
        return []  # cannot trace a subclassed model without a single known input shape
    (shape,) = shapes.values()
    try:
        spec = model.compute_output_spec(keras.KerasTensor(shape, dtype="float32"))
    except Exception:  # a model that cannot be traced symbolically: skip, don't guess
        return []
    return list(keras.tree.flatten(spec))


def _check_outputs(model: keras.Model, findings: list[Finding]) -> set[str]:
    flagged = set()
    for tensor in _output_tensors(model):
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype not in _HALF:
            continue
        history = _internals.keras_history(tensor)
        layer = history.operation if history is not None else model
        what = "softmax output" if _is_softmax(layer) else "output"
        findings.append(
            Finding(
                layer.name,
                f"model {what} is computed in {dtype}; the probabilities and the loss "
                f"then carry 16-bit rounding{' and overflow above 65504' if dtype == 'float16' else ''}.",
                f"create {layer.name!r} with dtype='float32', or append "
                "keras.layers.Activation('linear', dtype='float32') as the final layer.",
                "half_output",
            )
        )
        flagged.add(layer.name)
    return flagged


def _is_softmax(layer) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) in _SOFTMAX_NAMES


def _check_softmax(layer, findings: list[Finding]) -> None:
    dtype = _compute_dtype(layer)
    if dtype in _HALF and _is_softmax(layer):
        findings.append(
            Finding(
                layer.name,
                f"softmax computed in {dtype}: exp() overflows float16 and small "
                "probabilities lose precision.",
                f"create {layer.name!r} with dtype='float32' (or split the softmax "
                "into its own keras.layers.Activation('softmax', dtype='float32')).",
                "half_softmax",
            )
        )


def _check_tensor_core_shapes(layer, findings: list[Finding]) -> None:
    if _compute_dtype(layer) not in _HALF:
        return
    problems = []
    for attr in ("units", "filters"):
        value = getattr(layer, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value % 8:
            problems.append((f"{attr}={value}", f"{attr}={_round_up(value)}"))
    kernel = getattr(layer, "kernel", None)
    if (
        (isinstance(layer, keras.layers.Dense) or hasattr(layer, "filters"))
        and kernel is not None
        and len(kernel.shape) >= 2
    ):
        fan_in = kernel.shape[-2]
        if fan_in % 8:
            problems.append(
                (f"{fan_in} input features", f"{_round_up(fan_in)} input features (pad the input)")
            )
    if problems:
        findings.append(
            Finding(
                layer.name,
                f"{' and '.join(p for p, _ in problems)} not a multiple of 8: 16-bit "
                "tensor cores need multiples of 8 in every GEMM dimension.",
                f"use {' and '.join(f for _, f in problems)}.",
                "not_multiple_of_8",
            )
        )


def _check_variables(model: keras.Model, findings: list[Finding]) -> None:
    for variable in model.weights:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if dtype not in _HALF:
            continue
        layer_name = variable.path.rsplit("/", 1)[0] if "/" in variable.path else model.name
        mixed = f"mixed_{dtype}"
        findings.append(
            Finding(
                layer_name,
                f"variable {variable.path!r} is stored in {dtype}: updates smaller than its "
                "16-bit resolution are lost (no float32 master weights).",
                f"create the layer with dtype={mixed!r} (16-bit compute, float32 variables) "
                f"instead of {dtype!r}.",
                "half_variable",
            )
        )


def _check_loss(model: keras.Model, findings: list[Finding]) -> None:
    loss = getattr(model, "loss", None)
    if loss is None:
        return
    for item in keras.tree.flatten(loss):
        if not isinstance(item, keras.losses.Loss):
            continue  # strings and functions become float32 Keras losses
        dtype = keras.backend.standardize_dtype(item.dtype)
        if dtype in _HALF:
            findings.append(
                Finding(
                    model.name,
                    f"loss {item.name!r} is computed in {dtype}.",
                    f"construct {type(item).__name__} without dtype (float32 default) "
                    "or with dtype='float32'.",
                    "half_loss",
                )
            )


def _check_optimizer(model: keras.Model, has_float16: bool, findings: list[Finding]) -> None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return
    chain = list(optimizer_chain(optimizer))
    scalers = [o for o in chain if isinstance(o, keras.optimizers.LossScaleOptimizer)]
    if has_float16 and not scalers:
        findings.append(
            Finding(
                model.name,
                "float16 layers are trained without loss scaling: gradients below "
                "~6e-8 underflow to zero.",
                "compile with tfkit.precision.wrap(optimizer): a bounded "
                "tfkit.precision.LossScaleOptimizer under mixed_float16.",
                "no_loss_scaling",
            )
        )
    if scalers and not has_float16:
        findings.append(
            Finding(
                model.name,
                "a LossScaleOptimizer is used but no layer computes in float16; "
                "bfloat16/float32 keep float32's exponent range and need no loss scaling.",
                "compile with the inner optimizer directly.",
                "unneeded_loss_scaling",
            )
        )
    if scalers and has_float16 and not any(hasattr(o, "skipped_steps") for o in scalers):
        findings.append(
            Finding(
                model.name,
                "Keras' LossScaleOptimizer has no bounds on the loss scale and does not "
                "count skipped steps, so neither can be logged.",
                "compile with tfkit.precision.wrap(optimizer, min_scale=..., max_scale=...) "
                "(tfkit.precision.LossScaleOptimizer): bounded, skipped steps counted.",
                "unbounded_loss_scale",
            )
        )
