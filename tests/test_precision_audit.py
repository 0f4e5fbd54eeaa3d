"""tfkit.precision.audit: every check fires on a model with the problem and not on one without."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfkit.precision.audit import Finding, audit
from tfkit.precision.loss_scale_optimizer import LossScaleOptimizer
from tfkit.precision.policy import set_policy


def codes(findings):
    return sorted((f.layer, f.code) for f in findings)


def mlp(
    policy="mixed_float16", hidden=64, features=64, output_dtype="float32", activation="softmax"
):
    with set_policy(policy):
        inputs = keras.Input((features,), name="x")
        h = keras.layers.Dense(hidden, activation="relu", name="hidden")(inputs)
        outputs = keras.layers.Dense(10, activation=activation, dtype=output_dtype, name="probs")(h)
        return keras.Model(inputs, outputs, name="mlp")


def test_clean_mixed_model_has_no_findings():
    model = mlp()
    model.compile(LossScaleOptimizer(keras.optimizers.Adam()), "sparse_categorical_crossentropy")
    assert audit(model, batch_size=64) == []


def test_clean_float32_model_has_no_findings_even_with_odd_sizes():
    model = mlp("float32", hidden=30, features=13)
    model.compile("adam", "sparse_categorical_crossentropy")
    assert audit(model, batch_size=30) == []  # no tensor cores in float32: nothing to report


def test_float16_softmax_output():
    model = mlp(output_dtype=None)
    findings = [f for f in audit(model) if f.code == "half_output"]
    assert codes(findings) == [("probs", "half_output")]
    (finding,) = findings
    assert "softmax output" in finding.problem and "float16" in finding.problem
    assert "dtype='float32'" in finding.fix
    assert "probs" in str(finding) and "Fix:" in str(finding)


def test_bfloat16_output_without_softmax():
    model = mlp("mixed_bfloat16", output_dtype=None, activation=None)
    findings = [f for f in audit(model) if f.code == "half_output"]
    assert codes(findings) == [("probs", "half_output")]
    assert "bfloat16" in findings[0].problem and "softmax" not in findings[0].problem


def test_float32_output_fixed_by_final_activation_layer():
    with set_policy("mixed_float16"):
        inputs = keras.Input((64,))
        logits = keras.layers.Dense(16, name="logits")(inputs)
        outputs = keras.layers.Activation("linear", dtype="float32", name="to_f32")(logits)
        model = keras.Model(inputs, outputs)
    assert audit(model) == []


def test_intermediate_float16_softmax_layer():
    with set_policy("mixed_float16"):
        inputs = keras.Input((64,))
        h = keras.layers.Dense(16)(inputs)
        attention = keras.layers.Softmax(name="attn")(h)
        outputs = keras.layers.Dense(8, dtype="float32", name="out")(attention)
        model = keras.Model(inputs, outputs)
    assert codes(audit(model)) == [("attn", "half_softmax")]
    with set_policy("mixed_float16"):
        inputs = keras.Input((64,))
        h = keras.layers.Dense(16)(inputs)
        attention = keras.layers.Softmax(name="attn", dtype="float32")(h)
        outputs = keras.layers.Dense(8, dtype="float32", name="out")(attention)
        model = keras.Model(inputs, outputs)
    assert audit(model) == []


def test_float16_loss():
    model = mlp()
    model.compile(
        LossScaleOptimizer(keras.optimizers.Adam()),
        keras.losses.SparseCategoricalCrossentropy(dtype="float16"),
    )
    assert codes(audit(model)) == [("mlp", "half_loss")]
    model.compile(
        LossScaleOptimizer(keras.optimizers.Adam()),
        keras.losses.SparseCategoricalCrossentropy(),
    )
    assert audit(model) == []


def test_units_filters_input_features_and_batch_not_multiple_of_8():
    model = mlp(hidden=30, features=13)
    findings = audit(model, batch_size=30)
    assert codes(findings) == [("hidden", "not_multiple_of_8"), ("mlp", "not_multiple_of_8")]
    hidden = next(f for f in findings if f.layer == "hidden")
    assert "units=30" in hidden.problem and "13 input features" in hidden.problem
    assert "units=32" in hidden.fix and "16 input features" in hidden.fix
    batch = next(f for f in findings if f.layer == "mlp")
    assert "batch_size=30" in batch.problem and "batch_size=32" in batch.fix

    with set_policy("mixed_bfloat16"):
        conv = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(12, 3, name="conv"),
                keras.layers.Conv2D(16, 3, name="conv_ok_filters"),
                keras.layers.Flatten(),
                keras.layers.Dense(10, dtype="float32", name="head"),
            ],
            name="cnn",
        )
    findings = audit(conv, batch_size=64)
    assert codes(findings) == [
        ("conv", "not_multiple_of_8"),
        ("conv_ok_filters", "not_multiple_of_8"),
    ]
    assert "filters=12" in findings[0].problem and "3 input features" in findings[0].problem
    assert "filters" not in findings[1].problem and "12 input features" in findings[1].problem


def test_recurrent_units():
    with set_policy("mixed_float16"):
        model = keras.Sequential(
            [
                keras.Input((5, 8)),
                keras.layers.LSTM(20, name="lstm"),
                keras.layers.Dense(8, dtype="float32"),
            ]
        )
    assert codes(audit(model)) == [("lstm", "not_multiple_of_8")]


def test_half_precision_variables():
    with set_policy("mixed_float16"):
        inputs = keras.Input((64,))
        h = keras.layers.Dense(16, dtype="float16", name="pure_half")(inputs)
        h = keras.layers.BatchNormalization(dtype="float16", name="bn")(h)
        h = keras.layers.BatchNormalization(name="bn_mixed")(h)  # float32 variables: fine
        outputs = keras.layers.Dense(8, dtype="float32", name="out")(h)
        model = keras.Model(inputs, outputs)
    findings = [f for f in audit(model) if f.code == "half_variable"]
    assert {f.layer for f in findings} == {"pure_half", "bn"}
    assert len(findings) == 2 + 4  # kernel, bias; gamma, beta, moving mean, moving variance
    assert all("mixed_float16" in f.fix for f in findings)


def test_nested_model_layers_are_audited():
    inner = mlp(hidden=12)
    with set_policy("mixed_float16"):
        inputs = keras.Input((64,))
        outer = keras.Model(inputs, inner(inputs), name="outer")
    assert codes(audit(outer)) == [("hidden", "not_multiple_of_8")]


def test_subclassed_model_output_is_traced():
    class Net(keras.Model):
        def __init__(self, out_dtype=None):
            super().__init__(name="net")
            self.hidden = keras.layers.Dense(16, name="hidden")
            self.head = keras.layers.Dense(8, name="head", dtype=out_dtype)

        def call(self, x):
            return self.head(self.hidden(x))

    with set_policy("mixed_float16"):
        bad, good = Net(), Net("float32")
    bad(np.ones((2, 64), "float32"))
    good(np.ones((2, 64), "float32"))
    assert [f.code for f in audit(bad)] == ["half_output"]
    assert audit(good) == []


def test_optimizer_checks():
    model = mlp()
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy", auto_scale_loss=False)
    assert codes(audit(model)) == [("mlp", "no_loss_scaling")]
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy")  # Keras wraps it
    assert codes(audit(model)) == [("mlp", "unbounded_loss_scale")]
    model.compile(LossScaleOptimizer(keras.optimizers.Adam()), "sparse_categorical_crossentropy")
    assert audit(model) == []

    bf16 = mlp("mixed_bfloat16")
    bf16.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()), "mse")
    assert codes(audit(bf16)) == [("mlp", "unneeded_loss_scaling")]
    bf16.compile(keras.optimizers.Adam(), "mse")
    assert audit(bf16) == []


def test_bad_input():
    with pytest.raises(TypeError, match="model"):
        audit(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="batch_size"):
        audit(mlp(), batch_size=0)
    unbuilt = keras.Sequential([keras.layers.Dense(3)], name="unbuilt")
    with pytest.raises(ValueError, match="not built"):
        audit(unbuilt)


def test_finding_is_a_small_dataclass():
    f = Finding("dense", "problem.", "fix.", "half_output")
    assert (f.layer, f.problem, f.fix, f.code) == ("dense", "problem.", "fix.", "half_output")
    assert str(f) == "[half_output] dense: problem. Fix: fix."
