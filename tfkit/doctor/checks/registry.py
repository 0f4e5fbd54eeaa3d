"""The registry of the doctor's checks: check id -> function(context) -> list of findings."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CHECKS", "register"]

# Filled by the @register decorators of the family modules (imported by the package).
CHECKS: dict[str, Callable] = {}


def register(check_id: str):
    """Record the decorated function as the check ``check_id`` (ids are listed in ``tfkit.doctor._ids``)."""

    def add(function: Callable) -> Callable:
        if check_id in CHECKS:
            raise ValueError(f"doctor: check id {check_id!r} is registered twice.")
        CHECKS[check_id] = function
        return function

    return add
