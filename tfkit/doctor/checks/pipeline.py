"""The input pipeline's structure (tf.data advice)."""

from __future__ import annotations

import math
import time

import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.doctor.checks._common import (
    _train_steps,
)
from tfkit.doctor.checks.registry import register
from tfkit.doctor.report import Finding


def _dataset_ops(dataset) -> set[str]:
    try:
        graph = tf.raw_ops.DatasetToGraphV2(input_dataset=_internals.dataset_variant(dataset))
        graph_def = tf.compat.v1.GraphDef.FromString(graph.numpy())
    except Exception:  # noqa: BLE001 - structure is advice only
        return set()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def _pipeline_advice(ops: set[str]) -> list[str]:
    advice = []
    if not any(op.startswith("Prefetch") for op in ops):
        advice.append(
            "end the pipeline with .prefetch(tf.data.AUTOTUNE) so batches are "
            "produced while the model trains"
        )
    if "MapDataset" in ops:
        advice.append("pass num_parallel_calls=tf.data.AUTOTUNE to .map()")
    if ops & {"PyFunc", "EagerPyFunc", "GeneratorDataset"}:
        advice.append(
            "Python code runs in the pipeline (from_generator / py_function, one "
            "thread under the GIL): rewrite it in TensorFlow ops or precompute it"
        )
    if not any(op.startswith("Cache") for op in ops):
        advice.append(
            "cache() the data after the expensive deterministic steps (before "
            "shuffle/augmentation) when it fits in memory"
        )
    return advice


@register("input_pipeline")
def check_input_pipeline(ctx) -> list[Finding]:
    x, y, sw = ctx.batch
    budget = ctx.time_left() / 2
    # Train time per batch: one warm-up call (tracing), then the median of a few.
    _train_steps(ctx, x, y, sw, 1)
    step_times = []
    start = time.perf_counter()
    while len(step_times) < 5 and (time.perf_counter() - start < budget or not step_times):
        t = time.perf_counter()
        _train_steps(ctx, x, y, sw, 1)
        step_times.append(time.perf_counter() - t)
    step = float(np.median(step_times))
    if not isinstance(ctx.data, tf.data.Dataset):
        return [
            Finding(
                "input_pipeline",
                "info",
                f"in-memory arrays (Keras batches and prefetches them); one training "
                f"step takes {step * 1e3:.3g} ms.",
                data={"step_seconds": step},
            )
        ]
    iterator = iter(ctx.data)
    next(iterator)  # the first batch includes start-up (shuffle buffer, iterator creation)
    data_times = []
    start = time.perf_counter()
    while len(data_times) < 10 and (time.perf_counter() - start < budget or not data_times):
        t = time.perf_counter()
        try:
            next(iterator)
        except StopIteration:
            break
        data_times.append(time.perf_counter() - t)
    produce = float(np.median(data_times)) if data_times else 0.0
    advice = _pipeline_advice(_dataset_ops(ctx.data))
    data = {
        "step_seconds": step,
        "batch_seconds": produce,
        "ratio": produce / step if step > 0 else math.inf,
        "advice": advice,
    }
    if produce > step:
        fixes = (
            "; ".join(advice)
            if advice
            else ("parallelise the slow step (interleave/map with num_parallel_calls)")
        )
        return [
            Finding(
                "input_pipeline",
                "warning",
                f"input-bound: producing a batch takes {produce * 1e3:.3g} ms, training "
                f"on it {step * 1e3:.3g} ms, so the device waits for data. Fix: "
                f"{fixes}.",
                data=data,
            )
        ]
    note = f" Could still: {'; '.join(advice)}." if advice else ""
    return [
        Finding(
            "input_pipeline",
            "info",
            f"not input-bound: a batch takes {produce * 1e3:.3g} ms to produce and "
            f"{step * 1e3:.3g} ms to train on.{note}",
            data=data,
        )
    ]
