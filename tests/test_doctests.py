"""Every docstring example in the package runs: doctest over every module of tfkit.

The module list is walked, not written down, so a new module is covered the
day it lands. A module whose optional dependency is missing is reported as
skipped, with the reason, never dropped silently.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil

import pytest

import tfkit

# Module -> the optional package it needs (an extra of pyproject.toml).
OPTIONAL = {"tfkit.tuning.hypermodel": "keras_tuner"}


def _modules() -> list[str]:
    package = pathlib.Path(tfkit.__file__).parent
    names = ["tfkit"]
    names += [m.name for m in pkgutil.walk_packages([str(package)], prefix="tfkit.")]
    return sorted(names)


def test_the_walk_finds_the_package():
    names = _modules()
    assert {"tfkit.schedules.one_cycle", "tfkit.precision.wrap", "tfkit.cli.plot"} <= set(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name], reason=f"{name} needs the optional {OPTIONAL[name]}")
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        # Only the examples written in this module, not those of names it imports.
        if (
            test.filename
            and pathlib.Path(test.filename).resolve() != pathlib.Path(module.__file__).resolve()
        ):
            continue
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
