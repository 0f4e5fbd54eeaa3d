"""The ``tfkit`` command (also ``python -m tfkit``).

Each subcommand is a module with ``register(subparsers)``: it adds its parser
and sets ``func`` to the function that runs it (and ``imports_tensorflow=False``
if it never needs TensorFlow; otherwise TensorFlow is imported, quietly, first). To add one, write such a module
(importing nothing heavy at module level: ``tfkit --help`` must not import
TensorFlow) and list it in :data:`COMMAND_MODULES`.

Errors a user can cause (a bad option, a bad value, an unwritable path) print
one line on stderr and exit with status 2; a missing optional dependency exits
with status 1. TensorFlow's C++ log is silenced unless ``-v`` is given (or
``TF_CPP_MIN_LOG_LEVEL`` is already set).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile

from tfkit._version import __version__

# Modules providing subcommands, in the order `tfkit --help` lists them.
COMMAND_MODULES = ("tfkit.cli.info", "tfkit.cli.plot", "tfkit.cli.lr_find", "tfkit.cli.doctor")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors on one line: ``tfkit plot: error: ... (see --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def command_modules() -> list[str]:
    """The modules whose ``register`` builds the ``tfkit`` subcommands."""
    return list(COMMAND_MODULES)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="tfkit",
        description="TensorFlow-native training toolkit for Keras 3.",
    )
    parser.add_argument("--version", action="version", version=f"tfkit {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show TensorFlow's C++ log messages (hidden by default)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in command_modules():
        importlib.import_module(name).register(subparsers)
    return parser


# A C++ log line: severity letter, MMDD, time, thread, file:line] message.
_CPP_LOG_LINE = re.compile(r"^([IWEF])\d{4} \S+ +\d+ \S+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def _import_tensorflow_quietly(min_level: int) -> None:
    """Import TensorFlow with its C++ start-up log below ``min_level`` removed.

    Recent TensorFlow (2.21 here) logs its start-up (oneDNN, CUDA probing)
    through absl before absl is initialised, and those lines ignore
    ``TF_CPP_MIN_LOG_LEVEL``; so stderr (file descriptor 2, where C++ writes) is
    captured during the import and every other line, Python's included, is
    passed on.
    """
    if "tensorflow" in sys.modules or min_level <= 0:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                match = _CPP_LOG_LINE.match(line)
                if line.startswith(_ABSL_PREAMBLE) or (
                    match and "IWEF".index(match[1]) < min_level
                ):
                    continue
                print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``tfkit ARGV``; returns the exit status (usage errors raise ``SystemExit(2)``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Before anything imports TensorFlow: it reads the level once, at start-up.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if args.verbose else "3")
    prog = f"tfkit {args.command}"
    try:
        if getattr(args, "imports_tensorflow", True):
            level = os.environ["TF_CPP_MIN_LOG_LEVEL"]
            _import_tensorflow_quietly(int(level) if level.isdigit() else 0)
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # a bad value or path that argparse could not see
        parser.exit(2, f"{prog}: error: {_one_line(err)}\n")
    except ImportError as err:  # an optional dependency is missing
        parser.exit(1, f"{prog}: error: {_one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{prog}: interrupted\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
