"""The mixed-precision audit as doctor findings."""

from __future__ import annotations

import tensorflow as tf

from tfkit.doctor.checks.registry import register
from tfkit.doctor.report import Finding

_AUDIT_SEVERITY = {
    "half_output": "warning",
    "half_softmax": "warning",
    "half_loss": "warning",
    "half_variable": "warning",
    "no_loss_scaling": "warning",
}


@register("precision")
def check_precision(ctx) -> list[Finding]:
    from tfkit.precision import audit

    batch = len(tf.nest.flatten(ctx.batch[0])[0])
    found = audit(
        ctx.model,
        batch_size=batch if isinstance(ctx.data, tf.data.Dataset) else ctx.options["batch_size"],
    )
    findings = [
        Finding(
            "precision",
            _AUDIT_SEVERITY.get(f.code, "info"),
            f"[{f.code}] {f.problem} Fix: {f.fix}",
            layer=f.layer,
            data={"code": f.code},
        )
        for f in found
    ]
    return findings or [Finding("precision", "info", "precision.audit: nothing to fix.")]
