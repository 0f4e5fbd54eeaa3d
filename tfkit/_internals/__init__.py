"""The one place where tfkit touches Keras, TensorFlow and keras-tuner internals.

Everything private that tfkit uses is here: every ``keras.src`` /
``tensorflow.python`` import, every ``tf.__internal__`` call, every read or
write of an underscore attribute of an object tfkit did not create, and every
(scoped) replacement of an attribute of a Keras object or class. Each function
says why it is needed and which versions it was checked against, so a Keras or
TensorFlow upgrade that moves one of them breaks in this package only.
``tests/test_internals.py`` scans the rest of ``tfkit`` and fails on any such
use outside it.

Checked against TensorFlow 2.17 / Keras 3.15.0 (the oldest supported) and
TensorFlow 2.21 / Keras 3.15.1 unless a function says otherwise.

Modules, by what they reach into:

* :mod:`tfkit._internals.optimizers` -- Keras optimizer internals (variable
  tracking, the all-reduce a wrapper has already done, the rate object);
* :mod:`tfkit._internals.layers` -- Keras layer/variable internals (call
  context, autocast scope, the ``Variable.assign`` hook recompute records
  through, sub-layer traversal, BatchNormalization's moments);
* :mod:`tfkit._internals.training` -- Keras trainer and loss internals (loss
  reduction helpers, the loss tracker, symbolic build, ``initial_epoch``);
* :mod:`tfkit._internals.tensorflow` -- TensorFlow internals (tape state,
  merge-call support, a dataset's graph);
* :mod:`tfkit._internals.patching` -- the scoped instance-attribute overrides
  the doctor's probes and keras-tuner need (never used by the control plane).
"""

from tfkit._internals.layers import (
    AutocastScope,
    KerasVariableBase,
    adopt_parent_path,
    autocast_scope,
    batch_normalization_moments,
    batch_normalization_reduction_axes,
    build_shapes,
    current_call_context,
    flatten_layers,
    in_symbolic_scope,
    keras_history,
    new_call_context,
    set_current_call_context,
    set_variable_assign,
)
from tfkit._internals.optimizers import (
    ScheduledFloat,
    all_reduce_already_done,
    check_variables_are_known,
    clear_scheduled_float,
    distribution_strategy,
    learning_rate_object,
    no_automatic_dependency_tracking,
    optimizer_own_variables,
    overwrites_variable_with_gradient,
    schedule_free_z,
    set_learning_rate_object,
    set_scheduled_float,
    track_variable,
    trainable_variables,
    variable_index,
)
from tfkit._internals.patching import (
    bind_instance_method,
    shadow_attribute,
    tuner_tensorboard_hook,
)
from tfkit._internals.tensorflow import (
    dataset_variant,
    stop_recording,
    strategy_supports_no_merge_call,
    tape_could_record,
)
from tfkit._internals.training import (
    LossFunctionWrapper,
    apply_mask,
    call_has_training_arg,
    get_keras_mask,
    intercept_train_function,
    is_intercepted,
    loss_tracker,
    metric_direction,
    metrics_built,
    reduce_weighted_values,
    release_train_function,
    scale_loss_for_distribution,
    set_initial_epoch,
    symbolic_build,
    unscale_loss_for_distribution,
)

__all__ = [
    "AutocastScope",
    "KerasVariableBase",
    "LossFunctionWrapper",
    "ScheduledFloat",
    "adopt_parent_path",
    "all_reduce_already_done",
    "apply_mask",
    "autocast_scope",
    "batch_normalization_moments",
    "batch_normalization_reduction_axes",
    "bind_instance_method",
    "build_shapes",
    "call_has_training_arg",
    "check_variables_are_known",
    "clear_scheduled_float",
    "current_call_context",
    "dataset_variant",
    "distribution_strategy",
    "flatten_layers",
    "get_keras_mask",
    "in_symbolic_scope",
    "intercept_train_function",
    "is_intercepted",
    "keras_history",
    "learning_rate_object",
    "loss_tracker",
    "metric_direction",
    "metrics_built",
    "new_call_context",
    "no_automatic_dependency_tracking",
    "optimizer_own_variables",
    "overwrites_variable_with_gradient",
    "reduce_weighted_values",
    "release_train_function",
    "scale_loss_for_distribution",
    "schedule_free_z",
    "set_current_call_context",
    "set_initial_epoch",
    "set_learning_rate_object",
    "set_scheduled_float",
    "set_variable_assign",
    "shadow_attribute",
    "stop_recording",
    "strategy_supports_no_merge_call",
    "symbolic_build",
    "tape_could_record",
    "track_variable",
    "trainable_variables",
    "tuner_tensorboard_hook",
    "unscale_loss_for_distribution",
    "variable_index",
]
