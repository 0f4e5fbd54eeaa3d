"""Detect loss spikes inside the train step; drop the update, or roll back to good weights."""

from __future__ import annotations

import logging
import warnings
import weakref

import keras
import tensorflow as tf

from tfkit import _internals, _validation
from tfkit.callbacks._snapshot import DeviceSnapshot
from tfkit.callbacks._state import CallbackState
from tfkit.optimizers.hyperparameters import control, install_for, resolve_optimizer
from tfkit.optimizers.tree import optimizer_chain

__all__ = ["SpikeGuard"]

POLICIES = ("skip", "rollback")
_OWNER = "SpikeGuard"
_log = logging.getLogger("tfkit")
# model -> the guard its train step consults (set by tfkit.training.install / TrainStep).
_installed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_step(model, guard) -> None:
    """Record that ``model``'s train step consults ``guard`` (None: no guard)."""
    if guard is None:
        _installed.pop(model, None)
    else:
        _installed[model] = guard


def installed_guard(model):
    """The guard ``model``'s train step consults, or None."""
    try:
        return _installed.get(model)
    except TypeError:
        return None


def _loss_scaled(optimizer) -> bool:
    """Whether a loss-scale optimizer in the chain skips non-finite gradients itself."""
    # Keras' and tfkit's (a subclass); ``dynamic_scale`` exists only once built.
    return any(
        isinstance(opt, keras.optimizers.LossScaleOptimizer) or hasattr(opt, "dynamic_scale")
        for opt in optimizer_chain(optimizer)
    )


def _squared_norm(grads) -> tf.Tensor:
    terms = [tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads if g is not None]
    return tf.add_n(terms) if terms else tf.constant(0.0)


@keras.saving.register_keras_serializable(package="tfkit")
class SpikeGuard(keras.callbacks.Callback):
    """Catch loss spikes inside the train step: drop that update, or roll back and slow down.

    **Detection** (in-graph, per micro-batch, before the optimizer applies it).
    For a watched value ``x`` (the batch loss, and with ``gradient_norm=True``
    also the global gradient norm, unscaled), with ``m`` and ``v`` the
    exponential moving mean and variance of the accepted values so far::

        spike  =  not isfinite(x)
               or (n >= warmup_steps
                   and x - m > threshold * sqrt(v)
                   and x - m > (min_ratio - 1) * |m|)
        accepted x:  d = x - m;  m <- m + (1 - decay) d;  v <- decay (v + (1 - decay) d**2)

    (the first accepted value sets ``m = x, v = 0``; no value before it is a
    spike unless non-finite; ``m`` and ``v`` are kept in float64). A spike must be both far
    outside the recent spread and ``min_ratio`` times the recent level, so
    neither noisy small batches nor a loss near zero raise alarms. Spikes never
    enter ``m`` and ``v``. A non-finite *gradient* under a loss-scale
    optimizer is not a spike: the loss scaler skips that step itself (it is
    counted there, not here). The defaults (``threshold=8``, ``min_ratio=3``,
    ``decay=0.98``, ``warmup_steps=20``) raised no alarm on any of the healthy
    set-ups of tfkit's doctor tests; a 10x loss raises one.

    **Policies.**

    * ``"skip"`` drops the update of a spiking batch inside the step
      (``tf.cond`` around ``optimizer.apply``: weights, slots and
      ``iterations`` unchanged); no host transfer per step.
    * ``"rollback"`` also restores the last *snapshot* of the weights and
      optimizer state (a device copy refreshed every ``snapshot_every``
      accepted updates; the memory of one more model plus optimizer state),
      multiplies every leaf's learning rate by ``factor`` through the control
      plane (``tfkit.optimizers.control``; the reduction persists), and
      continues with the next batch: the batches since the snapshot are not
      replayed. After ``max_rollbacks`` rollbacks training stops
      (``model.stop_training``) with a warning saying so.

    **Where it runs.** The check sits between the gradients and
    ``optimizer.apply``, which plain ``model.fit`` does not expose: build the
    step with ``tfkit.training.install(model, spike_guard=guard)`` (then pass
    the guard in ``fit``'s callbacks too) or
    ``tfkit.training.TrainStep(..., spike_guard=guard)`` in a custom loop.
    Plain ``fit`` without ``install`` is refused in ``on_train_begin`` with a
    message saying so. Under a ``tf.distribute`` strategy all replicas decide
    together on the global mean loss (and the root mean square of the
    replicas' local gradient norms).

    **Events.** Counters in ``self.state`` (``spikes``, ``skipped``,
    ``rollbacks``; a ``tf.Module``, so ``BackupAndRestore(...,
    callbacks=[guard])`` carries them, with the statistics and the snapshot).
    Each epoch's logs get ``spikes``, ``skipped_updates`` and ``rollbacks``
    (Keras' ``TensorBoard`` writes them when it comes after this callback).

    Args:
        policy: ``"skip"`` (default) or ``"rollback"``.
        threshold: Standard deviations above the moving mean. Default 8.
        min_ratio: And at least this multiple of the moving mean (> 1). Default 3.
        decay: Decay of the moving mean and variance, in ``(0, 1)``. Default 0.98.
        warmup_steps: Finite accepted values (of each watched quantity) before
            spikes are judged; non-finite values always are. Default 20.
        gradient_norm: Also watch the global gradient norm. Default False.
        factor: Learning-rate multiplier per rollback, in ``(0, 1]``. Default 0.5.
        max_rollbacks: Rollbacks before training stops, >= 1. Default 3.
        snapshot_every: Accepted updates between snapshots (rollback), >= 1.
            Default 50.

    Example:
        >>> import keras, numpy as np, tfkit
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.01), "mse")
        >>> guard = tfkit.callbacks.SpikeGuard("skip", warmup_steps=3)
        >>> model = tfkit.training.install(model, spike_guard=guard)
        >>> x, y = np.ones((16, 2), "float32"), np.ones((16, 1), "float32")
        >>> y[9] = 1e4  # one batch (of 1) with a huge loss
        >>> _ = model.fit(x, y, batch_size=1, shuffle=False, callbacks=[guard], verbose=0)
        >>> guard.state.get("spikes"), int(model.optimizer.iterations)
        (1, 15)

    Reference: Lightning's ``SpikeDetection`` (detects, raises); optax's
    ``skip_large_updates`` (drops one update); Chowdhery et al., "PaLM" (2022),
    section 5.1 (restart from an earlier checkpoint, skip the batches).
    """

    def __init__(
        self,
        policy: str = "skip",
        threshold: float = 8.0,
        min_ratio: float = 3.0,
        decay: float = 0.98,
        warmup_steps: int = 20,
        gradient_norm: bool = False,
        factor: float = 0.5,
        max_rollbacks: int = 3,
        snapshot_every: int = 50,
    ):
        super().__init__()
        self.policy = _validation.check_choice(_OWNER, "policy", policy, POLICIES)
        self.threshold = _validation.check_float(
            _OWNER, "threshold", threshold, low=0.0, float_dtype="float32"
        )
        self.min_ratio = _validation.check_float(
            _OWNER, "min_ratio", min_ratio, low=1.0, low_open=True, float_dtype="float32"
        )
        self.decay = _validation.check_float(
            _OWNER, "decay", decay, low=0.0, low_open=True, high=1.0, high_open=True
        )
        self.warmup_steps = _validation.check_int(_OWNER, "warmup_steps", warmup_steps, low=0)
        self.gradient_norm = _validation.check_bool(_OWNER, "gradient_norm", gradient_norm)
        self.factor = _validation.check_float(
            _OWNER, "factor", factor, low=0.0, low_open=True, high=1.0
        )
        self.max_rollbacks = _validation.check_int(_OWNER, "max_rollbacks", max_rollbacks, low=1)
        self.snapshot_every = _validation.check_int(
            _OWNER, "snapshot_every", snapshot_every, low=1
        )
        self.state = CallbackState(
            "spike_guard",
            accepted=(0, tf.int64),
            loss_count=(0, tf.int64),
            loss_mean=(0.0, tf.float64),
            loss_var=(0.0, tf.float64),
            norm_count=(0, tf.int64),
            norm_mean=(0.0, tf.float64),
            norm_var=(0.0, tf.float64),
            spikes=(0, tf.int64),
            skipped=(0, tf.int64),
            rollbacks=(0, tf.int64),
            since_snapshot=(0, tf.int64),
        )
        self.state.snapshot = DeviceSnapshot("last_good")
        self._bound = None  # (model, optimizer) the gate was bound to
        self._knobs = []
        self._stopped = False
        self.stop_message = None

    def get_config(self) -> dict:
        return {
            "policy": self.policy,
            "threshold": self.threshold,
            "min_ratio": self.min_ratio,
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "gradient_norm": self.gradient_norm,
            "factor": self.factor,
            "max_rollbacks": self.max_rollbacks,
            "snapshot_every": self.snapshot_every,
        }

    @classmethod
    def from_config(cls, config: dict) -> SpikeGuard:
        return cls(**config)

    # -- binding (before the step is traced) ---------------------------------
    def bind(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        """Prepare the in-graph state for ``model`` trained by ``optimizer`` (idempotent).

        ``TrainStep`` and ``fit`` (through ``on_train_begin``) call it; the step
        must be traced after it.
        """
        if self._bound is not None and self._bound[0] is model and self._bound[1] is optimizer:
            return
        self._bound = (model, optimizer)
        self._scaled = _loss_scaled(optimizer)
        if self.policy == "rollback":
            states = control(optimizer)
            self._knobs = [s.learning_rate_multiplier for s in states.values()]
            if not optimizer.built:
                optimizer.build(model.trainable_variables)
            variables = [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]
            self.state.snapshot.bind(variables + list(optimizer.variables), model)
            if not int(self.state.snapshot.taken.numpy()):
                self.state.snapshot.take()

    def _moments(self, prefix):
        state = self.state
        return tuple(getattr(state, f"{prefix}_{k}") for k in ("count", "mean", "var"))

    def _judge(self, x, prefix, non_finite_is_spike=True):
        """(spike?, update-statistics function) for the watched value ``x``.

        float64 statistics: the square of a float32 loss never overflows them.
        """
        x = tf.cast(x, tf.float64)
        count, mean, var = self._moments(prefix)
        m, v = mean.read_value(), var.read_value()
        finite = tf.math.is_finite(x)
        d = x - m
        # No statistics before the first accepted value: it is judged only for finiteness.
        judged = count.read_value() >= max(1, self.warmup_steps)
        far = tf.logical_and(d > self.threshold * tf.sqrt(v), d > (self.min_ratio - 1.0) * tf.abs(m))
        spike = tf.logical_or(tf.logical_and(judged, far), tf.logical_not(finite))
        if not non_finite_is_spike:
            spike = tf.logical_and(spike, finite)

        def update():
            first = count.read_value() == 0
            safe = tf.where(finite, d, tf.zeros_like(d))
            new_m = tf.where(first, x, m + (1.0 - self.decay) * safe)
            new_v = tf.where(
                first, tf.zeros_like(v), self.decay * (v + (1.0 - self.decay) * tf.square(safe))
            )
            # A non-finite value that is not a spike (a loss-scaler skip) leaves them alone.
            mean.assign(tf.where(finite, new_m, m))
            var.assign(tf.where(finite, new_v, v))
            count.assign_add(tf.cast(finite, tf.int64))

        return spike, update

    def _decide(self, loss, squared_norm):
        """In-graph: is this batch a spike? Updates the statistics and counters."""
        spike, updates = self._judge(loss, "loss")
        updates = [updates]
        if self.gradient_norm:
            norm_spike, norm_update = self._judge(
                tf.sqrt(squared_norm), "norm", non_finite_is_spike=not self._scaled
            )
            spike = tf.logical_or(spike, norm_spike)
            updates.append(norm_update)

        def accept():
            for update in updates:
                update()
            self.state.accepted.assign_add(1)
            return tf.constant(True)

        def reject():
            self.state.spikes.assign_add(1)
            self.state.skipped.assign_add(1)
            return tf.constant(False)

        return tf.cond(spike, reject, accept)

    # -- the gate ------------------------------------------------------------
    def gate(self, loss, grads, apply_fn, optimizer, *extra) -> None:
        """Run ``apply_fn(grads, *extra)`` unless this batch is a spike (in a replica context).

        ``loss`` is the replica's loss (divided by the number of replicas, as
        Keras computes it); ``grads`` the gradients of ``optimizer.scale_loss(loss)``;
        ``extra`` per-replica values ``apply_fn`` needs (passed through the merge).
        """
        scale = tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        replica = tf.distribute.get_replica_context()
        if replica is None or _internals.strategy_supports_no_merge_call():
            squared = _squared_norm(grads) / tf.square(scale) if self.gradient_norm else tf.constant(0.0)
            ok = self._decide(loss, squared)

            def apply_one():
                apply_fn(grads, *extra)
                return self._after_update()

            tf.cond(ok, apply_one, self._on_spike)
            return

        def cross_replica(distribution, loss, grads, *extra):
            total = distribution.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            squared = tf.constant(0.0)
            if self.gradient_norm:
                local = distribution.extended.call_for_each_replica(_squared_norm, args=(grads,))
                squared = distribution.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
                squared = squared / tf.square(scale)
            ok = self._decide(total, squared)

            def apply_all():
                distribution.extended.call_for_each_replica(apply_fn, args=(grads, *extra))
                return self._after_update()

            # The cond runs in cross-replica context: apply's merge_call cannot sit in
            # a replica-context cond (as in tfkit's LossScaleOptimizer).
            tf.cond(ok, apply_all, self._on_spike)

        replica.merge_call(cross_replica, args=(loss, grads, *extra))

    def _on_spike(self):
        if self.policy == "rollback":
            self.state.snapshot._restore_fn()
            for knob in self._knobs:
                knob.assign(knob * self.factor)
            self.state.rollbacks.assign_add(1)
            self.state.since_snapshot.assign(0)
        return tf.constant(False)

    def _after_update(self):
        """In-graph, after an accepted update: refresh the snapshot every ``snapshot_every``."""
        if self.policy != "rollback":
            return tf.constant(True)
        since = self.state.since_snapshot
        since.assign_add(1)

        def refresh():
            self.state.snapshot._copy_fn()
            since.assign(0)
            return tf.constant(True)

        return tf.cond(since.read_value() >= self.snapshot_every, refresh, lambda: tf.constant(False))

    # -- callback hooks ------------------------------------------------------
    def on_train_begin(self, logs=None):
        model = self.model
        if _installed.get(model) is not self:
            raise ValueError(
                f"{_OWNER}: the guard checks each batch inside the train step, which plain "
                "model.fit does not expose. Call tfkit.training.install(model, spike_guard=guard) "
                "before fit (or use tfkit.training.TrainStep(..., spike_guard=guard))."
            )
        resuming = self.state.begin()
        if self.policy == "rollback":
            install_for(_OWNER, model)  # the learning-rate knobs, before fit traces its step
        self.bind(model, resolve_optimizer(_OWNER, model))
        self._stopped, self.stop_message = False, None
        if self.policy == "rollback" and not resuming:
            self.state.snapshot.take()  # the starting point is the first good state
        self._last_rollbacks = self.state.get("rollbacks")

    def on_train_batch_end(self, batch, logs=None):
        if self.policy != "rollback":
            return  # "skip" reads nothing back per batch
        rollbacks = self.state.get("rollbacks")
        if rollbacks != self._last_rollbacks:
            self._last_rollbacks = rollbacks
            _log.warning("SpikeGuard: spike at batch %d; rolled back (%d of %d).",
                         batch, rollbacks, self.max_rollbacks)  # fmt: skip
        if rollbacks >= self.max_rollbacks and not self._stopped:
            self._stopped = True
            self.model.stop_training = True
            self.stop_message = (
                f"{_OWNER}: stopped training after {rollbacks} rollbacks (max_rollbacks="
                f"{self.max_rollbacks}): the loss keeps spiking although the learning rate was "
                f"multiplied by {self.factor} at each. Look at the data around the spiking "
                "batches, or lower the learning rate."
            )
            warnings.warn(self.stop_message, RuntimeWarning, stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["spikes"] = self.state.get("spikes")
            logs["skipped_updates"] = self.state.get("skipped")
            logs["rollbacks"] = self.state.get("rollbacks")

    def on_train_end(self, logs=None):
        self.state.end()
