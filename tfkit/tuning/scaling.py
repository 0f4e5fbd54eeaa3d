"""Scale a learning rate tuned at one batch size to another.

    linear:  lr_new = lr * new_batch / base_batch          (Goyal et al. 2017)
    sqrt:    lr_new = lr * sqrt(new_batch / base_batch)    (Krizhevsky 2014; Hoffer et al. 2017)

The linear rule keeps the expected SGD update per example constant and is the
usual choice for SGD with momentum (with a warmup for large ratios); the square
root rule keeps the variance of the update constant and is commonly used with
adaptive optimizers such as Adam.
"""

from __future__ import annotations

import math

from tfkit import _validation

__all__ = ["scale_learning_rate", "RULES"]

RULES = ("linear", "sqrt")


def scale_learning_rate(lr: float, base_batch: int, new_batch: int, rule: str = "linear") -> float:
    """Return the learning rate for ``new_batch`` given one tuned at ``base_batch``.

    Args:
        lr: learning rate tuned at ``base_batch``; finite and > 0.
        base_batch: batch size ``lr`` was tuned at; int >= 1.
        new_batch: batch size to scale to; int >= 1 (the effective batch,
            ``micro_batch * accumulation_steps``, when accumulating).
        rule: ``"linear"`` or ``"sqrt"`` (formulas in the module docstring).

    Example:
        >>> from tfkit.tuning.scaling import scale_learning_rate
        >>> scale_learning_rate(0.1, 256, 1024)
        0.4
        >>> scale_learning_rate(1e-3, 32, 128, rule="sqrt")
        0.002

    References: P. Goyal et al., "Accurate, Large Minibatch SGD", 2017
    (arXiv:1706.02677); A. Krizhevsky, "One weird trick for parallelizing
    convolutional neural networks", 2014 (arXiv:1404.5997).
    """
    owner = "scale_learning_rate"
    lr = _validation.check_float(owner, "lr", lr, low=0, low_open=True)
    base_batch = _validation.check_int(owner, "base_batch", base_batch, low=1)
    new_batch = _validation.check_int(owner, "new_batch", new_batch, low=1)
    _validation.check_choice(owner, "rule", rule, RULES)
    ratio = new_batch / base_batch  # int / int: correctly rounded, finite for int64 sizes
    scaled = lr * ratio if rule == "linear" else lr * math.sqrt(ratio)
    if not math.isfinite(scaled) or scaled == 0:
        _validation.fail(
            owner,
            "lr",
            lr,
            f"such that the {rule} rule gives a finite rate > 0 for "
            f"new_batch / base_batch = {new_batch}/{base_batch} (it is {scaled!r})",
        )
    return scaled
