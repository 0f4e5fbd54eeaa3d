"""``get_scheduler``: Hugging Face's scheduler names (``transformers.get_scheduler``) as tfkit schedules."""

from __future__ import annotations

from tfkit import _validation
from tfkit.schedules._base import LearningRateSchedule, check_number, check_rate, resolve_dtype
from tfkit.schedules.constant import Constant
from tfkit.schedules.cosine import CosineDecay, CosineDecayRestarts
from tfkit.schedules.inverse_sqrt import InverseSqrtDecay
from tfkit.schedules.join import Join
from tfkit.schedules.polynomial import PolynomialDecay
from tfkit.schedules.warmup import Warmup
from tfkit.schedules.warmup_stable_decay import WarmupStableDecay

_OWNER = "get_scheduler"

# name -> the keyword arguments it takes besides the two step counts.
_KEYWORDS = {
    "linear": (),
    "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"),
    "constant": (),
    "constant_with_warmup": (),
    "inverse_sqrt": ("timescale",),
    "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
    "warmup_stable_decay": (
        "num_stable_steps",
        "num_decay_steps",
        "min_lr_ratio",
        "warmup_type",
        "decay_type",
        "num_cycles",
    ),
}
# Names whose learning rate depends on the loss, not on the step.
_NOT_A_SCHEDULE = {
    "reduce_lr_on_plateau": (
        "it lowers the rate when a metric stops improving; use the callback "
        "tfkit.callbacks.ReduceLROnPlateau(...) (same arguments as PyTorch's), on top of "
        "any schedule or a constant learning rate"
    ),
    "greedy": (
        "it adapts the rate to the loss (GreedyLR); no tfkit schedule reproduces it. "
        "For a loss-driven rate use the callback tfkit.callbacks.ReduceLROnPlateau"
    ),
}
NAMES = tuple(_KEYWORDS)


def get_scheduler(
    name: str,
    learning_rate: float,
    num_warmup_steps: int | None = None,
    num_training_steps: int | None = None,
    *,
    dtype: str | None = None,
    **scheduler_specific_kwargs,
) -> LearningRateSchedule:
    """The tfkit schedule for a Hugging Face ``transformers.get_scheduler`` name.

    ``get_scheduler(name, lr, W, T, **kw)(step)`` equals the learning rate of
    ``transformers.get_scheduler(name, opt, W, T, scheduler_specific_kwargs=kw)``
    with ``opt``'s ``lr`` at every step ``0 <= step <= T`` (``step`` = calls
    of ``scheduler.step()`` so far = real optimizer updates). Hugging Face
    counts the warmup inside ``num_training_steps``; the tfkit schedule is
    built with ``decay_steps = T - W`` after a ``Warmup`` of ``W`` steps, so
    it is the same curve. Built from tfkit pieces (``t = T - W``):

    ========================== ===============================================================
    name (keywords)            tfkit schedule
    ========================== ===============================================================
    linear                     Warmup(PolynomialDecay(lr, t, end_learning_rate=0.0), W)
    cosine (num_cycles=0.5)    Warmup(CosineDecay(lr, t, num_cycles=num_cycles), W)
    cosine_with_restarts       Warmup(Join([CosineDecayRestarts(lr, t / num_cycles, t_mul=1.0),
    (num_cycles=1)                          Constant(0.0)], [t]), W)
    polynomial (lr_end=1e-7,   Warmup(PolynomialDecay(lr, t, lr_end, power), W)
    power=1.0)
    constant                   Constant(lr)
    constant_with_warmup       Warmup(Constant(lr), W)
    inverse_sqrt (timescale)   Warmup(InverseSqrtDecay(lr, timescale), W); timescale defaults
                               to W, or 10000 when W is 0
    cosine_with_min_lr         Warmup(CosineDecay(lr, t, alpha=min_lr_rate, num_cycles), W)
    (num_cycles, min_lr or     with min_lr_rate = min_lr / lr
    min_lr_rate)
    cosine_warmup_with_min_lr  Warmup(CosineDecay(lr, t + 1, alpha=min_lr_rate,
    (num_cycles, min_lr or     num_cycles=num_cycles * (t + 1) / t), W - 1,
    min_lr_rate,               initial_learning_rate=lr * warmup_lr_rate, or lr / W
    warmup_lr_rate)            without it) (see below)
    warmup_stable_decay        WarmupStableDecay(lr, W, num_stable_steps, num_decay_steps,
    (num_decay_steps, ...)     alpha=min_lr_ratio, ...); num_stable_steps defaults to
                               T - W - num_decay_steps
    ========================== ===============================================================

    Past ``num_training_steps`` tfkit's rule applies: a finite schedule holds
    its final value. Hugging Face differs there for ``cosine``,
    ``cosine_with_min_lr`` and ``cosine_warmup_with_min_lr``, whose cosine
    keeps going (it rises again after ``T``); ``linear``, ``polynomial``,
    ``cosine_with_restarts`` (0 after ``T``) and ``warmup_stable_decay`` hold
    as tfkit does. ``cosine_warmup_with_min_lr`` evaluates its cosine one step
    ahead (at ``step - W + 1``): its warmup has ``W - 1`` steps and, so that
    step ``T`` still matches, the tfkit cosine spans ``t + 1`` steps; past
    ``T`` it holds Hugging Face's value at ``T``. Hugging Face finds its
    restarts with a floating-point ``(num_cycles * progress) % 1``; tfkit counts
    cycles exactly; only with a restart period of a single step can rounding
    make Hugging Face's restart land one step off.

    "reduce_lr_on_plateau" (and "greedy") depend on the loss, not the step:
    they raise ``ValueError`` pointing to ``tfkit.callbacks.ReduceLROnPlateau``.

    Args:
        name: a Hugging Face ``SchedulerType`` name (listed above).
        learning_rate: the optimizer's base learning rate (Hugging Face's
            ``optimizer.defaults["lr"]``), >= 0.
        num_warmup_steps: warmup steps ``W``, counted inside
            ``num_training_steps``; required by every name but "constant".
        num_training_steps: total steps ``T``; required by the decaying names
            (and by "warmup_stable_decay" unless ``num_stable_steps`` is given,
            in which case a ``T`` given must equal the sum of the phases).
            "constant", "constant_with_warmup" and "inverse_sqrt" never end
            and take no ``T``; one given is unused, as in Hugging Face, so the
            same call works for every name (the Trainer passes both counts to
            every name, and "constant" takes no ``W`` either), but it is still
            validated: an unused count must be None or an integer >= 0.
            Step counts are integers (``10.0`` is refused, never truncated).
        dtype: ``"float32"`` or ``"float64"`` for the values (tfkit's rule:
            float64 when ``learning_rate`` is a float64 array or tensor, such as
            ``np.float64(2e-4)``, else float32). With float64 the values are
            Hugging Face's float64 values.
        **scheduler_specific_kwargs: the name's keywords (Hugging Face's
            ``scheduler_specific_kwargs`` dict, passed as keywords).

    Returns:
        A tfkit ``LearningRateSchedule`` (serializable, ``safe_mode=True``).

    Example:
        >>> s = get_scheduler("cosine", 0.1, num_warmup_steps=10, num_training_steps=110)
        >>> [round(float(s(t)), 4) for t in (0, 5, 10, 60, 110)]
        [0.0, 0.05, 0.1, 0.05, 0.0]
        >>> type(s).__name__, type(s.schedule).__name__
        ('Warmup', 'CosineDecay')

    Reference: ``transformers.get_scheduler`` and the ``get_*_schedule*``
    functions of ``transformers.optimization``.
    """
    name = getattr(name, "value", name)  # a transformers SchedulerType enum member
    if isinstance(name, str) and name in _NOT_A_SCHEDULE:
        raise ValueError(
            f"{_OWNER}: name={name!r} is not a function of the step: {_NOT_A_SCHEDULE[name]}."
        )
    if not isinstance(name, str) or name not in _KEYWORDS:
        raise ValueError(
            f"{_OWNER}: `name` must be one of {', '.join(map(repr, NAMES))} "
            f"(or 'reduce_lr_on_plateau', a callback in tfkit); received name={name!r}."
        )
    unknown = sorted(set(scheduler_specific_kwargs) - set(_KEYWORDS[name]))
    if unknown:
        allowed = ", ".join(_KEYWORDS[name]) or "none"
        raise TypeError(
            f"{_OWNER}: name={name!r} takes the keyword(s) {allowed}; received unexpected "
            f"{', '.join(f'{k}={scheduler_specific_kwargs[k]!r}' for k in unknown)}."
        )
    dtype = resolve_dtype(_OWNER, dtype, learning_rate)
    lr = check_rate(_OWNER, "learning_rate", learning_rate, dtype)
    kw = scheduler_specific_kwargs
    if name in ("constant", "constant_with_warmup", "inverse_sqrt"):
        # Unused (the schedule never ends), but never unchecked nonsense.
        _unused_steps("num_training_steps", num_training_steps)
    if name == "constant":
        _unused_steps("num_warmup_steps", num_warmup_steps)
        return Constant(lr, dtype=dtype)
    w = _steps("num_warmup_steps", num_warmup_steps, name)
    if name == "constant_with_warmup":
        return Warmup(Constant(lr, dtype=dtype), w)
    if name == "inverse_sqrt":
        timescale = kw.get("timescale")
        if timescale is None:
            timescale = w or 10_000
        timescale = check_number(_OWNER, "timescale", timescale, low=1)
        return Warmup(InverseSqrtDecay(lr, timescale, dtype=dtype), w)
    if name == "warmup_stable_decay":
        return _wsd(lr, w, num_training_steps, kw, dtype)
    total = _steps("num_training_steps", num_training_steps, name)
    if total <= w:
        raise ValueError(
            f"{_OWNER}: name={name!r} needs `num_training_steps` > `num_warmup_steps` (the "
            f"warmup is counted inside the total); received num_training_steps={total!r}, "
            f"num_warmup_steps={w!r}."
        )
    t = total - w
    if name == "linear":
        return Warmup(PolynomialDecay(lr, t, end_learning_rate=0.0, dtype=dtype), w)
    if name == "cosine":
        cycles = _cycles(kw.get("num_cycles", 0.5))
        return Warmup(CosineDecay(lr, t, num_cycles=cycles, dtype=dtype), w)
    if name == "cosine_with_restarts":
        cycles = check_number(
            _OWNER, "num_cycles", kw.get("num_cycles", 1), low=0, low_open=True, high=t
        )
        restarts = CosineDecayRestarts(lr, t / cycles, t_mul=1.0, dtype=dtype)
        return Warmup(Join([restarts, Constant(0.0, dtype=dtype)], [t]), w)
    if name == "polynomial":
        lr_end = check_rate(_OWNER, "lr_end", kw.get("lr_end", 1e-7), dtype)
        if not lr > lr_end:
            raise ValueError(
                f"{_OWNER}: `lr_end` must be smaller than `learning_rate` (as in Hugging Face); "
                f"received lr_end={lr_end!r}, learning_rate={lr!r}."
            )
        power = check_number(_OWNER, "power", kw.get("power", 1.0), low=0, low_open=True)
        decay = PolynomialDecay(lr, t, end_learning_rate=lr_end, power=power, dtype=dtype)
        return Warmup(decay, w)
    rate = _min_lr_rate(lr, kw, dtype)
    cycles = _cycles(kw.get("num_cycles", 0.5))
    if name == "cosine_with_min_lr":
        return Warmup(CosineDecay(lr, t, alpha=rate, num_cycles=cycles, dtype=dtype), w)
    # cosine_warmup_with_min_lr: warmup r + (1 - r) * step / (W - 1) reaches lr at step
    # W - 1, where the cosine (evaluated at step - W + 1) starts.
    warmup_lr_rate = kw.get("warmup_lr_rate")
    if warmup_lr_rate is None:
        if w < 1:
            raise ValueError(
                f"{_OWNER}: name='cosine_warmup_with_min_lr' needs `num_warmup_steps` >= 1: "
                "with 0 Hugging Face starts its cosine one step in, at (step + 1) / T, which no "
                f"tfkit schedule starts with; received num_warmup_steps={w!r}."
            )
        start = lr / w
    else:
        warmup_lr_rate = check_number(_OWNER, "warmup_lr_rate", warmup_lr_rate, low=0, high=1)
        if w < 2:
            raise ValueError(
                f"{_OWNER}: name='cosine_warmup_with_min_lr' with `warmup_lr_rate` needs "
                "`num_warmup_steps` >= 2 (its ramp has num_warmup_steps - 1 steps); received "
                f"num_warmup_steps={w!r}, warmup_lr_rate={warmup_lr_rate!r}."
            )
        start = lr * warmup_lr_rate
    decay = CosineDecay(lr, t + 1, alpha=rate, num_cycles=cycles * (t + 1) / t, dtype=dtype)
    return Warmup(decay, w - 1, initial_learning_rate=start)


def _steps(arg: str, value, name: str) -> int:
    if value is None:
        raise ValueError(
            f"{_OWNER}: name={name!r} requires `{arg}` (an integer >= 0); received {arg}=None."
        )
    return _validation.check_int(_OWNER, arg, value, low=0)


def _unused_steps(arg: str, value) -> None:
    if value is not None:
        _validation.check_int(_OWNER, arg, value, low=0)


def _cycles(value) -> float:
    return check_number(_OWNER, "num_cycles", value, low=0, high=1e300)


def _min_lr_rate(lr: float, kw: dict, dtype: str) -> float:
    min_lr, min_lr_rate = kw.get("min_lr"), kw.get("min_lr_rate")
    if (min_lr is None) == (min_lr_rate is None):
        raise ValueError(
            f"{_OWNER}: exactly one of `min_lr` and `min_lr_rate` must be given; received "
            f"min_lr={min_lr!r}, min_lr_rate={min_lr_rate!r}."
        )
    if min_lr is not None:
        min_lr = check_rate(_OWNER, "min_lr", min_lr, dtype)
        if lr == 0 or min_lr > lr:
            raise ValueError(
                f"{_OWNER}: `min_lr` must be in [0, learning_rate] with learning_rate > 0; "
                f"received min_lr={min_lr!r}, learning_rate={lr!r}."
            )
        return min_lr / lr
    return check_number(_OWNER, "min_lr_rate", min_lr_rate, low=0, high=1)


def _wsd(lr: float, w: int, total, kw: dict, dtype: str) -> WarmupStableDecay:
    if "num_decay_steps" not in kw:
        raise ValueError(
            f"{_OWNER}: name='warmup_stable_decay' requires `num_decay_steps` (an integer "
            "steps >= 0); received num_decay_steps=None."
        )
    d = _validation.check_int(_OWNER, "num_decay_steps", kw["num_decay_steps"], low=0)
    stable = kw.get("num_stable_steps")
    if stable is None:
        if total is None:
            raise ValueError(
                f"{_OWNER}: name='warmup_stable_decay' requires `num_training_steps` or "
                "`num_stable_steps`; received num_training_steps=None, num_stable_steps=None."
            )
        total = _validation.check_int(_OWNER, "num_training_steps", total, low=0)
        stable = total - w - d
        if stable < 0:
            raise ValueError(
                f"{_OWNER}: `num_training_steps` must be >= num_warmup_steps + num_decay_steps "
                f"(the stable phase gets the rest); received num_training_steps={total!r}, "
                f"num_warmup_steps={w!r}, num_decay_steps={d!r}."
            )
    else:
        stable = _validation.check_int(_OWNER, "num_stable_steps", stable, low=0)
        # Hugging Face warns and uses num_stable_steps; a total that disagrees would be ignored.
        if total is not None and _validation.check_int(
            _OWNER, "num_training_steps", total, low=0
        ) != w + stable + d:
            raise ValueError(
                f"{_OWNER}: `num_training_steps` must equal num_warmup_steps + num_stable_steps "
                f"+ num_decay_steps when both are given; received num_training_steps={total!r}, "
                f"num_warmup_steps={w!r}, num_stable_steps={stable!r}, num_decay_steps={d!r}."
            )
    ratio = check_number(_OWNER, "min_lr_ratio", kw.get("min_lr_ratio", 0.0), low=0, high=1)
    return WarmupStableDecay(
        lr,
        warmup_steps=w,
        stable_steps=stable,
        decay_steps=d,
        alpha=ratio,
        warmup_type=kw.get("warmup_type", "linear"),
        decay_type=kw.get("decay_type", "cosine"),
        num_cycles=kw.get("num_cycles", 0.5),
        dtype=dtype,
    )
