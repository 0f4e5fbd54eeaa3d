"""The docstring examples of tfkit.precision run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["policy", "loss_scale_optimizer", "audit"])
def test_docstring_examples(module):
    mod = importlib.import_module(f"tfkit.precision.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
