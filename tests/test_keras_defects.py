"""The keras_defect marker and context manager: a fixed Keras bug is reported as such."""

import subprocess
import sys
import textwrap

import pytest
from keras_defects import keras_defect, known_ids


def test_ids_are_the_doc_headings():
    assert {
        "schedule-at-micro-step",
        "accumulation-under-mirrored",
        "remat-training-kwarg",
        "reduce-lr-on-schedule",
        "missing-schedules",
        "momentum-not-schedulable",
        "loss-scale-unbounded",
        "loss-scale-first-replica",
        "clip-per-replica",
        "early-stopping-state",
        "backup-restore-inexact",
        "schedule-free-stale-x",
    } == known_ids()


def test_context_manager_passes_while_the_defect_reproduces():
    with keras_defect("clip-per-replica"):
        assert True


def test_context_manager_reports_a_fixed_bug():
    with pytest.raises(pytest.fail.Exception, match="this Keras bug is fixed") as exc:
        with keras_defect("clip-per-replica"):
            assert 1 == 2, "still broken?"
    assert "docs/keras-defects.md#clip-per-replica" in str(exc.value)
    assert "still broken?" in str(exc.value)


def test_unknown_id_is_an_error():
    with pytest.raises(ValueError, match="unknown defect id 'nope'"):
        with keras_defect("nope"):
            pass


def test_marker_turns_the_failure_into_a_fixed_bug_report(tmp_path, root):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(root / 'tests')!r})\n"
        "from keras_defects import pytest_collection_modifyitems, pytest_runtest_makereport\n"
    )
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.keras_defect("remat-training-kwarg")
            def test_keras_still_crashes():
                with pytest.raises(ValueError):
                    pass  # Keras no longer raises: the bug is fixed
            """
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-o",
            "markers=keras_defect(id): x",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 1, out.stdout[-2000:]
    assert "Keras defect 'remat-training-kwarg' no longer reproduces with Keras" in out.stdout
    assert "this Keras bug is fixed" in out.stdout
