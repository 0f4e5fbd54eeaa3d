"""Log the relative size of each layer's update, ||delta w|| / ||w||, and warn when it is far off."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from tfkit import _validation
from tfkit.callbacks import _monitor
from tfkit.callbacks._snapshot import DeviceSnapshot

__all__ = ["UpdateRatioMonitor"]


@keras.saving.register_keras_serializable(package="tfkit")
class UpdateRatioMonitor(keras.callbacks.Callback):
    """Measure ``||w_after - w_before|| / ||w_before||`` per layer, one update in every ``frequency``.

    Rule of thumb (Karpathy, CS231n "ratio of weights:updates"): around
    ``1e-3`` per update is healthy; much lower suggests a too-small learning
    rate, much higher a too-large one. For each top-level layer with trainable
    weights (its weights taken together as one vector), the ratio of one
    training call is measured every ``frequency`` batches: a device-side copy
    of the weights is taken in ``on_train_batch_begin`` and compared in
    ``on_train_batch_end`` (one compiled reduction, one host read). With
    ``steps_per_execution = s`` one call spans ``s`` updates, so the ratio
    covers ``s`` updates.

    Epoch logs get ``update_ratio/<layer name>``: the mean of that epoch's
    measurements (per-batch logs too with ``per_batch=True``). A warning is
    issued (once per layer per epoch) when a measurement falls outside
    ``[low, high]``. ``self.history`` keeps every measurement.

    Args:
        frequency: Measure one batch in every ``frequency`` (``>= 1``). Default 10.
        low: Warn below this ratio (``> 0``). Default 1e-5 (100x under 1e-3).
        high: Warn above this ratio (``> low``). Default 1e-1 (100x over 1e-3).
        per_batch: Also write the ratios into the measured batches' logs. Default False.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import UpdateRatioMonitor
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="out")])
        >>> model.compile(keras.optimizers.SGD(1e-3), "mse")
        >>> h = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=4, verbose=0,
        ...               callbacks=[UpdateRatioMonitor(frequency=1, low=0, high=1)])
        >>> "update_ratio/out" in h.history
        True
    """

    def __init__(self, frequency: int = 10, low: float = 1e-5, high: float = 1e-1, per_batch: bool = False):
        super().__init__()
        owner = "UpdateRatioMonitor"
        _monitor.check_number(owner, "frequency", frequency, low=1, integer=True)
        _monitor.check_number(owner, "low", low, low=0)
        _monitor.check_number(owner, "high", high, low=low, low_open=True)
        self.frequency = int(frequency)
        self.low = float(low)
        self.high = float(high)
        self.per_batch = _validation.check_bool(owner, "per_batch", per_batch)
        self.history: list[dict] = []
        self._snapshot = DeviceSnapshot("before_update")
        self._measure = None
        self._layers = None
        self._pending = False
        self._epoch_values: dict[str, list[float]] = {}
        self._warned: set[str] = set()
        self._epoch = 0

    def _bind(self):
        self._layers = [layer for layer in self.model.layers if layer.trainable_weights]
        variables = [w for layer in self._layers for w in layer.trainable_weights]
        self._snapshot.bind(variables, self.model)
        groups, start = [], 0
        for layer in self._layers:
            groups.append((start, start + len(layer.trainable_weights)))
            start += len(layer.trainable_weights)
        copies = self._snapshot.copies

        @tf.function(autograph=False)
        def measure():
            ratios = []
            for lo, hi in groups:
                delta = tf.add_n([tf.reduce_sum(tf.square(tf.cast(variables[i].value - copies[i], tf.float32)))
                                  for i in range(lo, hi)])
                norm = tf.add_n([tf.reduce_sum(tf.square(tf.cast(copies[i], tf.float32))) for i in range(lo, hi)])
                # A layer whose weights are all zero (e.g. a fresh bias-only layer) has no ratio.
                ratios.append(tf.where(norm > 0, tf.sqrt(delta) / tf.sqrt(norm), tf.constant(np.nan, tf.float32)))
            return tf.stack(ratios)

        self._measure = measure

    def on_train_begin(self, logs=None):
        self._measure = None
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_values = {}
        self._warned = set()

    def on_train_batch_begin(self, batch, logs=None):
        if batch % self.frequency:
            return
        if self._measure is None:
            self._bind()
        self._snapshot.take()
        self._pending = True

    def on_train_batch_end(self, batch, logs=None):
        if not self._pending:
            return
        self._pending = False
        ratios = dict(zip([layer.name for layer in self._layers], self._measure().numpy().tolist(), strict=True))
        self.history.append({"epoch": self._epoch, "batch": batch, **ratios})
        for name, ratio in ratios.items():
            self._epoch_values.setdefault(name, []).append(ratio)
            if np.isfinite(ratio) and not (self.low <= ratio <= self.high) and name not in self._warned:
                self._warned.add(name)
                direction = "small (learning rate too low?)" if ratio < self.low else "large (learning rate too high?)"
                warnings.warn(
                    f"UpdateRatioMonitor: layer {name!r} update ratio ||dw||/||w|| = {ratio:.3g} at epoch "
                    f"{self._epoch}, batch {batch} is outside [{self.low:g}, {self.high:g}] (~1e-3 is typical): "
                    f"{direction}.", stacklevel=2)
        if self.per_batch and logs is not None:
            logs.update({f"update_ratio/{k}": v for k, v in ratios.items()})

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name, values in self._epoch_values.items():
            logs[f"update_ratio/{name}"] = float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")

    def get_config(self) -> dict:
        return {"frequency": self.frequency, "low": self.low, "high": self.high, "per_batch": self.per_batch}

    @classmethod
    def from_config(cls, config: dict) -> UpdateRatioMonitor:
        return cls(**config)
