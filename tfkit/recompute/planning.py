"""A recompute plan for a memory budget: which blocks to recompute, and what to save in each.

:func:`plan` measures, for every block of a model (a top-level layer with
weights), the peak memory of a gradient step with that block recomputed in
full, or -- for a ``keras.Sequential`` block holding matmuls or convolutions --
recomputed selectively (its ``Dense``/``Conv*`` outputs saved, pointwise and
normalization layers recomputed). It then chooses one option per block (a
multiple-choice knapsack, solved exactly over the Pareto frontier):

    minimise   sum_b extra_compute(b, option_b)
    subject to baseline_peak - sum_b saving(b, option_b) <= budget

where ``saving(b, o) = baseline_peak - peak(only b recomputed with o)`` is
measured, and ``extra_compute`` is the forward work done again in backprop
(multiply-adds of the recomputed ``Dense``/``Conv``/``MultiHeadAttention``
layers plus one operation per output element of every other recomputed
layer). The chosen plan is measured once more; if it misses the budget (the
savings of different blocks do not add up exactly), the next cheapest option
is added until it fits.

On CPU the peak comes from TensorFlow's BFC allocator (run in a process
started with ``TF_CPU_ALLOCATOR_USE_BFC=true``, see :mod:`tfkit.memory`); on
GPU from ``tf.config.experimental.get_memory_info``. Pass ``measure=`` to use
any other measurement (a profiler, a remote device, a test double).

Example (in a BFC process)::

    import tfkit
    p = tfkit.recompute.plan(model, (x, y), budget=0.6)   # 60% of today's peak
    print(p)              # predicted vs baseline peak, extra compute, per block
    model = p.apply()     # same weights; saves and loads like any model

Reference: Chen et al., "Training Deep Nets with Sublinear Memory Cost"
(2016); the activation memory budget of ``torch.compile`` (a knapsack over
what to recompute); Keras' ``RematScope``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.recompute.layer import Recompute

__all__ = ["RecomputePlan", "plan"]

# Layers whose outputs a selective option keeps: the expensive products.
_SAVED_KINDS = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D")
_OPTIONS = ("none", "selective", "full")


@dataclasses.dataclass(frozen=True)
class BlockChoice:
    """One block of a plan: its option, measured saving and extra compute.

    Attributes:
        name: the block's layer name.
        option: ``"none"``, ``"selective"`` (save ``saved``) or ``"full"``.
        saving: bytes of peak memory this option saves on its own (measured).
        extra_compute: forward work done again in backprop (multiply-adds).
        saved: layer class names kept by a selective option.
    """

    name: str
    option: str
    saving: int
    extra_compute: int
    saved: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class RecomputePlan:
    """The result of :func:`plan`; ``apply()`` builds the planned model.

    Attributes:
        budget: the budget in bytes.
        baseline_peak: measured peak bytes of a step without recomputation.
        predicted_peak: ``baseline_peak`` minus the chosen options' savings.
        measured_peak: measured peak bytes of a step with the plan applied.
        extra_compute: total forward work done again (multiply-adds).
        full_extra_compute: the same for recomputing every block in full.
        blocks: one :class:`BlockChoice` per candidate block.
    """

    model: keras.Model
    budget: int
    baseline_peak: int
    predicted_peak: int
    measured_peak: int
    extra_compute: int
    full_extra_compute: int
    blocks: tuple[BlockChoice, ...]

    def apply(self) -> keras.Model:
        """A model with the chosen blocks wrapped in :class:`Recompute`, sharing the weights."""
        return _apply(self.model, {b.name: b for b in self.blocks})

    def __str__(self) -> str:
        mib = 2**20
        share = self.extra_compute / self.full_extra_compute if self.full_extra_compute else 0.0
        lines = [
            f"recompute plan: predicted peak {self.predicted_peak / mib:.1f} MiB "
            f"(measured {self.measured_peak / mib:.1f}) vs baseline "
            f"{self.baseline_peak / mib:.1f} MiB, budget {self.budget / mib:.1f} MiB",
            f"extra compute: {self.extra_compute:,} multiply-adds "
            f"({share:.0%} of recomputing every block)",
        ]
        for b in self.blocks:
            saved = f" (save {', '.join(b.saved)})" if b.saved else ""
            lines.append(
                f"  {b.name}: {b.option}{saved}, saves {b.saving / mib:.2f} MiB, "
                f"+{b.extra_compute:,}"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------ building


def _unwrap(layer):
    """The block inside a ``Recompute`` (a model built under ``RematScope`` needs nothing)."""
    return layer.layer if isinstance(layer, Recompute) else layer


def _apply(model: keras.Model, choices: dict) -> keras.Model:
    def clone(layer):
        choice = choices.get(layer.name)
        block = _unwrap(layer)
        if choice is None or choice.option == "none":
            return block
        save = list(choice.saved) if choice.option == "selective" else None
        return Recompute(block, save=save, name=layer.name)

    return keras.models.clone_model(model, clone_function=clone)


def _candidates(model: keras.Model) -> list:
    return [
        layer
        for layer in model.layers
        if _unwrap(layer).trainable_weights
        and not isinstance(_unwrap(layer), keras.layers.InputLayer)
    ]


def _selective_save(block) -> tuple[str, ...]:
    """Class names a selective option saves, or ``()`` when selective makes no sense."""
    if not isinstance(block, keras.Sequential):
        return ()
    kinds = {type(layer).__name__ for layer in block.layers}
    saved = tuple(sorted(kinds & set(_SAVED_KINDS)))
    if not saved or len(kinds - set(saved)) == 0:
        return ()  # nothing to save, or nothing left to recompute
    return saved


# ------------------------------------------------------------------- compute


def _forward_work(layer, input_shape, output_shape) -> int:
    """Multiply-adds of one forward call (products), else one per output element."""
    out = int(np.prod([d for d in output_shape if d is not None]))
    kind = type(layer).__name__
    if kind in ("Dense", "EinsumDense"):
        return out * int(input_shape[-1])
    if kind.startswith("Conv") or kind == "DepthwiseConv2D":
        kernel = layer.kernel.shape
        return out * int(np.prod(kernel[:-1]))
    if kind == "MultiHeadAttention":
        return out * int(input_shape[-1]) * 4 + out * int(input_shape[1])
    return out


def _block_work(block, x_shape) -> tuple[int, int]:
    """``(total, in saved layers)`` forward work of ``block`` on inputs of ``x_shape``."""
    if isinstance(block, keras.Sequential):
        total = saved = 0
        shape = tuple(x_shape)
        kinds = set(_SAVED_KINDS)
        for layer in block.layers:
            out = tuple(layer.compute_output_shape(shape))
            work = _forward_work(layer, shape, out)
            total += work
            saved += work if type(layer).__name__ in kinds else 0
            shape = out
        return total, saved
    total = 0
    for layer in _internals.flatten_layers(block):
        if layer is block or not layer.trainable_weights:
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            rows = int(np.prod([d for d in x_shape[:-1] if d is not None]))
            total += rows * int(np.prod(kernel.shape))
    return max(total, 1), 0


def _input_shapes(model, sample_x) -> dict:
    """The input shape of every top-level layer at the sample's batch size."""
    shapes = {}
    batch = int(sample_x.shape[0])
    for layer in model.layers:
        try:
            symbolic = tf.nest.flatten(layer.input)[0]
        except (AttributeError, ValueError, IndexError):  # an InputLayer, a shared layer
            continue
        shapes[layer.name] = (batch,) + tuple(symbolic.shape[1:])
    return shapes


# ------------------------------------------------------------------- measure


def _default_measure(sample) -> Callable[[keras.Model], int]:
    from tfkit.memory import peak_memory

    x, y = sample[0], sample[1]

    def measure(model: keras.Model) -> int:
        loss_fn = getattr(model, "loss", None)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                if callable(loss_fn) and y is not None:
                    loss = keras.losses.get(loss_fn)(y, out)
                else:
                    loss = tf.reduce_mean(tf.square(out))
                loss = tf.reduce_mean(loss)
            return tape.gradient(loss, model.trainable_variables)

        return peak_memory(step, warmup=1).step_peak

    return measure


# ------------------------------------------------------------------ choosing


def _choose(options, need: int):
    """Exact multiple-choice knapsack: least extra compute with total saving >= ``need``.

    ``options[b]`` lists ``(saving, cost, option)`` per block (``"none"`` is
    ``(0, 0)``). The frontier of non-dominated ``(saving, cost)`` partial plans
    is kept block by block, so the search is exact and stays small.
    """
    frontier = [(0, 0, ())]
    for block_options in options:
        grown = [
            (s + bs, c + bc, picks + (o,))
            for s, c, picks in frontier
            for bs, bc, o in block_options
        ]
        grown.sort(key=lambda t: (t[1], -t[0]))
        frontier, best = [], -1
        for s, c, picks in grown:
            if s > best:
                frontier.append((s, c, picks))
                best = s
    feasible = [t for t in frontier if t[0] >= need]
    return min(feasible, key=lambda t: t[1]) if feasible else None


def _check_budget(budget, baseline: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not (
        math.isfinite(budget) and budget > 0
    ):
        raise ValueError(
            "plan: `budget` must be a number of bytes > 1 or a fraction in (0, 1] of the "
            f"step's peak without recomputation; received budget={budget!r}."
        )
    if budget <= 1:
        return int(budget * baseline)
    return int(budget)


def plan(
    model: keras.Model,
    sample,
    budget: float,
    *,
    measure: Callable[[keras.Model], int] | None = None,
) -> RecomputePlan:
    """Plan recomputation so that a gradient step's peak memory stays under ``budget``.

    Args:
        model: a built Sequential or functional Keras model whose top-level
            layers are the candidate blocks (layers with weights; a block
            already wrapped in :class:`Recompute`, e.g. by ``keras.RematScope``
            users, is planned afresh). Sub-blocks that are ``keras.Sequential``
            and contain ``Dense``/``Conv*`` layers also get a selective option.
        sample: ``(x, y)`` (or ``(x,)``) of the training batch size.
        budget: bytes (``> 1``), or a fraction in ``(0, 1]`` of the measured
            peak without recomputation.
        measure: ``model -> peak bytes of one gradient step``; default: the
            BFC allocator on CPU / ``get_memory_info`` on GPU
            (:func:`tfkit.memory.peak_memory`).

    Returns:
        A :class:`RecomputePlan`; ``plan.apply()`` is the planned model.

    Raises:
        ValueError: bad ``budget``, a model without candidate blocks, or a
            budget below the smallest peak any plan reaches (the message
            gives that peak).
        RuntimeError: the default measurement on a CPU without the BFC allocator.
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise TypeError(f"plan: `model` must be a built keras.Model; received {model!r}.")
    if not isinstance(sample, (tuple, list)) or not 1 <= len(sample) <= 3:
        raise ValueError(
            f"plan: `sample` must be a tuple (x, y); received {type(sample).__name__}."
        )
    sample = tuple(sample) + (None,) * (2 - len(sample))
    x = tf.convert_to_tensor(sample[0])
    measure = measure or _default_measure((x, sample[1]))
    blocks = _candidates(model)
    if not blocks:
        raise ValueError(f"plan: model {model.name!r} has no top-level layer with weights.")
    baseline_model = _apply(model, {})
    baseline = int(measure(baseline_model))
    target = _check_budget(budget, baseline)
    shapes = _input_shapes(baseline_model, x)

    options, full_cost, by_name = [], 0, {}
    for layer in blocks:
        block = _unwrap(layer)
        total, saved_work = _block_work(block, shapes.get(layer.name, tuple(x.shape)))
        full_cost += total
        block_options = [(0, 0, BlockChoice(layer.name, "none", 0, 0))]
        kinds = _selective_save(block)
        for option, cost, saved in (
            ("full", total, ()),
            ("selective", total - saved_work, kinds),
        ):
            if option == "selective" and not kinds:
                continue
            choice = BlockChoice(layer.name, option, 0, cost, saved)
            peak = int(measure(_apply(model, {layer.name: choice})))
            saving = max(0, baseline - peak)
            choice = dataclasses.replace(choice, saving=saving)
            block_options.append((saving, cost, choice))
        options.append(block_options)
        by_name[layer.name] = block_options

    all_full = {b[-1][2].name: max(b, key=lambda t: t[0])[2] for b in options}
    best = _choose(options, baseline - target)
    if best is None:
        floor = int(measure(_apply(model, all_full)))
        raise ValueError(
            f"plan: budget={target} bytes is below what any recompute plan reaches; the "
            f"smallest reachable peak is about {floor} bytes (every block recomputed), "
            f"the peak without recomputation {baseline} bytes."
        )
    picks = {c.name: c for c in best[2]}
    measured = int(measure(_apply(model, picks)))
    # Savings of different blocks do not add exactly: add the next cheapest
    # saving option until the measured peak fits.
    while measured > target:
        upgrades = [
            (cost - picks[name].extra_compute, choice)
            for name, block_options in by_name.items()
            for saving, cost, choice in block_options
            if saving > picks[name].saving
        ]
        if not upgrades:
            raise ValueError(
                f"plan: budget={target} bytes is below what any recompute plan reaches; "
                f"the smallest reachable peak is {measured} bytes (measured), the peak "
                f"without recomputation {baseline} bytes."
            )
        _, choice = min(upgrades, key=lambda t: t[0])
        picks[choice.name] = choice
        measured = int(measure(_apply(model, picks)))
    chosen = tuple(picks[layer.name] for layer in blocks)
    return RecomputePlan(
        model=model,
        budget=target,
        baseline_peak=baseline,
        predicted_peak=baseline - sum(c.saving for c in chosen),
        measured_peak=measured,
        extra_compute=sum(c.extra_compute for c in chosen),
        full_extra_compute=full_cost,
        blocks=chosen,
    )
