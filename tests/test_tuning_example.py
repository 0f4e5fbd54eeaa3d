"""examples/tune_digits.py runs both keras-tuner searches end to end (slow: minutes)."""

from __future__ import annotations

import pytest

pytest.importorskip("keras_tuner")


@pytest.mark.slow
def test_tune_digits_quick(tmp_path):
    import tune_digits  # examples/ is on sys.path (conftest)

    summary = tune_digits.main(["--quick", "--output-dir", str(tmp_path)])
    assert set(summary) == {"hyperband", "bayesian"}
    for result in summary.values():
        assert result["trials"] >= 2
        assert result["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
        assert {"learning_rate", "schedule", "precision", "accumulation_steps"} <= set(
            result["best"]
        )
