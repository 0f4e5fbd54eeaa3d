"""Mixed precision: policy selection, a bounded and observable loss scale, model audit.

* :func:`set_policy` — ``"mixed_float16"``, ``"mixed_bfloat16"``, ``"float32"`` or
  ``"auto"`` (from the GPU's compute capability); a context manager too.
* :class:`LossScaleOptimizer` — Keras' dynamic loss scaling with
  ``min_scale``/``max_scale`` and read-only ``loss_scale``/``skipped_steps``.
* :func:`wrap` — the optimizer for ``compile``: tfkit's bounded ``LossScaleOptimizer``
  under ``mixed_float16``, the optimizer unchanged under every other policy.
* :func:`audit` — the mixed-precision mistakes in a model, each with its fix.
"""

from tfkit.precision.audit import Finding, audit
from tfkit.precision.loss_scale_optimizer import LossScaleOptimizer
from tfkit.precision.policy import POLICIES, PolicyChange, auto_policy, set_policy
from tfkit.precision.wrap import wrap

__all__ = [
    "POLICIES",
    "Finding",
    "LossScaleOptimizer",
    "PolicyChange",
    "audit",
    "auto_policy",
    "set_policy",
    "wrap",
]
