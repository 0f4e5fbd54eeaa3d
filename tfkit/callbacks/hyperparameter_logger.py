"""Put the optimizer's live hyperparameters (lr, momentum, loss scale, ...) into the logs."""

from __future__ import annotations

import keras
import numpy as np

from tfkit import _validation
from tfkit.optimizers.hyperparameters import (
    HyperparameterState,
    control,
    install_for,
    resolve_optimizer,
)
from tfkit.optimizers.tree import walk

__all__ = ["ACCUMULATOR_ATTRIBUTES", "DEFAULT_CHAIN_ATTRIBUTES", "HyperparameterLogger"]

# Attributes looked up anywhere in the optimizer chain, logged under the same key.
# ``loss_scale``/``skipped_steps``: tfkit's LossScaleOptimizer; ``dynamic_scale``:
# Keras' own. A gradient accumulator's window state is internal bookkeeping,
# not a metric (Keras' progress bar would print it): opt in with
# ``chain_attributes=DEFAULT_CHAIN_ATTRIBUTES + ACCUMULATOR_ATTRIBUTES``.
DEFAULT_CHAIN_ATTRIBUTES = ("loss_scale", "dynamic_scale", "skipped_steps")
ACCUMULATOR_ATTRIBUTES = ("accumulation_steps", "micro_step", "dropped_micro_batches")


def _to_numpy(value):
    """Host value of a tensor/variable/number (``.numpy()`` avoids NumPy 2's ``__array__`` copy warning)."""
    return value.numpy() if hasattr(value, "numpy") else keras.ops.convert_to_numpy(value)


def learning_rate_logs(groups: dict[str, HyperparameterState]) -> dict[str, float]:
    """``learning_rate`` and ``momentum``/``beta_1`` each group applies at its current step.

    One group: keys ``learning_rate`` and ``momentum`` (or ``beta_1``); several
    (a ``MultiOptimizer``): ``learning_rate/<group>`` and ``momentum/<group>``.
    """
    out = {}
    single = len(groups) == 1
    for name, state in groups.items():
        suffix = "" if single else f"/{name}"
        out["learning_rate" + suffix] = state.learning_rate()
        key = state.momentum_key()
        if key is not None:
            value = state.momentum()
            if value is not None:
                out[key + suffix] = value
    return out


def _number(value) -> float | None:
    try:
        array = np.asarray(_to_numpy(value))
    except Exception:  # noqa: BLE001 - anything that is not a number is simply not logged
        return None
    if array.shape != () or array.dtype.kind not in "fiub":
        return None
    return float(array)


def _chain_value(optimizer, name):
    """The outermost value of ``name`` in the tree; wrappers may refuse reads before ``build``."""
    for opt in walk(optimizer):
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

    * ``learning_rate``: the rate the optimizer applies at its current step
      (``optimizer.learning_rate`` of each leaf: its schedule at
      ``iterations``, times the plateau multiplier and the epoch scale of its
      :class:`tfkit.optimizers.HyperparameterState`); on a ``MultiOptimizer``,
      one key ``learning_rate/<group>`` per sub-optimizer name;
    * ``momentum`` or ``beta_1`` (``momentum/<group>``...): likewise, following
      a ``MomentumScheduler``, else the optimizer's float;
    * every attribute of ``chain_attributes`` found on any optimizer of the
      tree: by default ``loss_scale`` and ``skipped_steps`` (tfkit's
      ``LossScaleOptimizer``) and ``dynamic_scale`` (Keras' one). A
      ``GradientAccumulator``'s ``accumulation_steps``, ``micro_step`` and
      ``dropped_micro_batches`` are logged only when asked for
      (``chain_attributes=DEFAULT_CHAIN_ATTRIBUTES + ACCUMULATOR_ATTRIBUTES``).

    Every reader evaluates the same expression, so they agree whatever the
    callback order: History, CSVLogger, and Keras' ``TensorBoard`` (which
    reads ``optimizer.learning_rate`` itself). Put this logger before
    CSVLogger so that the row includes its keys. Each logged value costs one
    small device-to-host read, so ``per_batch`` is off by default.

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

    def on_train_begin(self, logs=None):
        install_for("HyperparameterLogger", self.model)

    def values(self) -> dict:
        """The current values (what would be written into the logs now)."""
        outer = resolve_optimizer("HyperparameterLogger", self.model)
        out = learning_rate_logs(control(outer))
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
