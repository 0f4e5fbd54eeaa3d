"""Run the doctor's checks on a compiled model and its data, and leave the model as it was."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals
from tfkit.doctor._ids import ALL_CHECKS, DEFAULT_CHECKS
from tfkit.doctor.checks import CHECKS
from tfkit.doctor.report import Finding, Report
from tfkit.tuning._state import TrainingState
from tfkit.tuning.lr_find import _micro_batches_per_update

__all__ = ["ALL_CHECKS", "DEFAULT_CHECKS", "examine"]



class _Context:
    """What every check reads: the model, the data sample, the options, the deadline."""

    def __init__(self, model, data, batches, options):
        self.model = model
        self.data = data
        self.batches = batches  # list of (x, y, sample_weight) on the data sample
        self.batch = batches[0]
        self.options = options
        self.micro = _micro_batches_per_update(model.optimizer)
        self.deadline = math.inf
        self.results: dict[str, dict] = {}  # what one check leaves for a later one

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()


def _check_positive(name, value, integer=False):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        kind = "an int" if integer else "a number"
        raise TypeError(f"examine: `{name}` must be {kind}, received {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"examine: `{name}` must be finite and > 0, received {value!r}")


def _slice(structure, idx):
    return tf.nest.map_structure(lambda a: np.asarray(a)[idx], structure)


def _num_examples(structure) -> int:
    return int(np.shape(tf.nest.flatten(structure)[0])[0])


def _sample_batches(data, batch_size: int, sample_size: int, seed: int) -> list[tuple]:
    """Up to ``sample_size`` examples of ``data`` as ``(x, y, sample_weight)`` batches."""
    if isinstance(data, tf.data.Dataset):
        batches, count = [], 0
        for batch in data:
            x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
            batches.append(
                tf.nest.map_structure(lambda t: None if t is None else np.asarray(t), (x, y, sw))
            )
            count += _num_examples(x)
            if count >= sample_size:
                break
        if not batches:
            raise ValueError("examine: `data` is an empty tf.data.Dataset: it yielded no batch")
        return batches
    if not isinstance(data, (tuple, list)) or not 2 <= len(data) <= 3:
        raise TypeError(
            "examine: `data` must be a tf.data.Dataset of (x, y[, sample_weight]) batches or a "
            f"tuple (x, y[, sample_weight]) of arrays; received {type(data).__name__}"
        )
    arrays = tuple(data) + (None,) * (3 - len(data))
    n = _num_examples(arrays[0])
    if n == 0:
        raise ValueError("examine: `data` holds 0 examples")
    order = np.random.default_rng(seed).permutation(n)[:sample_size]
    return [
        tuple(None if a is None else _slice(a, order[i : i + batch_size]) for a in arrays)
        for i in range(0, len(order), batch_size)
    ]


def _build(model, batch) -> None:
    """Create every variable a training step would create, before the snapshot."""
    _internals.symbolic_build(model, batch)


def examine(
    model: keras.Model,
    data,
    checks: Sequence[str] | None = None,
    *,
    learning_rate: bool = False,
    baseline: bool = False,
    batch_size: int = 32,
    sample_size: int = 256,
    time_budget: float = 30.0,
    overfit_steps: int = 300,
    overfit_batch_size: int = 8,
    seed: int = 0,
) -> Report:
    """Examine a compiled model and its training data for the usual set-up mistakes.

    Each check (see ``docs/doctor.md``) runs on a sample of ``data`` within
    ``time_budget`` seconds. Checks that train (``overfit_batch``,
    ``update_ratio``, ``input_pipeline``, ``learning_rate``, ``zero_input``)
    do real ``train_on_batch`` steps, so loss scaling, accumulation,
    recomputation and ``jit_compile`` behave as in ``fit``; after every check
    the weights, non-trainable state, metrics and every optimizer of the
    wrapper chain are restored bit for bit. A check that raises becomes an
    ``"error"`` finding naming the exception.

    A healthy set-up gives only ``"info"`` findings.

    Args:
        model: a compiled Keras model.
        data: ``(x, y[, sample_weight])`` arrays, or a ``tf.data.Dataset`` of
            such batches, as ``fit`` takes them.
        checks: ids of the checks to run; default ``DEFAULT_CHECKS`` (all but
            ``learning_rate`` and ``zero_input``).
        learning_rate: also run ``learning_rate`` (an ``lr_find`` sweep).
            Default False.
        baseline: also run ``zero_input`` (train on zeroed inputs and compare
            with the real ones). Default False.
        batch_size: batch size for array ``data`` (default 32).
        sample_size: examples read from ``data`` for the statistics (default 256).
        time_budget: seconds each check may take, > 0 (default 30).
        overfit_steps: optimizer updates ``overfit_batch`` may take (default 300).
        overfit_batch_size: examples in the batch ``overfit_batch`` memorises (default 8).
        seed: seed of the sampling of array ``data`` (and of ``lr_find``'s shuffling).

    Returns:
        A :class:`~tfkit.doctor.Report`.

    Example:
        >>> import keras, numpy as np
        >>> import tfkit
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int32")
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
        ...                           keras.layers.Dense(2)])
        >>> model.compile(keras.optimizers.Adam(1e-2),
        ...               keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> report = tfkit.doctor.examine(model, (x, y), checks=["initial_loss", "nonfinite"])
        >>> report.healthy
        True

    Reference: A. Karpathy, "A Recipe for Training Neural Networks" (2019): loss
    at init, overfit one batch, input-independent baseline, backprop to chart
    dependencies; CS231n "Neural Networks Part 3": update/weight ratio ~1e-3,
    dead ReLUs, first- vs last-layer gradients; the TensorFlow guide
    "Better performance with the tf.data API".
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"examine: `model` must be a keras.Model, received {type(model).__name__}")
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError("examine: `model` must be compiled with an optimizer (call model.compile)")
    for name, value in (("learning_rate", learning_rate), ("baseline", baseline)):
        if not isinstance(value, bool):
            raise TypeError(f"examine: `{name}` must be a bool, received {value!r}")
    for name, value in (
        ("batch_size", batch_size),
        ("sample_size", sample_size),
        ("overfit_steps", overfit_steps),
        ("overfit_batch_size", overfit_batch_size),
    ):
        _check_positive(name, value, integer=True)
    _check_positive("time_budget", time_budget)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"examine: `seed` must be an int, received {seed!r}")
    if checks is None:
        checks = list(DEFAULT_CHECKS)
    elif isinstance(checks, str) or not all(isinstance(c, str) for c in checks):
        raise TypeError(f"examine: `checks` must be a sequence of check ids, received {checks!r}")
    else:
        checks = list(checks)
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"examine: unknown check(s) {unknown}; known: {list(ALL_CHECKS)}")
    checks += [
        c
        for c, on in (("learning_rate", learning_rate), ("zero_input", baseline))
        if on and c not in checks
    ]

    options = dict(
        batch_size=batch_size,
        sample_size=sample_size,
        time_budget=float(time_budget),
        overfit_steps=overfit_steps,
        overfit_batch_size=overfit_batch_size,
        seed=seed,
    )
    batches = _sample_batches(data, batch_size, sample_size, seed)
    ctx = _Context(model, data, batches, options)
    x, y, sw = ctx.batch
    _build(model, (x, y, sw))
    state = TrainingState.capture(model, (x, y) if sw is None else (x, y, sw))
    train_function = model.train_function
    findings: list[Finding] = []
    seconds: dict[str, float] = {}
    try:
        for check in checks:
            start = time.perf_counter()
            ctx.deadline = start + options["time_budget"]
            try:
                findings += CHECKS[check](ctx)
            except Exception as err:  # noqa: BLE001 - a crash is itself a finding about the set-up
                first_line = (str(err).splitlines() or [""])[0][:300]
                findings.append(
                    Finding(
                        check,
                        "error",
                        f"the check could not run: {type(err).__name__}: {first_line}",
                        data={"exception": type(err).__name__},
                    )
                )
            finally:
                state.restore()
                seconds[check] = time.perf_counter() - start
    finally:
        # The checks share one traced train step; the model gets its own back.
        model.train_function = train_function
    return Report(findings=findings, seconds=seconds)
