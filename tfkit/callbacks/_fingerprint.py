"""What an exact resume depends on, recorded in every backup and compared on resume.

Private to ``tfkit.callbacks``. A fingerprint is a flat ``{item: value}`` dict
of JSON values: the model's variable layout, the optimizer tree and its
constructor hyperparameters, the accumulation steps, the steps per epoch, the
replica count and the input's element spec. Values a run changes while it
trains (a learning rate held in a variable, which ``ReduceLROnPlateau``
assigns) are left out: the backup restores them, so they must not count as a
change of configuration.
"""

from __future__ import annotations

import hashlib
import json

import keras
import numpy as np
import tensorflow as tf

from tfkit.optimizers.gradient_accumulator import GradientAccumulator
from tfkit.optimizers.tree import optimizer_chain

# Items that ``on_change="adapt"`` may let differ: the replica count (the
# global batch, and so every update, stays the same; only the all-reduce's
# summation order changes).
ADAPTABLE = ("replicas",)
# With a changed replica count, also these: fit's global batch follows the
# replicas when the per-replica batch is kept, and the accumulation steps are
# re-derived so that every update still holds the same samples.
ELASTIC = (
    "steps per epoch", "accumulation steps", "GradientAccumulator.accumulation_steps",
    "data cardinality",
)  # fmt: skip


def signature(variables) -> list:
    return [
        [list(map(int, v.shape)), np.dtype(keras.backend.standardize_dtype(v.dtype)).str]
        for v in variables
    ]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:12]


def describe_variables(variables) -> str:
    sig = signature(variables)
    return f"{len(sig)} variables (layout {_digest(sig)})"


def _json_leaf(value):
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _json_leaf(value.item())
    return None  # not a plain value: described by its class elsewhere or skipped


def _optimizer_items(optimizer) -> dict:
    items = {}
    chain = list(optimizer_chain(optimizer))
    items["optimizer tree"] = " > ".join(type(o).__name__ for o in chain)
    for node in chain:
        try:
            config = node.get_config()
        except (NotImplementedError, TypeError):
            continue
        for key, value in sorted(config.items()):
            if key in ("name", "inner_optimizer"):
                continue
            if key == "learning_rate" and not isinstance(value, dict):
                continue  # a variable the backup restores (and callbacks assign)
            if isinstance(value, dict):
                # A schedule: its class and constructor arguments are fixed.
                value = json.dumps(value, sort_keys=True, default=repr)
            leaf = _json_leaf(value)
            if leaf is not None:
                items[f"{type(node).__name__}.{key}"] = leaf
    return items


def accumulation_steps(optimizer) -> int:
    steps = 1
    for node in optimizer_chain(optimizer) if optimizer is not None else ():
        if isinstance(node, GradientAccumulator):
            steps *= int(node.accumulation_steps)
    return steps


def of_run(model, optimizer, params: dict, strategy, callbacks: int) -> dict:
    """The fingerprint known at ``on_train_begin`` (the input is added at the first step)."""
    items = {
        "model": f"{type(model).__name__}, " + describe_variables(model.variables),
        "callbacks carried": callbacks,
        "accumulation steps": accumulation_steps(optimizer),
        "steps per epoch": (params or {}).get("steps"),
        "replicas": int(strategy.num_replicas_in_sync),
    }
    if optimizer is not None:
        items["optimizer variables"] = describe_variables(optimizer.variables)
        items.update(_optimizer_items(optimizer))
    return items


def of_input(element_spec, cardinality=None) -> dict:
    """Items of the training input: its element spec (batch size included when static)."""
    items = {"input": str(element_spec)}
    if cardinality is not None:
        items["data cardinality"] = int(cardinality)
    return items


def cardinality(dataset) -> int | None:
    if not isinstance(dataset, tf.data.Dataset):
        return None
    value = int(dataset.cardinality().numpy())
    return value if value >= 0 else None  # infinite or unknown


def differences(saved: dict, current: dict) -> dict:
    """``{item: (saved, current)}`` for every item known on both sides that differs."""
    out = {}
    for key in sorted(set(saved) & set(current)):
        a, b = saved[key], current[key]
        if a is not None and b is not None and a != b:
            out[key] = (a, b)
    return out


def explain(diffs: dict) -> str:
    return "; ".join(f"{key}: backup {a!r}, this run {b!r}" for key, (a, b) in diffs.items())
