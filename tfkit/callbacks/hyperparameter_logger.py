"""Put the optimizer's live hyperparameters (lr, momentum, loss scale, ...) into the logs."""

from __future__ import annotations

import keras
import numpy as np

from tfkit import _validation
from tfkit.callbacks._optimizer_access import base_optimizer, last_used_learning_rate, to_numpy
from tfkit.callbacks.momentum import ScheduledHyperparameter
from tfkit.optimizers import optimizer_chain

__all__ = ["HyperparameterLogger"]

# Attributes looked up anywhere in the optimizer chain, logged under the same key.
# ``loss_scale``/``skipped_steps``: tfkit's LossScaleOptimizer; ``dynamic_scale``:
# Keras' own; the others: a gradient accumulator's window state.
DEFAULT_CHAIN_ATTRIBUTES = (
    "loss_scale",
    "dynamic_scale",
    "skipped_steps",
    "accumulation_steps",
    "micro_step",
    "dropped_micro_batches",
)


def _number(value) -> float | None:
    try:
        array = np.asarray(to_numpy(value))
    except Exception:  # noqa: BLE001 - anything that is not a number is simply not logged
        return None
    if array.shape != () or array.dtype.kind not in "fiub":
        return None
    return float(array)


def _chain_value(optimizer, name):
    """The outermost value of ``name`` in the chain; wrappers may refuse reads before ``build``."""
    for opt in optimizer_chain(optimizer):
        try:
            return getattr(opt, name)
        except (AttributeError, ValueError):
            continue
    return None


@keras.saving.register_keras_serializable(package="tfkit")
class HyperparameterLogger(keras.callbacks.Callback):
    """Log the learning rate actually used, momentum/beta_1, loss scale and skipped steps.

    At each epoch end (and each batch end with ``per_batch=True``) it writes into
    ``logs``:

    * ``learning_rate``: the rate used by the most recent update, i.e. the
      innermost optimizer's schedule at ``iterations - 1`` (including any
      ``ReduceLROnPlateau`` multiplier), or its current value if it is a float;
    * ``momentum`` or ``beta_1``: likewise, following a ``MomentumScheduler``;
    * every attribute of ``chain_attributes`` found on any optimizer of the
      wrapper chain (``inner_optimizer``): by default ``loss_scale`` and
      ``skipped_steps`` (tfkit's ``LossScaleOptimizer``), ``dynamic_scale``
      (Keras' one), ``accumulation_steps``, ``micro_step`` and
      ``dropped_micro_batches`` (``tfkit.optimizers.GradientAccumulator``).

    History, CSVLogger and TensorBoard read the same ``logs`` dict *after*
    this callback only if it comes first: put it before them in
    ``callbacks=[...]`` (Keras appends its own History last, so that one is
    always fine). Each logged value costs one small device-to-host read, so
    ``per_batch`` is off by default.

    Args:
        per_batch: Also write into the per-batch logs. Default False.
        chain_attributes: Attribute names looked up through the optimizer chain.
        prefix: String prepended to every key (e.g. ``"opt/"``). Default ``""``.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import HyperparameterLogger
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
        >>> h = model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0, callbacks=[HyperparameterLogger()])
        >>> round(h.history["learning_rate"][0], 6), round(h.history["momentum"][0], 6)
        (0.1, 0.9)
    """

    def __init__(self, per_batch: bool = False, chain_attributes=DEFAULT_CHAIN_ATTRIBUTES, prefix: str = ""):
        super().__init__()
        if not isinstance(per_batch, bool):
            raise TypeError(f"HyperparameterLogger: `per_batch` must be a bool; received per_batch={per_batch!r}.")
        if (
            isinstance(chain_attributes, str)
            or not hasattr(chain_attributes, "__iter__")
            or not all(isinstance(a, str) for a in chain_attributes)
        ):
            raise TypeError("HyperparameterLogger: `chain_attributes` must be a sequence of attribute names; "
                            f"received chain_attributes={chain_attributes!r}.")
        if not isinstance(prefix, str):
            raise TypeError(f"HyperparameterLogger: `prefix` must be a string; received prefix={prefix!r}.")
        self.per_batch = _validation.check_bool("HyperparameterLogger", "per_batch", per_batch)
        # Without per-batch work, let Keras dispatch batch callbacks asynchronously.
        self.async_safe = not per_batch
        self.chain_attributes = tuple(chain_attributes)
        self.prefix = prefix

    def values(self) -> dict:
        """The current values (what would be written into the logs now)."""
        outer = self.model.optimizer
        inner = base_optimizer(outer)
        last_step = max(int(to_numpy(inner.iterations)) - 1, 0)
        out = {}
        out["learning_rate"] = last_used_learning_rate(inner)
        for name in ("momentum", "beta_1"):
            if hasattr(inner, name):
                value = getattr(inner, name)
                if isinstance(value, ScheduledHyperparameter):
                    value = value.current(last_step)
                out[name] = _number(value)
        for name in self.chain_attributes:
            value = _chain_value(outer, name)
            if value is not None:
                out[name] = _number(value)
        if out.get("loss_scale") is not None:
            out.pop("dynamic_scale", None)  # tfkit's LSO subclasses Keras': same number twice
        return {self.prefix + k: v for k, v in out.items() if v is not None}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.values())

    def on_train_batch_end(self, batch, logs=None):
        if self.per_batch and logs is not None:
            logs.update(self.values())

    def get_config(self) -> dict:
        return {"per_batch": self.per_batch, "chain_attributes": list(self.chain_attributes), "prefix": self.prefix}

    @classmethod
    def from_config(cls, config: dict) -> HyperparameterLogger:
        return cls(**config)
