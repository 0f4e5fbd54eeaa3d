"""Stop on the first non-finite loss or weight, say which layer produced it, restore good weights."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from tfkit import _validation
from tfkit.callbacks._snapshot import DeviceSnapshot

__all__ = ["NaNGuard"]


def _all_finite(tensors) -> tf.Tensor:
    checks = [tf.reduce_all(tf.math.is_finite(tf.cast(t, tf.float32))) for t in tensors]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _is_finite(value) -> bool:
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return bool(np.all(np.isfinite(array))) if array.dtype.kind in "fc" else True


def _float_weights(variables):
    return [v for v in variables if keras.backend.is_float_dtype(v.dtype)]


@keras.saving.register_keras_serializable(package="tfkit")
class NaNGuard(keras.callbacks.Callback):
    """Stop training cleanly at the first non-finite loss or weight and name its origin.

    After every training batch the guard runs one small compiled check
    (``all(isfinite(loss)) and all(isfinite(w))`` over the model weights and
    optimizer variables). While the check passes, it refreshes a device-side
    snapshot of those variables (``assign``, no host copy). When it fails:

    1. **Diagnosis** (``self.report``, also issued as a warning): layers whose
       weights are non-finite; and, on ``diagnosis_data`` (a batch ``(x, y)``
       you pass, since ``fit`` does not hand batches to callbacks) the **first
       layer, in forward order, whose output is non-finite** (``forward_origin``)
       and the layers whose gradients are non-finite (``gradient_layers``; the
       one nearest the output is ``gradient_origin``, where backpropagation
       first produced a non-finite value).
    2. **Restore**: model weights and optimizer state from the last batch that
       passed the check.
    3. **Stop**: ``model.stop_training = True`` (no exception).

    With ``steps_per_execution = s`` Keras calls batch callbacks once per
    execution, so the check (and the snapshot) happen every ``s`` updates.
    Non-finite gradients that a loss-scale optimizer *skips* leave the weights
    finite and are not a failure. Forward diagnosis needs a model whose layers
    can be read in order (Sequential or Functional); for subclassed models
    only the weight and gradient checks are reported.

    Args:
        diagnosis_data: Optional ``(x, y)`` batch used to locate the origin.
        monitor: Key of the batch logs holding the loss. Default ``"loss"``.
        restore: Restore the last good weights on failure. Default True.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import NaNGuard
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(1e30), "mse")
        >>> x, y = np.full((8, 2), 1e3), np.ones((8, 1))
        >>> guard = NaNGuard(diagnosis_data=(x, y))
        >>> _ = model.fit(x, y, epochs=5, verbose=0, callbacks=[guard])  # doctest: +SKIP
        >>> guard.report["weight_layers"]  # doctest: +SKIP
        ['dense']

    Reference: the NaN-hunting practice of checking ``isfinite`` per layer
    (e.g. PyTorch ``torch.autograd.detect_anomaly``; TF ``tf.debugging.enable_check_numerics``),
    done here only after a failure so training runs at full speed until then.
    """

    def __init__(self, diagnosis_data=None, monitor: str = "loss", restore: bool = True):
        super().__init__()
        if diagnosis_data is not None and not (isinstance(diagnosis_data, (tuple, list)) and len(diagnosis_data) == 2):
            raise TypeError("NaNGuard: `diagnosis_data` must be None or an (x, y) pair; "
                            f"received {type(diagnosis_data).__name__}.")
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"NaNGuard: `monitor` must be a non-empty string; received monitor={monitor!r}.")
        self.diagnosis_data = diagnosis_data
        self.monitor = monitor
        self.restore = _validation.check_bool("NaNGuard", "restore", restore)
        self.report = None
        self._snapshot = DeviceSnapshot("last_good")
        self._check = None
        self._epoch = 0
        self._warned_missing = False

    def _variables(self):
        optimizer_variables = list(getattr(self.model.optimizer, "variables", []) or [])
        return _float_weights(self.model.weights) + optimizer_variables

    def _bind(self):
        variables = self._variables()
        self._snapshot.bind(variables, self.model)
        self._snapshot.clear()
        snapshot = self._snapshot

        @tf.function(autograph=False)
        def check(loss):
            ok = tf.logical_and(_all_finite([loss]), _all_finite([v.value for v in variables]))
            # The snapshot is refreshed only from a state that passed the check.
            tf.cond(ok, lambda: snapshot._copy_fn() or tf.constant(True), lambda: tf.constant(False))
            return ok

        self._check = check
        self._n_variables = len(variables)

    def on_train_begin(self, logs=None):
        self.report = None
        self._bind()
        # The starting point is the first "last good" state (if it is finite).
        if bool(self._check(tf.constant(0.0))):
            self._snapshot.taken.assign(1)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            if not self._warned_missing:
                self._warned_missing = True
                warnings.warn(f"NaNGuard monitors `{self.monitor}`, which is not in the batch logs. "
                              f"Available keys: {sorted(logs)}. Checking weights only.", stacklevel=2)
            loss = tf.constant(0.0)
        else:
            loss = tf.cast(tf.convert_to_tensor(logs[self.monitor]), tf.float32)
        if self._check is None or self._n_variables != len(self._variables()):
            self._bind()
        if bool(self._check(loss)):
            self._snapshot.taken.assign(1)
            return
        self._fail(batch, logs.get(self.monitor))

    def _fail(self, batch, loss):
        report = {"epoch": self._epoch, "batch": batch,
                  "loss": None if loss is None else float(np.asarray(loss))}
        report["weight_layers"] = [
            layer.name for layer in self.model.layers
            if any(not _is_finite(w) for w in layer.weights)
        ]
        restored = bool(self.restore and self._snapshot.restore())
        report["restored"] = restored
        if self.diagnosis_data is not None:
            # Replaying from the last good state shows where the failing step went
            # non-finite; the current (already corrupted) weights would only point
            # at the first layer holding a NaN.
            report.update(self.diagnose(*self.diagnosis_data))
            report["diagnosed_at"] = "last good weights" if restored else "current weights"
        self.report = report
        self.model.stop_training = True
        warnings.warn(self.describe(report), stacklevel=2)

    def diagnose(self, x, y) -> dict:
        """Locate non-finite values for the batch ``(x, y)`` with the current weights.

        Runs the model in inference mode (no BatchNorm statistics updates, no
        dropout) under a gradient tape. Returns a dict with

        * ``input_finite``: whether ``x`` itself is finite;
        * ``forward_origin``: the first layer (forward order) with a non-finite output;
        * ``gradient_layers``: layers whose weight gradients are non-finite;
        * ``gradient_origin``: the layer whose backward pass first produced a
          non-finite gradient (Sequential models: finite gradient at its output,
          non-finite at its input; otherwise the last of ``gradient_layers``).
        """
        model = self.model
        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        out = {"input_finite": all(_is_finite(t) for t in tf.nest.flatten(x))}
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        sequential = isinstance(model, keras.Sequential)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(tf.nest.flatten(x))
            if sequential:
                outputs, value = [], x
                for layer in layers:
                    value = layer(value, training=False)
                    outputs.append(value)
                y_pred = value
            else:
                outputs = self._functional_outputs(x, layers)
                y_pred = model(x, training=False)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        out["forward_origin"] = None
        for layer, value in zip(layers, outputs or [], strict=False):
            if not all(_is_finite(t) for t in tf.nest.flatten(value)):
                out["forward_origin"] = layer.name
                break
        variables = model.trainable_variables
        grads = tape.gradient(loss, [v.value for v in variables])
        bad = {id(v) for v, g in zip(variables, grads, strict=True) if g is not None and not _is_finite(g)}
        out["gradient_layers"] = [layer.name for layer in layers
                                  if any(id(w) in bad for w in layer.trainable_weights)]
        out["gradient_origin"] = out["gradient_layers"][-1] if out["gradient_layers"] else None
        if sequential:
            # Gradient w.r.t. each layer's input and output; walk backwards from the loss.
            activation_grads = tape.gradient(loss, [tf.nest.flatten(x)[0]] + [tf.nest.flatten(o)[0] for o in outputs])
            for i in range(len(layers) - 1, -1, -1):
                g_in, g_out = activation_grads[i], activation_grads[i + 1]
                out_ok = g_out is None or _is_finite(g_out)
                in_bad = g_in is not None and not _is_finite(g_in)
                if out_ok and in_bad:
                    out["gradient_origin"] = layers[i].name
                    break
        del tape
        return out

    def _functional_outputs(self, x, layers):
        try:
            probe = keras.Model(self.model.inputs, [layer.output for layer in layers])
        except (AttributeError, ValueError, TypeError):
            return None  # subclassed model: no per-layer graph to read
        return probe(x, training=False)

    @staticmethod
    def describe(report: dict) -> str:
        parts = [f"NaNGuard: non-finite training state at epoch {report['epoch']}, batch {report['batch']} "
                 f"(loss={report['loss']})."]
        if "forward_origin" in report:
            parts.append(f"Replayed diagnosis_data from the {report['diagnosed_at']}:")
            if not report["input_finite"]:
                parts.append("The diagnosis input itself is non-finite.")
            parts.append(f"First layer with a non-finite output: {report['forward_origin']!r}.")
            parts.append(f"Layers with non-finite gradients: {report['gradient_layers']} "
                         f"(backprop origin: {report['gradient_origin']!r}).")
            if report["forward_origin"] is None and not report["gradient_layers"]:
                parts.append("Forward and gradients are finite there: the update itself overflowed "
                             "(learning rate too large?).")
        else:
            parts.append("Pass diagnosis_data=(x, y) to locate the first layer producing it.")
        parts.append(f"Layers with non-finite weights after the failing step: {report['weight_layers']}.")
        parts.append("Restored the last good weights and optimizer state; training stopped."
                     if report["restored"] else "Weights NOT restored; training stopped.")
        return " ".join(parts)

    def get_config(self) -> dict:
        return {"monitor": self.monitor, "restore": self.restore}

    @classmethod
    def from_config(cls, config: dict) -> NaNGuard:
        return cls(**config)
