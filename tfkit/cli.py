"""The ``tfkit`` command (also ``python -m tfkit``).

Subcommands are small modules that expose ``register(subparsers)``; each adds
its parser and sets ``func`` to the function that runs it. Usage errors (an
unknown subcommand, a bad option) exit with status 2, as argparse does.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tfkit._version import __version__

# Modules providing subcommands, in the order `tfkit --help` lists them.
_COMMAND_MODULES = ("tfkit.cli_info", "tfkit.plot", "tfkit.tuning.cli", "tfkit.doctor.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfkit",
        description="TensorFlow-native training toolkit for Keras 3.",
    )
    parser.add_argument("--version", action="version", version=f"tfkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Keep TensorFlow's C++ start-up chatter out of command output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad values that argparse cannot see, e.g. a schedule argument
        parser.exit(2, f"tfkit {args.command}: error: {err}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
