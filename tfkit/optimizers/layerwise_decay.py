"""Layer-wise learning-rate decay (LLRD) as Keras ``MultiOptimizer`` parameter groups."""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from tfkit import _validation
from tfkit.schedules.scaled import ScaledSchedule

__all__ = ["LayerwiseDecay", "layerwise_decay"]


def _matches(pattern: str, path: str) -> bool:
    # Keras' OptimizerMap rule: an exact key first, else re.fullmatch.
    return pattern == path or re.fullmatch(pattern, path) is not None


@keras.saving.register_keras_serializable(package="tfkit")
class LayerwiseDecay(keras.optimizers.MultiOptimizer):
    """Keras' ``MultiOptimizer`` whose groups are variable-path patterns, checked when built.

    Built by :func:`layerwise_decay`. ``build`` refuses, naming the pattern, a
    pattern that matches no variable (a typo, or a path that changed) and a
    variable that two patterns match, instead of training those weights at
    the head's rate without a word. Otherwise exactly Keras' ``MultiOptimizer``.
    """

    def __init__(self, optimizer_map, loss_scale_factor=None, name=None):
        if not isinstance(optimizer_map, keras.optimizers.OptimizerMap):
            _validation.fail(
                "LayerwiseDecay",
                "optimizer_map",
                optimizer_map,
                "a keras.optimizers.OptimizerMap (build one with tfkit.optimizers.layerwise_decay)",
                TypeError,
            )
        super().__init__(optimizer_map, loss_scale_factor=loss_scale_factor, name=name)
        self.patterns = [str(p) for p in optimizer_map]  # an OptimizerMap iterates over its keys

    def build(self, var_list):
        if self.built:
            return
        paths = [v.path for v in var_list]
        for path in paths:
            hits = [p for p in self.patterns if _matches(p, path)]
            if len(hits) > 1:
                raise ValueError(
                    f"layerwise_decay: `layers` patterns must not overlap; variable {path!r} "
                    f"is matched by {hits}; received layers={self.patterns!r}."
                )
        for pattern in self.patterns:
            if not any(_matches(pattern, path) for path in paths):
                more = " ..." if len(paths) > 8 else ""
                raise ValueError(
                    "layerwise_decay: every `layers` pattern must match a variable path "
                    f"(e.g. {paths[:8]}{more}); received pattern={pattern!r}."
                )
        super().build(var_list)


def layerwise_decay(
    optimizer: keras.optimizers.Optimizer,
    layers: Sequence[str | keras.layers.Layer],
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
        layers: the groups, from the input to the last block: regular
            expressions matched (``re.fullmatch``, as Keras' ``OptimizerMap``)
            against ``variable.path``, e.g. ``["embedding/.*", "block_0/.*", ...]``,
            or built ``keras.layers.Layer`` objects (their trainable variables).
            ``tfkit.Recompute`` around a block leaves its paths unchanged. When
            the optimizer is built, a pattern that matches no variable, or a
            variable matched by two patterns, raises ``ValueError`` naming it.
        decay: factor per layer, ``0 < decay <= 1``.

    Returns:
        A :class:`LayerwiseDecay`: Keras' ``MultiOptimizer`` (Keras 3.15) that
        checks its patterns when built.

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
        or not all((isinstance(p, str) and p) or isinstance(p, keras.layers.Layer) for p in layers)
    ):
        raise TypeError(
            "layerwise_decay: `layers` must be a non-empty sequence of variable-path patterns "
            f"(str) or keras layers; received layers={layers!r}."
        )
    layers = [p if isinstance(p, str) else _layer_pattern(p) for p in layers]
    if len(set(layers)) != len(layers):
        raise ValueError(
            f"layerwise_decay: `layers` holds a pattern twice; received layers={list(layers)!r}."
        )
    decay = _validation.check_float("layerwise_decay", "decay", decay, low=0, low_open=True, high=1)

    config = optimizer.get_config()
    if isinstance(config["learning_rate"], dict) and "rate" in config["learning_rate"].get(
        "config", {}
    ):  # a controlled optimizer: its own rate, not the control plane's wrapper
        config["learning_rate"] = config["learning_rate"]["config"]["rate"]
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
    return LayerwiseDecay(keras.optimizers.OptimizerMap(head, groups))


def _layer_pattern(layer: keras.layers.Layer) -> str:
    """The pattern matching exactly ``layer``'s trainable variables, by their current paths."""
    paths = [v.path for v in layer.trainable_weights]
    if not paths:
        raise ValueError(
            "layerwise_decay: a layer in `layers` must be built and have trainable variables "
            f"(build the model first); received layer {layer.name!r} with none."
        )
    return "|".join(re.escape(p) for p in paths)
