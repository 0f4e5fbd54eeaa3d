"""Tests that assert a Keras defect (docs/keras-defects.md) say so when Keras fixes it.

Mark a whole test with ``@pytest.mark.keras_defect("<id>")``, or wrap the one
assertion about Keras in ``with keras_defect("<id>"):`` when the test checks
tfkit's answer too. If the assertion fails, that is news about Keras, not a
tfkit bug: the failure reads "Keras defect '<id>' no longer reproduces with
Keras X.Y.Z: this Keras bug is fixed", with the original error after it.
"""

from __future__ import annotations

import contextlib
import pathlib

import pytest

_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "keras-defects.md"


def known_ids() -> set[str]:
    """The defect ids: the ``## <id>`` headings of docs/keras-defects.md."""
    return {
        line[3:].strip()
        for line in _DOC.read_text().splitlines()
        if line.startswith("## ") and " " not in line[3:].strip()
    }


def fixed_message(defect_id: str, error: BaseException | str) -> str:
    import keras
    import tensorflow as tf

    return (
        f"Keras defect '{defect_id}' no longer reproduces with Keras {keras.__version__} "
        f"(TensorFlow {tf.__version__}): this Keras bug is fixed. Update "
        f"docs/keras-defects.md#{defect_id} and decide whether tfkit's workaround is still "
        f"needed. The control's assertion said: {str(error).strip()[:500]}"
    )


def _check_id(defect_id: str) -> None:
    if defect_id not in known_ids():
        raise ValueError(
            f"keras_defect: unknown defect id {defect_id!r}; "
            f"the ids are the headings of docs/keras-defects.md: {sorted(known_ids())}"
        )


@contextlib.contextmanager
def keras_defect(defect_id: str):
    """Run an assertion that holds only while Keras has ``defect_id``."""
    _check_id(defect_id)
    try:
        yield
    except (AssertionError, pytest.fail.Exception) as err:
        pytest.fail(fixed_message(defect_id, err), pytrace=False)


# -- pytest hooks (tests/conftest.py imports them).


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        for mark in item.iter_markers("keras_defect"):
            if len(mark.args) != 1:
                raise pytest.UsageError(f"{item.nodeid}: keras_defect takes one defect id")
            _check_id(mark.args[0])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    mark = item.get_closest_marker("keras_defect")
    if mark is not None and report.when == "call" and report.failed and call.excinfo:
        if call.excinfo.errisinstance((AssertionError, pytest.fail.Exception)):
            report.longrepr = fixed_message(mark.args[0], call.excinfo.value)
    return report
