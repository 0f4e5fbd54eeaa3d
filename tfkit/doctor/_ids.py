"""The check ids of :func:`tfkit.doctor.examine` (API), importable without TensorFlow."""

DEFAULT_CHECKS = (
    "nonfinite",
    "initial_loss",
    "batch_independence",
    "gradient_flow",
    "dead_units",
    "update_ratio",
    "overfit_batch",
    "input_pipeline",
    "precision",
    "schedule_end",
)
OPTIONAL_CHECKS = ("learning_rate", "zero_input")
ALL_CHECKS = DEFAULT_CHECKS + OPTIONAL_CHECKS
