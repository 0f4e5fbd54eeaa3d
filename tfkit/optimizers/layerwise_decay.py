"""Layer-wise learning-rate decay (LLRD) as Keras ``MultiOptimizer`` parameter groups."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from tfkit.schedules.scaled import ScaledSchedule

__all__ = ["layerwise_decay"]


def layerwise_decay(
    optimizer: keras.optimizers.Optimizer,
    layers: Sequence[str],
    decay: float,
) -> keras.optimizers.Optimizer:
    """Give deeper layers larger rates: one ``MultiOptimizer`` group per layer pattern.

    For ``n = len(layers)`` variable-path patterns ordered from the input
    (embeddings first) to the last block, pattern ``i`` gets

        lr_i = lr * decay ** (n - i),    i = 0 .. n-1

    and every variable matching no pattern (the task head) gets ``lr``: with
    ``layers = [embeddings, block_1, ..., block_L]`` this is the ELECTRA/BEiT
    rule ``lr * decay ** (L + 1 - depth)``. Each group is a copy of
    ``optimizer`` (``from_config``) named ``"<name>_layer_<i>"`` (the head keeps
    ``optimizer``'s name), so tfkit's logger reports ``learning_rate/<name>``
    per group. A ``LearningRateSchedule`` is scaled with
    ``tfkit.schedules.ScaledSchedule``; everything serializes without lambdas.

    Args:
        optimizer: an unwrapped Keras optimizer (not built) giving the type,
            the hyperparameters and the head's rate.
        layers: regular expressions matched (``re.fullmatch``) against
            ``variable.path``, e.g. ``["embedding/.*", "block_0/.*", ...]``;
            they must not overlap (Keras raises on a variable matching two).
        decay: factor per layer, ``0 < decay <= 1``.

    Returns:
        A ``keras.optimizers.MultiOptimizer`` (a Keras newer than 3.10, e.g. 3.15).

    Example:
        >>> import keras
        >>> from tfkit.optimizers import layerwise_decay, parameter_groups
        >>> opt = layerwise_decay(keras.optimizers.AdamW(1e-3, name="adamw"),
        ...                       ["embed/.*", "block_0/.*", "block_1/.*"], decay=0.5)
        >>> {k: round(float(v.learning_rate), 6) for k, v in parameter_groups(opt).items()}
        {'adamw_layer_0': 0.000125, 'adamw_layer_1': 0.00025, 'adamw_layer_2': 0.0005, 'adamw': 0.001}

    Reference: Clark et al., "ELECTRA" (2020), appendix A; Bao et al., "BEiT" (2021).
    """
    multi = getattr(keras.optimizers, "MultiOptimizer", None)
    if multi is None:
        raise RuntimeError(
            f"layerwise_decay needs keras.optimizers.MultiOptimizer (a Keras newer than 3.10, e.g. 3.15); "
            f"this is Keras {keras.__version__}."
        )
    if (
        not isinstance(optimizer, keras.optimizers.Optimizer)
        or isinstance(optimizer, multi)
        or hasattr(optimizer, "inner_optimizer")
    ):
        raise TypeError(
            "layerwise_decay: `optimizer` must be an unwrapped keras optimizer (SGD, AdamW, ...); "
            f"received optimizer={optimizer!r} of type {type(optimizer).__name__}."
        )
    if (
        isinstance(layers, str)
        or not isinstance(layers, Sequence)
        or not layers
        or not all(isinstance(p, str) and p for p in layers)
    ):
        raise TypeError(
            "layerwise_decay: `layers` must be a non-empty sequence of variable-path patterns "
            f"(str); received layers={layers!r}."
        )
    if len(set(layers)) != len(layers):
        raise ValueError(
            f"layerwise_decay: `layers` holds a pattern twice; received layers={list(layers)!r}."
        )
    if (
        isinstance(decay, bool)
        or not isinstance(decay, (int, float))
        or not math.isfinite(decay)
        or not 0 < decay <= 1
    ):
        raise ValueError(
            f"layerwise_decay: `decay` must be a number in (0, 1]; received decay={decay!r}."
        )

    config = optimizer.get_config()
    rate = config["learning_rate"]
    if isinstance(rate, dict):
        rate = keras.saving.deserialize_keras_object(rate)

    def copy(factor: float, name: str):
        scaled = (
            ScaledSchedule(rate, factor)
            if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)
            else float(rate) * factor
        )
        return type(optimizer).from_config({**config, "learning_rate": scaled, "name": name})

    n = len(layers)
    groups = {
        pattern: copy(float(decay) ** (n - i), f"{optimizer.name}_layer_{i}")
        for i, pattern in enumerate(layers)
    }
    head = copy(1.0, optimizer.name)
    return multi(keras.optimizers.OptimizerMap(head, groups))
