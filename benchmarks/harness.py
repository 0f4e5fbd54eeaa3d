"""Side-by-side timing: interleave the cases, take medians, report ratios.

Every benchmark in this folder measures its cases in one process, round-robin
(case A, B, C, A, B, C, ...), so slow drift of this noisy 2-core machine hits
all cases alike. Results are ratios to a baseline case, never absolute times;
include a baseline-vs-baseline control row to show the noise floor.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    cases: dict[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Run each zero-argument callable ``warmup + repeats`` times, interleaved.

    Returns the median time in seconds of the timed repeats per case: wall
    time by default, or e.g. ``clock=time.process_time`` for the CPU time of
    all threads (on a shared machine wall time mostly measures the others).
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
    return {name: statistics.median(ts) for name, ts in times.items()}


def ratio_table(medians: dict[str, float], baseline: str, title: str, unit: str = "time") -> str:
    """Format ``medians`` as a Markdown table of ratios to ``baseline``."""
    base = medians[baseline]
    lines = [f"### {title}", "", f"| case | {unit} ratio vs `{baseline}` |", "|---|---|"]
    for name, value in medians.items():
        lines.append(f"| {name} | {value / base:.3f} |")
    return "\n".join(lines)
