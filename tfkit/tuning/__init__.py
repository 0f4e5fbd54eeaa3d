"""Tuning tools, in the order practitioners use them.

1. :func:`~tfkit.tuning.lr_find.lr_find`: learning-rate range test.
2. :func:`~tfkit.tuning.micro_batch.find_micro_batch`: largest micro-batch that
   fits, and the accumulation plan to reach a target batch.
3. :func:`~tfkit.tuning.scaling.scale_learning_rate`: linear / sqrt rule.
4. ``TfkitHyperModel`` (:mod:`tfkit.tuning.hypermodel`): the remaining choices
   (schedule, learning rate, precision, accumulation) as a keras-tuner search
   space (needs the optional ``tuner`` extra).

Names are resolved on first access, so that ``tfkit.tuning.cli`` (imported to
build the ``tfkit`` command line) does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LRFinderResult": "tfkit.tuning.lr_find",
    "lr_find": "tfkit.tuning.lr_find",
    "MicroBatchPlan": "tfkit.tuning.micro_batch",
    "find_micro_batch": "tfkit.tuning.micro_batch",
    "scale_learning_rate": "tfkit.tuning.scaling",
    "TfkitHyperModel": "tfkit.tuning.hypermodel",
}

__all__ = sorted(_EXPORTS)  # noqa: F822 - resolved lazily by __getattr__


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
