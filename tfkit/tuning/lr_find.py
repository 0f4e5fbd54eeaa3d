"""Learning-rate range test (Smith 2015; fastai's ``lr_find``).

Train a compiled model for ``steps`` optimizer updates while the learning rate
grows exponentially from ``min_lr`` to ``max_lr``:

    lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1)),   i = 0 .. steps-1

record the training loss of every update, smooth it with a bias-corrected
exponential moving average (as fastai does):

    avg_i      = beta * avg_{i-1} + (1 - beta) * loss_i,   avg_{-1} = 0
    smoothed_i = avg_i / (1 - beta ** (i + 1))

and stop early once the run diverges (a non-finite loss, or
``smoothed_i > divergence_threshold * min(smoothed_0..i)``). Afterwards the
model's weights, non-trainable state, metrics, and the state of every optimizer
in its wrapper chain are restored bit for bit, and the learning rate (a float
or a ``LearningRateSchedule``) is put back as it was.

Two suggestions are reported (see :class:`LRFinderResult`): the rate of the
smoothed-loss minimum divided by 10 (the headline ``result.suggestion``), and
the rate of steepest descent of the smoothed loss against ``log(lr)``.

Reference: L. N. Smith, "Cyclical Learning Rates for Training Neural Networks",
2015 (arXiv:1506.01186), section 3.3; fastai ``LRFinder`` and ``lr_find``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from tfkit import _validation
from tfkit.optimizers.hyperparameters import control, is_controlled
from tfkit.optimizers.tree import walk
from tfkit.tuning._state import TrainingState, ensure_built

__all__ = ["LRFinderResult", "lr_find"]


@dataclasses.dataclass
class LRFinderResult:
    """The curve of a learning-rate range test and what it suggests.

    Attributes:
        lrs: learning rate of each recorded update.
        losses: raw training loss of each update (mean over the micro-batches of
            an accumulation window).
        smoothed: bias-corrected EMA of ``losses`` (see the module docstring).
        suggestions: ``{"steepest": lr, "min_over_10": lr}``: the rate where the
            smoothed loss falls fastest against ``log(lr)`` (searched before the
            minimum), and the rate of the minimum divided by 10. Both ``None``
            when the test found no decrease.
        suggestion: ``suggestions["min_over_10"]`` (``None`` when there is none).
            The minimum/10 rule is the headline because it is the robust one:
            on a quadratic with curvature ``L`` it lands within a factor 3 of
            the optimal rate ``1/L`` (tested), while the steepest-descent point
            of the EMA-smoothed curve falls 3-7x below it and wanders with
            mini-batch noise.
        diverged: True when the sweep stopped on divergence (non-finite loss or
            the threshold), possibly at its very last update.
        stopped_early: True when the sweep stopped before ``steps`` updates.
        reason: why the sweep ended, and why there is no suggestion if so.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestions: dict[str, float | None]
    diverged: bool
    stopped_early: bool
    reason: str

    @property
    def suggestion(self) -> float | None:
        return self.suggestions["min_over_10"]

    def plot(self, path: str | os.PathLike, skip_end: int = 0) -> str:
        """Write the smoothed (and raw) loss against the learning rate, log scale, to a PNG.

        Args:
            path: file to write (its parent folder is created).
            skip_end: leave out the last ``skip_end`` points, which after a
                divergence dwarf the rest of the curve.

        Returns:
            ``str(path)``.
        """
        from tfkit.plot import plot_lr_find

        return plot_lr_find(self, path, skip_end=skip_end)


def _suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[dict[str, float | None], str]:
    """Apply the steepest-descent and minimum/10 rules to the recorded curve.

    As fastai does, the first 10% of the points (the EMA is still warming up and
    noisy there) and the last 5 (the divergence) are left out, when enough
    points remain; the steepest descent is searched up to the minimum only.
    """
    none = {"steepest": None, "min_over_10": None}
    if len(lrs) < 3:
        return none, f"only {len(lrs)} finite loss value(s) recorded: the loss diverged at once"
    start = len(lrs) // 10
    end = len(lrs) - 5 if len(lrs) - 5 - start >= 3 else len(lrs)
    window = smoothed[start:end]
    i_min = int(np.argmin(window))
    if i_min == 0 and window[0] <= smoothed[0]:
        return none, (
            f"the smoothed loss never fell below its value at lr={lrs[start]:.3g} "
            f"({window[0]:.4g}): the model diverges at once or min_lr is already too large"
        )
    if i_min == 0:
        return none, "the smoothed loss only rose over the sweep: min_lr is already too large"
    slope = np.gradient(window[: i_min + 1], np.log(lrs[start : start + i_min + 1]))
    i_steep = int(np.argmin(slope))
    return {
        "steepest": float(lrs[start + i_steep]),
        "min_over_10": float(lrs[start + i_min] / 10.0),
    }, ""


def _batches(data, batch_size: int | None, seed: int) -> Iterator:
    """Yield ``(x, y, sample_weight)`` batches forever, restarting the data when exhausted."""
    if isinstance(data, tf.data.Dataset):
        while True:
            count = 0
            for batch in data:
                count += 1
                yield keras.utils.unpack_x_y_sample_weight(batch)
            if count == 0:
                raise ValueError("lr_find: `data` is an empty tf.data.Dataset: it yielded no batch")
    if not isinstance(data, (tuple, list)) or not 1 <= len(data) <= 3:
        raise TypeError(
            "lr_find: `data` must be a tf.data.Dataset of batches or a tuple "
            f"(x, y[, sample_weight]) of arrays; received {type(data).__name__}"
        )
    arrays = tuple(data) + (None,) * (3 - len(data))
    n = len(tf.nest.flatten(arrays[0])[0])
    if n == 0:
        raise ValueError("lr_find: `data` holds 0 examples")
    for label, part in zip(("x", "y", "sample_weight"), arrays, strict=True):
        for array in [] if part is None else tf.nest.flatten(part):
            if np.ndim(array) == 0 or len(array) != n:
                raise ValueError(
                    "lr_find: every array of `data` must hold the same number of examples; "
                    f"x has {n}, {label} has "
                    f"{'a scalar' if np.ndim(array) == 0 else len(array)}"
                )
    batch_size = 32 if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"lr_find: `batch_size` must be an int >= 1, received {batch_size!r}")
    rng = np.random.default_rng(seed)

    def take(idx):
        return tuple(
            None if a is None else tf.nest.map_structure(lambda t: np.asarray(t)[idx], a)
            for a in arrays
        )

    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            yield take(order[start : start + batch_size])


def _micro_batches_per_update(optimizer) -> int:
    """How many ``train_on_batch`` calls make one real optimizer update."""
    for opt in walk(optimizer):
        for attribute in ("accumulation_steps", "gradient_accumulation_steps"):
            steps = getattr(opt, attribute, None)
            if isinstance(steps, int) and steps > 1:
                return steps
    return 1


def _check_args(min_lr, max_lr, steps, beta, divergence_threshold) -> None:
    check = _validation.check_number
    min_lr = check("lr_find", "min_lr", min_lr, low=0, low_open=True)
    max_lr = check("lr_find", "max_lr", max_lr, low=0, low_open=True)
    if min_lr >= max_lr:
        _validation.fail("lr_find", "min_lr", min_lr, f"< `max_lr` (max_lr={max_lr!r})")
    if isinstance(steps, float):  # 100.0 is not silently read as 100
        _validation.fail("lr_find", "steps", steps, "an integer", TypeError)
    check("lr_find", "steps", steps, low=2, integer=True)
    check("lr_find", "beta", beta, low=0, high=1, high_open=True)
    check("lr_find", "divergence_threshold", divergence_threshold, low=1, low_open=True)


def lr_find(
    model: keras.Model,
    data,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    batch_size: int | None = None,
    beta: float = 0.98,
    divergence_threshold: float = 4.0,
    verbose: int = 1,
    seed: int = 0,
) -> LRFinderResult:
    """Run a learning-rate range test on a compiled model and restore it afterwards.

    Each of the ``steps`` updates is a real ``model.train_on_batch`` call, so a
    custom ``train_step``, loss scaling (``LossScaleOptimizer`` under
    ``mixed_float16``), recomputation and ``jit_compile`` behave exactly as in
    ``fit``. With gradient accumulation (an optimizer in the chain with
    ``accumulation_steps`` or Keras' ``gradient_accumulation_steps`` N > 1),
    one update is N micro-batches at the same rate and its loss is their mean.

    The rate is set through each leaf optimizer's
    ``HyperparameterState.learning_rate_override`` (a variable read in-graph:
    whatever the optimizer's rate is -- float, schedule, callable -- every
    update applies exactly the swept rate, with no retrace per step). On a
    ``MultiOptimizer`` all parameter groups sweep together, keeping the ratios
    of their current rates: the largest group gets ``lrs[i]`` (reported), the
    others ``lrs[i] * rate_g / rate_max``. The override is removed afterwards
    and every variable, the control state's included, is restored bit for bit.

    Args:
        model: a compiled Keras model.
        data: a ``tf.data.Dataset`` of ``(x, y[, sample_weight])`` batches, or
            a tuple ``(x, y[, sample_weight])`` of arrays batched by
            ``batch_size`` and reshuffled on each pass. Data is cycled when the
            sweep needs more batches than it holds.
        min_lr: first learning rate, > 0.
        max_lr: last learning rate, > ``min_lr``.
        steps: number of optimizer updates (and of recorded points), >= 2.
        batch_size: batch size for array ``data`` (default 32); not used with
            a dataset.
        beta: EMA factor of the smoothed loss, in [0, 1); 0 disables smoothing.
        divergence_threshold: stop when the smoothed loss exceeds this many
            times its minimum so far; must be > 1.
        verbose: 1 shows a Keras progress bar, 0 is silent.
        seed: shuffling seed for array ``data``.

    Returns:
        An :class:`LRFinderResult`.

    Example:
        >>> import keras, numpy as np
        >>> from tfkit.tuning.lr_find import lr_find
        >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
        >>> y = x @ np.ones((4, 1), "float32")
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(), "mse")
        >>> result = lr_find(model, (x, y), min_lr=1e-4, max_lr=10, steps=60, verbose=0)
        >>> sorted(result.suggestions)
        ['min_over_10', 'steepest']

    Reference: Smith 2015, arXiv:1506.01186; fastai ``Learner.lr_find``.
    """
    _check_args(min_lr, max_lr, steps, beta, divergence_threshold)
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise ValueError("lr_find: `model` must be compiled with an optimizer (call model.compile)")
    batches = _batches(data, batch_size, seed)
    first = next(batches)

    ensure_built(model, first)
    if not is_controlled(model.optimizer):
        model.train_function = None  # a step traced before the install ignores the override
    groups = control(model.optimizer)
    state = TrainingState.capture(model, first)
    current = {name: g.learning_rate() for name, g in groups.items()}
    reference = max(current.values())
    if not (math.isfinite(reference) and reference > 0):
        raise ValueError(f"lr_find: the optimizer's current learning rate(s) {current} must be finite "
                         "and one of them > 0 to set the groups' ratios.")
    ratios = {name: rate / reference for name, rate in current.items()}

    micro = _micro_batches_per_update(model.optimizer)
    lrs = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    rec_lrs, rec_losses, rec_smoothed = [], [], []
    avg, best = 0.0, math.inf
    reason = f"completed {steps} updates without diverging"
    diverged = False
    progbar = keras.utils.Progbar(steps, verbose=verbose, unit_name="update")
    pending = [first]
    try:
        for i, lr in enumerate(lrs):
            for name, g in groups.items():
                g.learning_rate_override.assign(lr * ratios[name])
            window = []
            for _ in range(micro):
                x, y, sw = pending.pop() if pending else next(batches)
                logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
                window.append(float(logs["loss"]))
            loss = float(np.mean(window))
            if not math.isfinite(loss):
                reason = f"stopped: non-finite loss ({loss}) at lr={lr:.3g}"
                diverged = True
                break
            avg = beta * avg + (1.0 - beta) * loss
            smoothed = avg / (1.0 - beta ** (i + 1))
            rec_lrs.append(lr)
            rec_losses.append(loss)
            rec_smoothed.append(smoothed)
            best = min(best, smoothed)
            progbar.update(i + 1, [("lr", lr), ("smoothed_loss", smoothed)])
            if smoothed > divergence_threshold * best:
                reason = (
                    f"stopped: smoothed loss {smoothed:.4g} > {divergence_threshold:g} x "
                    f"best {best:.4g} at lr={lr:.3g}"
                )
                diverged = True
                break
    finally:
        state.restore()

    curve = [np.asarray(v, dtype="float64") for v in (rec_lrs, rec_losses, rec_smoothed)]
    suggestions, why_none = _suggest(curve[0], curve[2])
    if why_none:
        reason = f"{reason}; no suggestion: {why_none}"
    return LRFinderResult(
        lrs=curve[0],
        losses=curve[1],
        smoothed=curve[2],
        suggestions=suggestions,
        diverged=diverged,
        stopped_early=len(rec_lrs) < steps,
        reason=reason,
    )
