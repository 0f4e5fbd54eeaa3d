"""The versions pyproject.toml declares are the versions CI tests (make test-compat)."""

import os
import re

import pytest


def _read(root, name):
    return (root / name).read_text()


def _declared_minimums(root) -> dict[str, str]:
    deps = re.search(r"^dependencies = \[(.*?)\]", _read(root, "pyproject.toml"), re.S | re.M)
    return dict(re.findall(r'"(tensorflow|keras)>=([^"]+)"', deps.group(1)))


def _pins(root, name) -> dict[str, str]:
    return dict(re.findall(r"^(tensorflow|keras)==(\S+)$", _read(root, name), re.M))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_oldest_constraints_pin_exactly_the_declared_minimums(root):
    declared = _declared_minimums(root)
    assert set(declared) == {"tensorflow", "keras"}
    assert _pins(root, "constraints-oldest.txt") == declared


def test_newest_pins_satisfy_the_declared_ranges(root):
    declared = _declared_minimums(root)
    newest = _pins(root, "constraints.txt")
    for name, minimum in declared.items():
        assert _version(newest[name]) >= _version(minimum), name


@pytest.mark.skipif("TFKIT_COMPAT" not in os.environ, reason="only in make test-compat")
def test_this_run_uses_the_versions_it_claims(root):
    import keras
    import tensorflow as tf

    which = os.environ["TFKIT_COMPAT"]
    pins = _pins(root, {"oldest": "constraints-oldest.txt", "newest": "constraints.txt"}[which])
    assert {"tensorflow": tf.__version__, "keras": keras.__version__} == pins
