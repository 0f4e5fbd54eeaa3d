"""Side-by-side timing: interleave the cases, take medians, report ratios and their spread.

Every benchmark in this folder measures its cases in one process, round-robin
(case A, B, C, A, B, C, ...), so slow drift of this noisy 2-core machine hits
all cases alike. Results are ratios to a baseline case, never absolute times;
include a baseline-vs-baseline control row to show the noise floor.

The clock is CPU time of the whole process by default (``time.process_time``):
on a shared machine wall time mostly measures the other jobs. Each ratio is
the median of the *paired* per-round ratios (case / baseline within the same
round), and the table gives their interquartile range as the spread, so a
reader sees at once whether a difference is larger than the noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


class Medians(dict):
    """``{case: median seconds}``, keeping every timed repeat in ``times`` for the spread."""

    def __init__(self, times: dict[str, list[float]]):
        super().__init__({name: statistics.median(ts) for name, ts in times.items()})
        self.times = times


def interleaved_medians(
    cases: dict[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 1,
    clock: Callable[[], float] = time.process_time,
) -> Medians:
    """Run each zero-argument callable ``warmup + repeats`` times, interleaved.

    Returns the median time in seconds of the timed repeats per case (a
    :class:`Medians`, which also holds every repeat). The default clock is the
    CPU time of all threads of this process; pass ``clock=time.perf_counter``
    for wall time.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return Medians(times)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def ratio_table(medians: dict[str, float], baseline: str, title: str, unit: str = "time") -> str:
    """Format ``medians`` as a Markdown table of ratios to ``baseline``.

    With the repeats of :func:`interleaved_medians` at hand, the ratio is the
    median of the paired per-round ratios and a second column gives their
    interquartile range; otherwise the ratio of the medians, without spread.
    """
    times = getattr(medians, "times", None)
    if times is None:
        base = medians[baseline]
        lines = [f"### {title}", "", f"| case | {unit} ratio vs `{baseline}` |", "|---|---|"]
        for name, value in medians.items():
            lines.append(f"| {name} | {value / base:.3f} |")
        return "\n".join(lines)
    lines = [
        f"### {title}",
        "",
        f"| case | {unit} ratio vs `{baseline}` | spread (p25–p75 of paired ratios) |",
        "|---|---|---|",
    ]
    base = times[baseline]
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base, strict=True)]
        q1, q2, q3 = _quartiles(ratios)
        lines.append(f"| {name} | {q2:.3f} | {q1:.3f}–{q3:.3f} |")
    return "\n".join(lines)
