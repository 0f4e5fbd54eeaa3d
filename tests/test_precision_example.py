"""examples/precision_digits.py, and mixed_float16 accuracy parity with float32 on real data."""

from __future__ import annotations

import pytest

precision_digits = pytest.importorskip("precision_digits")  # examples/ is on sys.path (conftest)


def test_mixed_float16_reaches_float32_accuracy_on_digits():
    fp32 = precision_digits.train("float32", epochs=6, seed=0)
    fp16 = precision_digits.train("mixed_float16", epochs=6, seed=0)
    assert fp32["policy"] == "float32" and fp16["policy"] == "mixed_float16"
    assert fp32["test_accuracy"] > 0.93  # the float32 baseline actually learned
    assert abs(fp16["test_accuracy"] - fp32["test_accuracy"]) <= 0.01
    assert fp16["loss_scale"] >= 1.0 and fp16["skipped_steps"] >= 0
    assert fp16["findings"] == [] and fp32["findings"] == []


def test_cli_auto_policy_one_epoch(capsys):
    from tfkit.precision import auto_policy

    result = precision_digits.main(["--precision", "auto", "--epochs", "1"])
    assert result["policy"] == auto_policy()[0]
    out = capsys.readouterr().out
    assert f"policy {result['policy']}" in out and "test accuracy" in out


def test_cli_rejects_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        precision_digits.parse_args(["--precision", "fp16"])
    assert "invalid choice" in capsys.readouterr().err
