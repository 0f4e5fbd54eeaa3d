"""Evaluate and save Keras' ScheduleFreeAdamW models at their evaluation weights ``x``."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals, _validation
from tfkit.optimizers.hyperparameters import resolve_optimizer
from tfkit.optimizers.tree import leaves

__all__ = ["ScheduleFreeEvaluation", "schedule_free_available"]

_OWNER = "ScheduleFreeEvaluation"
FINAL_WEIGHTS = ("evaluation", "current")


def schedule_free_available() -> bool:
    """Whether this Keras has ``keras.optimizers.ScheduleFreeAdamW`` (Keras >= 3.14)."""
    return hasattr(keras.optimizers, "ScheduleFreeAdamW")


def _strategy_scope(model):
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy.scope()


@keras.saving.register_keras_serializable(package="tfkit")
class ScheduleFreeEvaluation(keras.callbacks.Callback):
    """Swap a ``ScheduleFreeAdamW`` model to its evaluation weights ``x`` for evaluate and saving.

    Keras' ``ScheduleFreeAdamW`` trains the model at ``y``, an interpolation of
    the iterate ``z`` (its ``momentum`` slot) and the average ``x`` its
    docstring says is "used for evaluation", but offers no switch to ``x``.
    From ``y = (1 - beta_1) z + beta_1 x``::

        x = (y - (1 - beta_1) * z) / beta_1

    computed per trainable weight from the leaf optimizer's slots. While
    swapped in, the training weights ``y`` are held in one device copy (created
    once) and come back bit for bit. Other weights (BatchNorm statistics) are
    left as they are.

    ``swap_on_evaluate`` swaps ``x`` in for validation and ``evaluate`` calls
    that receive this callback; ``swap_on_epoch`` keeps it in the model during
    the ``on_epoch_end`` of later callbacks (``ModelCheckpoint`` saves ``x``);
    ``final_weights="evaluation"`` leaves ``x`` in the model when ``fit`` ends
    (call ``fit`` again only after :meth:`swap_out`); ``with
    callback.evaluation_weights(): model.save(...)`` for anything else.

    Args:
        swap_on_evaluate: Validation and ``evaluate`` use ``x``. Default True.
        swap_on_epoch: ``x`` in the model during later callbacks'
            ``on_epoch_end``. Default False.
        final_weights: ``"current"`` (default, ``y``) or ``"evaluation"`` (``x``).

    Example:
        >>> import keras, numpy as np, tfkit
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.ScheduleFreeAdamW(0.01), "mse")
        >>> sf = tfkit.callbacks.ScheduleFreeEvaluation()
        >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), callbacks=[sf], verbose=0)
        >>> with sf.evaluation_weights():
        ...     x_weights = model.get_weights()
        >>> [w.shape for w in x_weights]
        [(2, 1), (1,)]

    Reference: Defazio et al., "The Road Less Scheduled" (2024); optax's
    ``schedule_free_eval_params``.
    """

    def __init__(
        self,
        swap_on_evaluate: bool = True,
        swap_on_epoch: bool = False,
        final_weights: str = "current",
    ):
        super().__init__()
        self.swap_on_evaluate = _validation.check_bool(_OWNER, "swap_on_evaluate", swap_on_evaluate)
        self.swap_on_epoch = _validation.check_bool(_OWNER, "swap_on_epoch", swap_on_epoch)
        self.final_weights = _validation.check_choice(
            _OWNER, "final_weights", final_weights, FINAL_WEIGHTS
        )
        self._held = None
        self._swapped = False
        self._bound = None
        self._swapped_for_test = False

    def get_config(self) -> dict:
        return {
            "swap_on_evaluate": self.swap_on_evaluate,
            "swap_on_epoch": self.swap_on_epoch,
            "final_weights": self.final_weights,
        }

    @classmethod
    def from_config(cls, config: dict) -> ScheduleFreeEvaluation:
        return cls(**config)

    def _bind(self) -> None:
        if not schedule_free_available():
            raise ValueError(
                f"{_OWNER}: this Keras ({keras.__version__}) has no ScheduleFreeAdamW "
                "(added in Keras 3.14)."
            )
        optimizer = resolve_optimizer(_OWNER, self.model)
        pairs = []
        for leaf in leaves(optimizer):
            if not isinstance(leaf, keras.optimizers.ScheduleFreeAdamW):
                raise ValueError(
                    f"{_OWNER}: every leaf optimizer must be a keras.optimizers.ScheduleFreeAdamW; "
                    f"received {type(leaf).__name__} ({leaf.name!r})."
                )
            if not leaf.built:
                leaf.build(self.model.trainable_variables)
            for v in self.model.trainable_variables:
                try:
                    z = _internals.schedule_free_z(leaf, v)
                except (KeyError, ValueError, IndexError):
                    continue  # a variable another group trains
                pairs.append((leaf, v, z))
        key = tuple(id(v) for _, v, _ in pairs)
        if self._bound is not None and self._bound[0] == key:
            return
        with _strategy_scope(self.model):
            held = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for _, v, _ in pairs]
        plain = [(leaf, v.value, z.value, h) for (leaf, v, z), h in zip(pairs, held, strict=True)]

        @tf.function(autograph=False)
        def swap_in():
            for leaf, y, z, h in plain:
                b = tf.cast(keras.ops.convert_to_tensor(leaf.beta_1), y.dtype)
                current = y.read_value()
                h.assign(current)
                y.assign((current - (1.0 - b) * z.read_value()) / b)
            return tf.constant(True)

        @tf.function(autograph=False)
        def swap_out():
            for _, y, _, h in plain:
                y.assign(h.read_value())
            return tf.constant(True)

        self._bound = (key, swap_in, swap_out)

    def swap_in(self) -> bool:
        """Put ``x`` in the model (no-op if already there); True if it swapped."""
        if self._swapped:
            return False
        self._bind()
        self._bound[1]()
        self._swapped = True
        return True

    def swap_out(self) -> bool:
        """Put the training weights ``y`` back; True if it swapped."""
        if not self._swapped:
            return False
        self._bound[2]()
        self._swapped = False
        return True

    @contextlib.contextmanager
    def evaluation_weights(self):
        """Context manager: ``x`` in the model inside the block, ``y`` after."""
        swapped_here = self.swap_in()
        try:
            yield self.model
        finally:
            if swapped_here:
                self.swap_out()

    def get_evaluation_weights(self) -> list[np.ndarray]:
        """``x`` aligned with ``model.get_weights()`` (non-trainable weights as they are)."""
        with self.evaluation_weights():
            return self.model.get_weights()

    def on_train_begin(self, logs=None):
        self.swap_out()
        self._bind()

    def on_epoch_begin(self, epoch, logs=None):
        self.swap_out()

    def on_train_batch_begin(self, batch, logs=None):
        if self.swap_on_epoch:
            self.swap_out()

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch:
            self.swap_in()

    def on_test_begin(self, logs=None):
        if self.swap_on_evaluate and self.model is not None:
            self._swapped_for_test = self.swap_in()

    def on_test_end(self, logs=None):
        if self._swapped_for_test:
            self.swap_out()
            self._swapped_for_test = False

    def on_train_end(self, logs=None):
        self.swap_out()
        if self.final_weights == "evaluation":
            self.swap_in()
