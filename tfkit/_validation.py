"""Argument validation shared by every public tfkit constructor.

Every message names the owner, the argument, the value received and what is
allowed; a wrong type is a ``TypeError``, a wrong value a ``ValueError``.
Rules, decided once for the package:

* Booleans come only from ``bool`` (or ``np.bool_``): ``"no"``, ``1`` and
  ``None`` are refused instead of being read by their truthiness.
* Python and NumPy scalars (and 0-d arrays or tensors) are treated alike;
  ``bool`` is never a number.
* Integers must fit the graph dtype they end up in (``int64`` unless stated),
  so ``10**400`` or ``2**70`` fail here, naming the argument, instead of as a
  bare ``OverflowError`` or deep inside TensorFlow.
* Floats must be finite; ``float_dtype="float32"`` also requires the value to
  be representable in float32 (no overflow to inf).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

INT64_MAX = int(np.iinfo(np.int64).max)


def fail(owner: str, name: str, value, allowed: str, exc=ValueError):
    raise exc(f"{owner}: `{name}` must be {allowed}; received {name}={value!r}.")


def _scalar(owner: str, name: str, value):
    """NumPy scalars, 0-d arrays and scalar tensors as the equivalent Python scalar."""
    if isinstance(value, np.generic):
        return value.item()
    if (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and not isinstance(value, numbers.Number)
    ):
        if len(getattr(value, "shape", ())) != 0:
            fail(owner, name, value, "a scalar", TypeError)
        return np.asarray(value).item()
    return value


def check_bool(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool | np.bool_):
        fail(owner, name, value, "True or False (a bool)", TypeError)
    return bool(value)


def check_int(
    owner: str,
    name: str,
    value,
    *,
    low: int | None = None,
    high: int | None = None,
    max_value: int = INT64_MAX,
) -> int:
    """An integer (Python or NumPy) in ``[low, high]`` that fits ``max_value`` (the graph dtype's)."""
    value = _scalar(owner, name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(owner, name, value, "an integer", TypeError)
    value = int(value)
    top = max_value if high is None else min(high, max_value)
    if (low is not None and value < low) or value > top or value < -max_value - 1:
        if low is not None and high is None and value < low:
            fail(owner, name, _Shown(value), f"an integer >= {low}")
        lo = "-inf" if low is None else str(low)
        fail(owner, name, _Shown(value), f"an integer in [{lo}, {top}]")
    return value


def check_float(
    owner: str,
    name: str,
    value,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    float_dtype: str | None = None,
) -> float:
    """A finite real number in the given range, representable in ``float_dtype`` if given."""
    value = _scalar(owner, name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(owner, name, value, "a number", TypeError)
    try:
        number = float(value)
    except OverflowError:
        fail(owner, name, _Shown(value), "a finite number")
    if not math.isfinite(number):
        fail(owner, name, value, "a finite number")
    if float_dtype is not None and abs(number) > float(np.finfo(float_dtype).max):
        fail(
            owner,
            name,
            value,
            f"representable in {float_dtype} (|x| <= {np.finfo(float_dtype).max:g})",
        )
    bad_low = low is not None and (number <= low if low_open else number < low)
    bad_high = high is not None and (number >= high if high_open else number > high)
    if bad_low or bad_high:
        left, right = ("(" if low_open else "["), (")" if high_open or high is None else "]")
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        fail(owner, name, value, f"in {left}{lo}, {hi}{right}")
    return number


def check_number(
    owner: str,
    name: str,
    value,
    *,
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    integer: bool = False,
) -> float | int:
    """Validate a finite real (or integer) number in a range; return it as int or float."""
    value = _scalar(owner, name, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "an integer" if integer else "a number"
        fail(owner, name, value, kind, TypeError)
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond float range (10**400): not a bare OverflowError
        fail(owner, name, _Shown(value), "a finite number that fits a float64")
    if integer:
        if isinstance(value, float) and not value.is_integer() or not finite:
            fail(owner, name, value, "an integer", TypeError)
        value = int(value)
        if abs(value) > INT64_MAX:
            fail(owner, name, _Shown(value), "an integer that fits an int64")
    else:
        # Integers stay integers (step counts read better in configs); the rest is float.
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not finite:
            fail(owner, name, value, "finite")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        if low is not None and high is None:
            allowed = f"> {lo}" if low_open else f">= {lo}"
        elif high is not None and low is None:
            allowed = f"< {hi}" if high_open else f"<= {hi}"
        else:
            allowed = f"in {left}{lo}, {hi}{right}"
        fail(owner, name, value, allowed)
    return value


def check_name(owner: str, name) -> str | None:
    if name is not None and not isinstance(name, str):
        fail(owner, "name", name, "a string or None", TypeError)
    return name


def check_sequence(owner: str, name: str, value, *, min_len: int = 0) -> list:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        fail(owner, name, value, "a list or tuple", TypeError)
    value = list(value)
    if len(value) < min_len:
        fail(owner, name, value, f"a list with at least {min_len} element(s)")
    return value


def check_increasing(owner: str, name: str, values: Sequence[float]) -> None:
    for a, b in zip(values[:-1], values[1:], strict=True):
        if not b > a:
            fail(owner, name, list(values), f"strictly increasing (found {a!r} then {b!r})")


def check_choice(owner: str, name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        fail(owner, name, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


class _Shown:
    """A value for a message; a huge integer is shown by its size (``10**400`` fills a page)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        if isinstance(self.value, numbers.Integral) and abs(int(self.value)) >= 10**30:
            return f"{'-' if self.value < 0 else ''}<an integer of {len(str(abs(int(self.value))))} digits>"
        return repr(self.value)
