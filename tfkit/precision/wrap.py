"""``wrap(optimizer)``: the loss scaling a dtype policy needs, bounded and observable.

Under ``"mixed_float16"``, ``Model.compile`` wraps a plain optimizer in Keras'
own ``LossScaleOptimizer``, which has no floor or ceiling on the scale and no
count of skipped steps (docs/keras-defects.md#loss-scale-unbounded). Passing
``wrap(optimizer)`` to ``compile`` instead gives tfkit's
:class:`~tfkit.precision.LossScaleOptimizer` under float16 and the optimizer
unchanged under every other policy, so one recipe is right for all of them::

    change = set_policy("auto")
    model = build_model()
    model.compile(wrap(keras.optimizers.Adam(1e-3), policy=change), "mse")
"""

from __future__ import annotations

import inspect

import keras

from tfkit import _validation
from tfkit.optimizers import optimizer_chain
from tfkit.precision.loss_scale_optimizer import LossScaleOptimizer
from tfkit.precision.policy import PolicyChange

__all__ = ["wrap"]

_LSO_ARGUMENTS = frozenset(inspect.signature(LossScaleOptimizer.__init__).parameters) - {
    "self",
    "inner_optimizer",
    "kwargs",
}


def wrap(
    optimizer: keras.optimizers.Optimizer,
    policy: str | keras.DTypePolicy | PolicyChange | None = None,
    **loss_scale_kwargs,
) -> keras.optimizers.Optimizer:
    """Wrap ``optimizer`` in tfkit's bounded ``LossScaleOptimizer`` if ``policy`` needs it.

    Only ``"mixed_float16"`` needs loss scaling (float16's 5-bit exponent);
    bfloat16 and float32 keep float32's range, so under them ``optimizer`` is
    returned unchanged, and ``loss_scale_kwargs`` are checked by name but unused.

    Args:
        optimizer: a ``keras.optimizers.Optimizer`` (possibly a tfkit wrapper such
            as ``GradientAccumulator``) without a loss scaler in its chain.
        policy: the policy to decide for: a name, a ``keras.DTypePolicy`` or the
            :class:`~tfkit.precision.PolicyChange` that ``set_policy`` returned.
            Default ``None``: the global Keras policy now.
        **loss_scale_kwargs: arguments of :class:`~tfkit.precision.LossScaleOptimizer`
            (``initial_scale``, ``dynamic_growth_steps``, ``min_scale``,
            ``max_scale``, ``name``); its defaults otherwise.

    Returns:
        ``LossScaleOptimizer(optimizer, **loss_scale_kwargs)`` under
        ``"mixed_float16"``, else ``optimizer`` itself.

    Raises:
        TypeError: ``optimizer`` is not a Keras optimizer, ``policy`` has another
            type, or an unknown keyword is given.
        ValueError: ``optimizer`` already contains a loss scaler, or a bound is
            invalid (as for ``LossScaleOptimizer``).

    Example:
        >>> import keras
        >>> from tfkit.precision import wrap
        >>> sgd = keras.optimizers.SGD(0.1)
        >>> wrap(sgd, policy="float32") is sgd
        True
        >>> scaled = wrap(sgd, policy="mixed_float16", min_scale=2.0)
        >>> type(scaled).__module__, scaled.min_scale, scaled.max_scale
        ('tfkit.precision.loss_scale_optimizer', 2.0, 16777216.0)
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        _validation.fail("wrap", "optimizer", optimizer, "a keras.optimizers.Optimizer", TypeError)
    unknown = sorted(set(loss_scale_kwargs) - _LSO_ARGUMENTS)
    if unknown:
        raise TypeError(
            f"wrap: unknown keyword argument(s) {unknown}; "
            f"LossScaleOptimizer accepts {sorted(_LSO_ARGUMENTS)}"
        )
    for wrapped in optimizer_chain(optimizer):
        if isinstance(wrapped, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                f"wrap: `optimizer` already contains a LossScaleOptimizer ({wrapped.name!r}); "
                "pass the optimizer without it."
            )
    if _policy_name(policy) != "mixed_float16":
        return optimizer
    return LossScaleOptimizer(optimizer, **loss_scale_kwargs)


def _policy_name(policy) -> str:
    if policy is None:
        return keras.config.dtype_policy().name
    if isinstance(policy, PolicyChange):
        return policy.name
    if isinstance(policy, keras.DTypePolicy):
        return policy.name
    allowed = "None, a policy name, a keras.DTypePolicy or a tfkit.precision.PolicyChange"
    if isinstance(policy, str):
        try:
            return keras.DTypePolicy(policy).name
        except ValueError:  # Keras' own message names no owner
            _validation.fail("wrap", "policy", policy, allowed)
    _validation.fail("wrap", "policy", policy, allowed, TypeError)
