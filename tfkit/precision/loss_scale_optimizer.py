"""Dynamic loss scaling with a floor, a ceiling and a count of skipped steps.

float16 has a 5-bit exponent: gradients smaller than about 6e-8 flush to zero.
Loss scaling multiplies the loss by ``S`` before differentiation (so every
gradient is ``S`` times larger and stays representable) and divides the
gradients by ``S`` before the update. ``S`` is adapted each step:

    non-finite gradient:   skip the update,  S <- max(S * backoff_factor, min_scale),
                           skipped_steps += 1
    dynamic_growth_steps
    finite steps in a row: S <- min(S * growth_factor, max_scale)

(``growth_factor=2``, ``backoff_factor=0.5`` by default, as in Keras and PyTorch.)

Keras' own ``LossScaleOptimizer`` has the same rule without the bounds and
without the counter; this class subclasses it, so ``Model.compile`` under
``"mixed_float16"`` recognises it and does not wrap it a second time.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfkit import _internals
from tfkit.optimizers import GradientAccumulator, optimizer_chain

__all__ = ["LossScaleOptimizer"]

_NO_LOSS_SCALING_POLICIES = ("mixed_bfloat16", "bfloat16")


@keras.saving.register_keras_serializable(package="tfkit")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic ``LossScaleOptimizer`` with ``min_scale``/``max_scale`` bounds.

    Formula (per call of ``apply``, ``S`` the loss scale)::

        finite(grads):   inner.apply(grads / S)
                         every dynamic_growth_steps-th consecutive finite step:
                             S <- min(growth_factor * S, max_scale)
        otherwise:       no update (weights, slots and ``iterations`` unchanged)
                         S <- max(backoff_factor * S, min_scale); skipped_steps += 1

    ``loss_scale`` and ``skipped_steps`` are read-only properties (tensors); a
    logging callback finds them through the ``inner_optimizer`` chain with
    ``tfkit.optimizers.find_in_chain(model.optimizer, "loss_scale")`` and puts
    them into ``logs`` so History, CSVLogger and TensorBoard show them.

    bfloat16 needs no loss scaling: it has float32's 8-bit exponent, so any
    gradient float32 can represent without underflow, bfloat16 can too (it only
    has fewer mantissa bits). Constructing this optimizer while the global
    dtype policy is ``"mixed_bfloat16"`` (or ``"bfloat16"``) therefore raises
    ``ValueError`` instead of silently scaling: use the inner optimizer directly.
    (Loading a saved model does not check: its layers keep their own policies.)

    Args:
        inner_optimizer: the ``keras.optimizers.Optimizer`` to wrap (it may
            itself be a wrapper such as ``tfkit``'s ``GradientAccumulator``).
        initial_scale: starting loss scale. Defaults to ``2**15`` (Keras).
        dynamic_growth_steps: consecutive finite steps before the scale doubles.
            Defaults to ``2000`` (Keras; PyTorch's ``GradScaler`` also uses 2000).
        min_scale: the scale is never halved below this. Defaults to ``1.0``
            (DeepSpeed's ``min_loss_scale``): a scale below 1 would *shrink*
            gradients, the opposite of what loss scaling is for.
        max_scale: the scale never doubles above this. Defaults to ``2**24``
            (NVIDIA Apex's ``max_loss_scale``).
        name: optimizer name.
        growth_factor: the scale's factor after ``dynamic_growth_steps``
            finite steps, finite and > 1. Defaults to ``2.0`` (PyTorch's
            ``GradScaler(growth_factor=2.0)``).
        backoff_factor: the scale's factor after a non-finite step, in (0, 1).
            Defaults to ``0.5`` (``GradScaler(backoff_factor=0.5)``).

    With ``initial_scale=init_scale``, ``dynamic_growth_steps=growth_interval``
    and the same factors, the scale follows ``torch.amp.GradScaler``'s step
    for step while it stays within ``[min_scale, max_scale]`` (GradScaler has
    no bounds; its default ``init_scale`` is ``2**16``, tfkit's ``2**15``).

    Requires ``0 < min_scale <= initial_scale <= max_scale``, all finite.

    Example:
        >>> import keras, numpy as np
        >>> from tfkit.precision import LossScaleOptimizer
        >>> opt = LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=8.0,
        ...                          min_scale=2.0, max_scale=64.0)
        >>> v = keras.Variable(np.ones(2, "float32"))
        >>> opt.apply([np.array([np.inf, 0.0], "float32")], [v])
        >>> float(opt.loss_scale), int(opt.skipped_steps), v.numpy().tolist()
        (4.0, 1, [1.0, 1.0])

    Reference: Micikevicius et al., "Mixed Precision Training", ICLR 2018;
    ``keras.optimizers.LossScaleOptimizer``; ``torch.amp.GradScaler``.
    """

    def __init__(
        self,
        inner_optimizer: keras.optimizers.Optimizer,
        initial_scale: float = 2.0**15,
        dynamic_growth_steps: int = 2000,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
        name: str | None = None,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        **kwargs,
    ):
        # float32 must hold the factors (the scale is a float32 variable).
        _check_factor(
            "growth_factor", growth_factor, lambda v: 1.0 < v <= _F32_MAX, "in (1, 3.403e+38]"
        )
        _check_factor(
            "backoff_factor", backoff_factor, lambda v: _F32_TINY <= v < 1.0, "in [1.175e-38, 1)"
        )
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "`inner_optimizer` must be a keras.optimizers.Optimizer instance. "
                f"Received: inner_optimizer={inner_optimizer!r} "
                f"of type {type(inner_optimizer).__name__}"
            )
        # Normal float32 values: the scale lives in a float32 variable, and a
        # subnormal or zero minimum lets the scale reach 0 (then 0 * inf = NaN).
        tiny, huge = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
        for arg, value in (
            ("initial_scale", initial_scale),
            ("min_scale", min_scale),
            ("max_scale", max_scale),
        ):
            try:
                ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
                      and tiny <= float(value) <= huge)
            except OverflowError:  # an int beyond float range (10**400)
                ok = False
            if not ok:
                raise ValueError(
                    f"`{arg}` must be a finite, normal float32 number in [{tiny:g}, {huge:g}]. "
                    f"Received: {arg}={value!r:.80}"
                )
        if not min_scale <= initial_scale <= max_scale:
            raise ValueError(
                "Loss-scale bounds must satisfy min_scale <= initial_scale <= max_scale. "
                f"Received: min_scale={min_scale}, initial_scale={initial_scale}, "
                f"max_scale={max_scale}"
            )
        if (
            isinstance(dynamic_growth_steps, bool)
            or not isinstance(dynamic_growth_steps, numbers.Integral)
            or not 1 <= dynamic_growth_steps <= np.iinfo(np.int64).max
        ):
            raise ValueError(
                "`dynamic_growth_steps` must be an integer in [1, 2**63 - 1] (an int64 counter). "
                f"Received: dynamic_growth_steps={dynamic_growth_steps!r:.80}"
            )
        for wrapped in optimizer_chain(inner_optimizer):
            if isinstance(wrapped, keras.optimizers.LossScaleOptimizer):
                raise ValueError(
                    "`inner_optimizer` already contains a LossScaleOptimizer "
                    f"({wrapped.name!r}): the gradients would be unscaled twice. "
                    "Wrap the optimizer once."
                )
        # A saved model is restored whatever the session's global policy: its
        # layers carry their own float16 policies and still need the scaling.
        restoring = kwargs.pop("_restoring", False)
        global_policy = keras.config.dtype_policy().name
        if global_policy in _NO_LOSS_SCALING_POLICIES and not restoring:
            raise ValueError(
                f"LossScaleOptimizer is not needed under the {global_policy!r} dtype policy: "
                "bfloat16 keeps float32's 8-bit exponent, so gradients do not underflow "
                "and no loss scaling is applied. Pass the inner optimizer "
                f"({type(inner_optimizer).__name__}) to compile() directly."
            )
        super().__init__(
            inner_optimizer,
            initial_scale=float(initial_scale),
            dynamic_growth_steps=int(dynamic_growth_steps),
            name=name,
            **kwargs,
        )
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)

    @_internals.no_automatic_dependency_tracking
    def build(self, var_list):
        super().build(var_list)
        # Same aggregation as Keras' own step counter: written only in the
        # cross-replica branch (or identically on every replica).
        self._skipped_steps = self.add_variable(
            shape=(),
            dtype="int64",
            initializer="zeros",
            aggregation="none",
            name="skipped_steps",
        )

    @property
    def loss_scale(self):
        """The current loss scale ``S`` (float32 tensor, read-only)."""
        if not self.built:
            return ops.convert_to_tensor(self.initial_scale, dtype="float32")
        return _read(self.dynamic_scale)

    @property
    def skipped_steps(self):
        """How many ``apply`` calls were skipped for non-finite gradients (int64, read-only)."""
        if not self.built:
            return ops.convert_to_tensor(0, dtype="int64")
        return _read(self._skipped_steps)

    def apply(self, grads, trainable_variables=None, weight=None):
        """Keras' ``apply``; ``weight`` is handed to an inner ``GradientAccumulator``."""
        # The whole update is this class's own (not Keras' private
        # ``_tf_apply``/``_stateful_handle_*`` hooks overridden): a Keras
        # release that renames them cannot route around the bounds.
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        return self._apply_checked(grads, trainable_variables, weight=weight)

    def _apply_finite(self, grads, trainable_variables, weight=None):
        tvs = trainable_variables or _internals.trainable_variables(self)
        unscaled = self._unscale(grads, tvs)
        extra = {} if weight is None else {"weight": weight}
        self.inner_optimizer.apply(unscaled, trainable_variables=trainable_variables, **extra)
        self._count_finite_step()

    def _skip_non_finite(self):
        self.step_counter.assign(0)
        self.dynamic_scale.assign(
            ops.maximum(ops.multiply(self.dynamic_scale, self.backoff_factor), self.min_scale)
        )
        self._skipped_steps.assign_add(1)

    def _apply_checked(self, grads, trainable_variables=None, weight=None):
        # Keras decides "finite" from the first replica's *local* gradients,
        # before they are all-reduced: an inf on another replica then reaches
        # the weights (NaN weights under MirroredStrategy). Here every replica
        # counts its non-finite gradients and the strategy sums the counts, so
        # all replicas skip or apply together.
        if tf.distribute.in_cross_replica_context():
            raise ValueError("apply() must be called in a replica context.")
        replica = tf.distribute.get_replica_context()
        if replica.num_replicas_in_sync > 1 and isinstance(
            self.inner_optimizer, GradientAccumulator
        ):
            self._apply_to_window(grads, trainable_variables, weight)
            return
        if _internals.strategy_supports_no_merge_call():
            finite = self.check_finite(grads)
            if replica.num_replicas_in_sync > 1:
                bad = replica.all_reduce(tf.distribute.ReduceOp.SUM, _nonfinite(finite))
                finite = ops.equal(bad, 0.0)
            ops.cond(
                finite,
                lambda: self._apply_finite(grads, trainable_variables, weight),
                self._skip_non_finite,
            )
            return

        def handle_cross_replica(distribution, grads, trainable_variables, weight):
            per_replica = distribution.extended.call_for_each_replica(
                lambda g: _nonfinite(self.check_finite(g)), args=(grads,)
            )
            bad = distribution.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    self._apply_finite, args=(grads, trainable_variables, weight)
                )

            # The cond must run in cross-replica context: the inner optimizer's
            # apply calls merge_call, which a replica-context cond cannot hold.
            ops.cond(ops.equal(bad, 0.0), apply_fn, self._skip_non_finite)

        replica.merge_call(handle_cross_replica, args=(grads, trainable_variables, weight))

    def _apply_to_window(self, grads, trainable_variables, weight):
        """Several replicas, a GradientAccumulator inside: no collective of our own.

        Each replica checks its own gradients and hands them, unscaled, to
        the accumulator with that flag: a non-finite shard is dropped from the
        window locally (the accumulator counts it). The accumulator's one
        all-reduce per window carries the count of dropped shards, and the
        scale is updated from it when the window closes, identically on
        every replica: an overflow anywhere in the window backs off once
        (``skipped_steps += 1``), a clean window counts one step towards
        ``dynamic_growth_steps``.
        """
        tvs = list(trainable_variables or _internals.trainable_variables(self))
        self.inner_optimizer._apply_checked(
            self._unscale(grads, tvs),
            tvs,
            weight,
            finite=self.check_finite(grads),
            on_close=self._update_scale_for_window,
        )

    def _update_scale_for_window(self, reduced):
        """``reduced = [sum of weights, dropped shards]`` of the closed window, over replicas."""
        ops.cond(
            ops.greater(reduced[1], 0.0),
            self._skip_non_finite,
            self._count_finite_step,
        )

    def _unscale(self, grads, trainable_variables):
        scale = self.dynamic_scale
        return [
            g
            if g is None or _internals.overwrites_variable_with_gradient(self, v)
            else ops.divide(g, scale)
            for g, v in zip(grads, trainable_variables, strict=True)
        ]

    def _count_finite_step(self):
        def grow():
            self.step_counter.assign(0)
            grown = ops.multiply(self.dynamic_scale, self.growth_factor)
            self.dynamic_scale.assign(ops.minimum(grown, self.max_scale))

        def count():
            self.step_counter.assign_add(1)

        ops.cond(ops.equal(self.step_counter, self.dynamic_growth_steps - 1), grow, count)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError(
            "tfkit.precision.LossScaleOptimizer supports the TensorFlow backend's "
            "stateful apply() only (stateless_apply is a JAX-backend path)."
        )

    @classmethod
    def from_config(cls, config: dict, custom_objects=None):
        # Keras' from_config pops "inner_optimizer" from the caller's dict.
        return super().from_config(dict(config, _restoring=True), custom_objects=custom_objects)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            min_scale=self.min_scale,
            max_scale=self.max_scale,
            growth_factor=self.growth_factor,
            backoff_factor=self.backoff_factor,
        )
        return config


_F32_MAX = float(np.finfo("float32").max)
_F32_TINY = float(np.finfo("float32").tiny)


def _check_factor(arg: str, value, in_range, allowed: str) -> None:
    """ValueError naming ``arg`` unless ``value`` is a real, non-bool number ``in_range``.

    The ranges end at float32's largest and smallest normal numbers: the scale
    is a float32 variable, so a factor float32 cannot hold would become inf or 0.
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and in_range(value)):
        raise ValueError(
            f"`{arg}` must be a number {allowed} (float32 must hold it). Received: {arg}={value!r}"
        )


def _nonfinite(finite):
    """1.0 when ``finite`` is false, else 0.0 (float32 so strategies can sum it)."""
    return ops.cast(ops.logical_not(finite), "float32")


def _read(variable):
    """The variable's current value as a tensor (the primary copy under a strategy)."""
    return tf.convert_to_tensor(variable.value)
