"""Tuning tools, in the order practitioners use them.

1. :func:`~tfkit.tuning.lr_find.lr_find`: learning-rate range test.
2. :func:`~tfkit.tuning.micro_batch.find_micro_batch`: largest micro-batch that
   fits, and the accumulation plan to reach a target batch.
3. :func:`~tfkit.tuning.scaling.scale_learning_rate`: linear / sqrt rule.
4. ``TfkitHyperModel`` (:mod:`tfkit.tuning.hypermodel`): the remaining choices
   (schedule, learning rate, precision, accumulation) as a keras-tuner search
   space (needs the optional ``tuner`` extra; not imported here).
"""

from tfkit.tuning.lr_find import LRFinderResult, lr_find
from tfkit.tuning.micro_batch import MicroBatchPlan, find_micro_batch
from tfkit.tuning.scaling import scale_learning_rate

__all__ = [
    "LRFinderResult",
    "MicroBatchPlan",
    "find_micro_batch",
    "lr_find",
    "scale_learning_rate",
]
