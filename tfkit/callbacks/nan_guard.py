"""Stop on the first non-finite loss or weight, say which layer produced it, restore good weights."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from tfkit.callbacks._snapshot import DeviceSnapshot

__all__ = ["NaNGuard"]


def _all_finite(tensors) -> tf.Tensor:
    checks = [tf.reduce_all(tf.math.is_finite(tf.cast(t, tf.float32))) for t in tensors]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _is_finite(value) -> bool:
    array = np.asarray(keras.ops.convert_to_numpy(value))
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
        self.restore = bool(restore)
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
        self._snapshot.clear()
        self._check = None

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
        report.update(self.diagnose(*self.diagnosis_data) if self.diagnosis_data is not None else {})
        restored = self.restore and self._snapshot.restore()
        report["restored"] = bool(restored)
        self.report = report
        self.model.stop_training = True
        warnings.warn(self.describe(report), stacklevel=2)

    def diagnose(self, x, y) -> dict:
        """Locate non-finite values for the batch ``(x, y)`` with the current weights.

        Returns a dict with ``input_finite``, ``forward_origin`` (first layer with
        a non-finite output, or ``None``), ``gradient_layers`` and ``gradient_origin``.
        """
        out = {"input_finite": all(_is_finite(t) for t in tf.nest.flatten(x))}
        out["forward_origin"] = None
        for layer, value in self._layer_outputs(x):
            if not all(_is_finite(t) for t in tf.nest.flatten(value)):
                out["forward_origin"] = layer.name
                break
        out["gradient_layers"] = self._nonfinite_gradient_layers(x, y)
        out["gradient_origin"] = out["gradient_layers"][-1] if out["gradient_layers"] else None
        return out

    def _layer_outputs(self, x):
        model = self.model
        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        if isinstance(model, keras.Sequential):
            value = x
            for layer in layers:
                value = layer(value, training=False)
                yield layer, value
            return
        try:
            probe = keras.Model(model.inputs, [layer.output for layer in layers])
        except (AttributeError, ValueError, TypeError):
            return  # subclassed model: no per-layer graph to read
        yield from zip(layers, probe(x, training=False), strict=True)

    def _nonfinite_gradient_layers(self, x, y) -> list[str]:
        model = self.model
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        variables = model.trainable_variables
        grads = tape.gradient(loss, [v.value for v in variables])
        bad = {id(v) for v, g in zip(variables, grads, strict=True) if g is not None and not _is_finite(g)}
        return [layer.name for layer in model.layers
                if any(id(w) in bad for w in layer.trainable_weights)]

    @staticmethod
    def describe(report: dict) -> str:
        parts = [f"NaNGuard: non-finite training state at epoch {report['epoch']}, batch {report['batch']} "
                 f"(loss={report['loss']})."]
        if "forward_origin" in report:
            if not report["input_finite"]:
                parts.append("The diagnosis input itself is non-finite.")
            parts.append(f"First layer with a non-finite output: {report['forward_origin']!r}.")
            parts.append(f"Layers with non-finite gradients: {report['gradient_layers']} "
                         f"(backprop origin: {report['gradient_origin']!r}).")
        else:
            parts.append("Pass diagnosis_data=(x, y) to locate the first layer producing it.")
        parts.append(f"Layers with non-finite weights: {report['weight_layers']}.")
        parts.append("Restored the last good weights and optimizer state; training stopped."
                     if report["restored"] else "Weights NOT restored; training stopped.")
        return " ".join(parts)

    def get_config(self) -> dict:
        return {"monitor": self.monitor, "restore": self.restore}

    @classmethod
    def from_config(cls, config: dict) -> NaNGuard:
        return cls(**config)
