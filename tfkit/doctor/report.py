"""What :func:`tfkit.doctor.examine` found: :class:`Finding` entries gathered in a :class:`Report`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

__all__ = ["SEVERITIES", "Finding", "Report"]

SEVERITIES = ("error", "warning", "info")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One observation of one check.

    Attributes:
        check: stable id of the check that made it (``"initial_loss"``, ...).
        severity: ``"error"`` (training cannot work as set up), ``"warning"``
            (it will train badly) or ``"info"`` (a measurement, nothing to fix).
        message: what is wrong, where (the layer name) and the fix.
        layer: name of the layer concerned, when there is one.
        data: the measurements behind the message (plain floats, lists, dicts).
    """

    check: str
    severity: str
    message: str
    layer: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(
                f"Finding: `severity` must be one of {SEVERITIES}, received {self.severity!r}"
            )

    def __str__(self) -> str:
        where = f" ({self.layer})" if self.layer else ""
        return f"{self.severity.upper():7s} [{self.check}]{where} {self.message}"


@dataclasses.dataclass
class Report:
    """The findings of one :func:`~tfkit.doctor.examine` run.

    Attributes:
        findings: every :class:`Finding`, in check order.
        seconds: wall time each check took, by check id.
    """

    findings: list[Finding]
    seconds: dict[str, float]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def healthy(self) -> bool:
        """True when no check reported an error or a warning."""
        return not self.errors and not self.warnings

    def by_check(self, check: str) -> list[Finding]:
        """The findings of one check, by its id."""
        return [f for f in self.findings if f.check == check]

    def _ordered(self) -> list[Finding]:
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: rank[f.severity])

    def _summary(self) -> str:
        return (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) "
            f"from {len(self.seconds)} check(s) in {sum(self.seconds.values()):.1f} s"
        )

    def __str__(self) -> str:
        lines = [f"tfkit doctor: {self._summary()}"]
        lines += [str(f) for f in self._ordered()]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as a Markdown table (one row per finding, errors first)."""
        lines = [
            "# tfkit doctor report",
            "",
            self._summary() + ".",
            "",
            "| severity | check | layer | message |",
            "|---|---|---|---|",
        ]
        for f in self._ordered():
            message = f.message.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {f.severity} | `{f.check}` | {f.layer or ''} | {message} |")
        lines += ["", "| check | seconds |", "|---|---|"]
        lines += [f"| `{name}` | {s:.2f} |" for name, s in self.seconds.items()]
        return "\n".join(lines) + "\n"

    def plot(self, directory: str | os.PathLike) -> list[str]:
        """Write ``gradient_flow.png`` and ``activations.png`` (when measured) into ``directory``.

        ``gradient_flow.png``: per-layer gradient norm and ||g|| / ||w|| (log
        scale). ``activations.png``: per ReLU-family layer, the fraction of
        units never active on the data sample. Needs matplotlib.

        Returns:
            The paths written.
        """
        from tfkit.plot import plot_report

        return plot_report(self, directory)


def _data_of(findings: list[Finding], check: str, key: str) -> dict | None:
    for f in findings:
        if f.check == check and key in f.data:
            return f.data
    return None
