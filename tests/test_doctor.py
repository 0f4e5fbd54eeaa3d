"""tfkit.doctor: each check fires on its broken set-up and stays silent on every healthy one."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import tfkit
from tfkit import doctor
from tfkit.doctor import checks as _checks
from tfkit.optimizers import optimizer_chain

FAST = {"time_budget": 15.0, "overfit_steps": 300, "sample_size": 128}


# ------------------------------------------------------------------ data and helpers


def _classification(n=128, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (np.argmax(x[:, :classes], axis=1)).astype("int32")
    return x, y


def _images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
    return x, y


def _tokens(n=96, length=12, vocab=40, seed=0):
    """Padded token sequences (0 = padding) of random lengths."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, size=(n, length)).astype("int32")
    lengths = rng.integers(3, length + 1, size=n)
    x[np.arange(length)[None, :] >= lengths[:, None]] = 0
    y = (x[:, 0] % 3).astype("int32")
    return x, y


def _snapshot(model):
    """Every variable of the model, its metrics and its optimizer chain, by identity."""
    variables = list(model.variables) + list(model.metrics_variables)
    for opt in optimizer_chain(model.optimizer):
        variables += list(opt.variables)
        for inner in getattr(opt, "optimizers", None) or []:  # MultiOptimizer's groups
            variables += list(inner.variables)
    return {id(v): (v, np.array(v.numpy(), copy=True)) for v in variables}


def _assert_restored(before, model):
    after = _snapshot(model)
    for key, (v, value) in before.items():
        assert key in after, f"variable {v.path} no longer tracked"
        now = np.asarray(v.numpy())
        assert now.dtype == value.dtype and now.tobytes() == value.tobytes(), v.path


def _examine(model, data, **kwargs):
    # The doctor builds optimizer slots and metrics that Keras defers to the first step;
    # build them here too so that the snapshot covers them.
    _build(model, data)
    before = _snapshot(model)
    report = doctor.examine(model, data, **{**FAST, **kwargs})
    _assert_restored(before, model)
    return report


def _build(model, data):
    if isinstance(data, tf.data.Dataset):
        batch = next(iter(data))
    else:
        batch = tf.nest.map_structure(lambda a: np.asarray(a)[:8], tuple(data))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)


def _problems(report):
    return [str(f) for f in report.findings if f.severity != "info"]


def _only(report, check, severity):
    hits = [f for f in report.findings if f.check == check and f.severity == severity]
    assert hits, str(report)
    return hits


# ------------------------------------------------------------------ healthy set-ups


def _mlp(jit_compile=False):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu", name="hidden_1"),
            keras.layers.Dense(32, activation="relu", name="hidden_2"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model, _classification()


def _cnn_batchnorm():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model, _images()


def _transformer():
    inputs = keras.Input((12,), dtype="int32")
    e = keras.layers.Embedding(40, 16, mask_zero=True)(inputs)
    a = keras.layers.MultiHeadAttention(2, 8)(e, e)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([e, a]))
    f = keras.layers.Dense(32, activation="relu")(h)
    f = keras.layers.Dense(16)(f)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))
    p = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(3)(p)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model, _tokens()


def _mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(3, dtype="float32"),
        ]
    )
    model.compile(
        tfkit.LossScaleOptimizer(keras.optimizers.Adam(1e-3)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, _classification()


def _accumulation():
    model, data = _mlp()
    model.compile(
        tfkit.GradientAccumulator(keras.optimizers.Adam(1e-3), accumulation_steps=2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, data


def _recompute():
    block = keras.Sequential(
        [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(32, activation="relu")],
        name="block",
    )
    model = keras.Sequential([keras.Input((8,)), tfkit.Recompute(block), keras.layers.Dense(3)])
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model, _classification()


def _parameter_groups():
    model, data = _mlp()

    groups = [keras.optimizers.Adam(1e-3), keras.optimizers.SGD(0.05, momentum=0.9)]

    def select(variable):
        return groups[0 if "logits" in variable.path else 1]

    optimizer = keras.optimizers.MultiOptimizer(select)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, data


def _binary():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    x, y = _classification()
    return model, (x, (y == 0).astype("float32")[:, None])


def _regression():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x, _ = _classification()
    return model, (x, np.stack([x[:, 0] * x[:, 1], np.sin(x[:, 2])], axis=1))


def _token_lm():
    """Per-token prediction with padding masks and padding labels ignored."""
    inputs = keras.Input((12,), dtype="int32")
    e = keras.layers.Embedding(40, 16, mask_zero=True)(inputs)
    a = keras.layers.MultiHeadAttention(2, 8)(e, e, use_causal_mask=True)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([e, a]))
    outputs = keras.layers.Dense(40)(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    x, _ = _tokens()
    y = np.concatenate([x[:, 1:], np.zeros_like(x[:, :1])], axis=1)
    return model, (x, y)


def _keras_loss_scaling():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(3, dtype="float32"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-3),  # compile adds Keras' LossScaleOptimizer
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, _classification()


def _sample_weights():
    model, (x, y) = _mlp()
    return model, (x, y, np.linspace(0.5, 1.5, len(x)).astype("float32"))


def _warmup_schedule():
    model, data = _mlp()
    schedule = tfkit.schedules.CosineDecay(
        0.0, decay_steps=10_000, warmup_target=1e-3, warmup_steps=1_000
    )
    model.compile(
        keras.optimizers.Adam(schedule),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, data


def _everything():
    """Mixed float16, bounded loss scaling over accumulation, recompute, XLA, a schedule."""
    keras.config.set_dtype_policy("mixed_float16")
    block = keras.Sequential(
        [keras.layers.Dense(32, activation="relu"), keras.layers.Dense(32, activation="relu")]
    )
    model = keras.Sequential(
        [keras.Input((8,)), tfkit.Recompute(block), keras.layers.Dense(3, dtype="float32")]
    )
    schedule = tfkit.schedules.CosineDecay(1e-3, decay_steps=10_000)
    optimizer = tfkit.LossScaleOptimizer(
        tfkit.GradientAccumulator(keras.optimizers.Adam(schedule), accumulation_steps=2)
    )
    model.compile(
        optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True
    )
    return model, _classification()


def _two_inputs_two_outputs():
    """Dict inputs, two heads, two losses (initial_loss only reports the value)."""
    a = keras.Input((8,), name="a")
    b = keras.Input((4,), name="b")
    h = keras.layers.Dense(32, activation="relu")(keras.layers.Concatenate()([a, b]))
    cls = keras.layers.Dense(3, name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    model = keras.Model({"a": a, "b": b}, {"cls": cls, "reg": reg})
    model.compile(
        keras.optimizers.Adam(1e-3),
        {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"},
    )
    x, y = _classification()
    inputs = {"a": x, "b": x[:, :4] * 0.5}
    return model, (inputs, {"cls": y, "reg": x[:, :1] - x[:, 1:2]})


def _dataset():
    model, (x, y) = _mlp()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).prefetch(tf.data.AUTOTUNE)
    return model, data


HEALTHY = {
    "mlp": _mlp,
    "mlp_xla": lambda: _mlp(jit_compile=True),
    "cnn_batchnorm": _cnn_batchnorm,
    "transformer_padding_mask": _transformer,
    "mixed_float16": _mixed_precision,
    "gradient_accumulator": _accumulation,
    "recompute": _recompute,
    "mlp_dataset": _dataset,
    "mlp_sample_weights": _sample_weights,
    "binary_sigmoid": _binary,
    "regression_mse": _regression,
    "token_lm_ignore_class": _token_lm,
    "mixed_float16_keras_scaler": _keras_loss_scaling,
    "warmup_schedule": _warmup_schedule,
    "dict_inputs_two_heads": _two_inputs_two_outputs,
    "composition_of_everything": _everything,
}
if hasattr(keras.optimizers, "MultiOptimizer"):
    HEALTHY["parameter_groups"] = _parameter_groups


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_setup_gives_no_warning_and_is_restored(name):
    model, data = HEALTHY[name]()
    report = _examine(model, data)
    assert _problems(report) == [], str(report)
    assert set(report.seconds) == set(doctor.DEFAULT_CHECKS)
    # Every check left its measurements behind.
    assert {f.check for f in report.findings} == set(doctor.DEFAULT_CHECKS)


# ------------------------------------------------------------------ the zoo


@keras.saving.register_keras_serializable(package="tfkit_test")
class BatchCentering(keras.layers.Layer):
    """A classic bug: normalising over the batch axis at inference time too."""

    def call(self, x):
        return x - ops.mean(x, axis=0, keepdims=True)


@keras.saving.register_keras_serializable(package="tfkit_test")
class Log(keras.layers.Layer):
    def call(self, x):
        return ops.log(x)


@keras.saving.register_keras_serializable(package="tfkit_test")
class Unused(keras.layers.Layer):
    """Owns a weight that never reaches the output."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return x


@keras.saving.register_keras_serializable(package="tfkit_test")
class Blind(keras.layers.Layer):
    """Multiplies its input by zero: the model never sees the data."""

    def call(self, x):
        return x * 0.0


def _sparse_ce(from_logits=True):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _sequential(*layers, optimizer=None, loss=None, features=8):
    model = keras.Sequential([keras.Input((features,)), *layers])
    model.compile(optimizer or keras.optimizers.Adam(1e-2), loss or _sparse_ce())
    return model


def test_initial_loss_flags_overconfident_last_layer():
    model = _sequential(
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(
            3, kernel_initializer=keras.initializers.RandomNormal(stddev=20.0), name="head"
        ),
    )
    report = _examine(model, _classification(), checks=["initial_loss"])
    (f,) = _only(report, "initial_loss", "warning")
    assert f.layer == "head" and "log(3)" in f.message
    assert f.data["expected"] == pytest.approx(np.log(3), rel=1e-12)


def test_initial_loss_flags_softmax_with_from_logits():
    model = _sequential(
        keras.layers.Dense(3, activation="softmax", name="probs"), loss=_sparse_ce(from_logits=True)
    )
    report = _examine(model, _classification(), checks=["initial_loss"])
    (f,) = _only(report, "initial_loss", "error")
    assert f.layer == "probs" and "from_logits" in f.message


def test_initial_loss_flags_logits_without_from_logits():
    model = _sequential(keras.layers.Dense(3, name="logits"), loss="categorical_crossentropy")
    x, y = _classification()
    report = _examine(model, (x, np.eye(3, dtype="float32")[y]), checks=["initial_loss"])
    assert any("from_logits=True" in f.message for f in _only(report, "initial_loss", "error"))


def test_initial_loss_flags_out_of_range_labels():
    model = _sequential(keras.layers.Dense(3, name="logits"))
    x, y = _classification()
    report = _examine(model, (x, y + 2), checks=["initial_loss"])
    (f,) = _only(report, "initial_loss", "error")
    assert "[0, 2]" in f.message and f.layer == "logits"


def test_initial_loss_accepts_zero_initialised_binary_logits():
    # The fix the check recommends (a zero kernel) must not itself be flagged.
    model = _sequential(
        keras.layers.Dense(1, kernel_initializer="zeros"),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    x, y = _classification()
    report = _examine(model, (x, (y == 0).astype("float32")), checks=["initial_loss"])
    (f,) = report.by_check("initial_loss")
    assert f.severity == "info" and f.data["loss"] == pytest.approx(np.log(2), rel=1e-6)


def test_initial_loss_flags_sigmoid_with_from_logits():
    model = _sequential(
        keras.layers.Dense(1, activation="sigmoid", name="p"),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    x, y = _classification()
    report = _examine(model, (x, (y == 0).astype("float32")), checks=["initial_loss"])
    (f,) = _only(report, "initial_loss", "error")
    assert f.layer == "p" and "from_logits=True" in f.message


def test_batch_independence_names_the_mixing_layer():
    model = _sequential(
        keras.layers.Dense(16, activation="relu", name="dense_in"),
        BatchCentering(name="centering"),
        keras.layers.Dense(3, name="out"),
    )
    report = _examine(model, _classification(), checks=["batch_independence"])
    (f,) = _only(report, "batch_independence", "error")
    assert f.layer == "centering"
    assert f.data["relative_change"][0] == 0.0  # the layer before it does not mix


@keras.saving.register_keras_serializable(package="tfkit_test")
class TrainingOnlyMixing(keras.layers.Layer):
    """Mixes examples only when training (a hand-rolled batch norm without the moving stats)."""

    def call(self, x, training=None):
        if training:
            return x - ops.mean(x, axis=0, keepdims=True)
        return x


def test_batch_independence_also_checks_training_mode():
    model = _sequential(
        keras.layers.Dense(16, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.5),
        TrainingOnlyMixing(name="train_mix"),
        keras.layers.Dense(3),
    )
    report = _examine(model, _classification(), checks=["batch_independence"])
    (f,) = _only(report, "batch_independence", "error")
    assert f.layer == "train_mix" and "training mode" in f.message
    # BatchNormalization and Dropout before it are not blamed.
    assert f.data["relative_change_training"][:3] == [0.0, 0.0, 0.0]


def test_overfit_batch_flags_too_low_learning_rate():
    model = _sequential(
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(3),
        optimizer=keras.optimizers.SGD(1e-5),
    )
    report = _examine(model, _classification(), checks=["overfit_batch"], overfit_steps=30)
    (f,) = _only(report, "overfit_batch", "warning")
    assert "cannot overfit" in f.message and "learning rate" in f.message


def test_overfit_batch_flags_too_high_learning_rate():
    model = _sequential(
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(3),
        optimizer=keras.optimizers.SGD(200.0),
    )
    report = _examine(model, _classification(), checks=["overfit_batch"], overfit_steps=30)
    (f,) = [f for f in report.by_check("overfit_batch") if f.severity != "info"]
    assert "too high" in f.message


def test_gradient_flow_flags_exploding_gradients():
    big = keras.initializers.RandomNormal(stddev=2.0)
    deep = [keras.layers.Dense(16, kernel_initializer=big) for _ in range(8)]
    model = _sequential(*deep, keras.layers.Dense(3), optimizer=keras.optimizers.SGD(0.1))
    report = _examine(model, _classification(), checks=["gradient_flow"])
    (f,) = _only(report, "gradient_flow", "warning")
    assert "explode" in f.message


def test_overfit_batch_flags_frozen_weights():
    hidden = keras.layers.Dense(32, activation="relu")
    head = keras.layers.Dense(3)
    model = _sequential(hidden, head)
    hidden.trainable = head.trainable = False
    model.compile(keras.optimizers.Adam(1e-2), _sparse_ce())
    report = _examine(model, _classification(), checks=["overfit_batch"])
    (f,) = _only(report, "overfit_batch", "error")
    assert "frozen" in f.message


def test_overfit_batch_flags_output_loss_mismatch():
    # A sigmoid output cannot reach regression targets around 5.
    model = _sequential(
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
        loss="mse",
    )
    x, _ = _classification()
    y = 5.0 + x[:, :1]
    report = _examine(model, (x, y), checks=["overfit_batch"], overfit_steps=60)
    (f,) = _only(report, "overfit_batch", "warning")
    assert "cannot overfit" in f.message


def test_gradient_flow_flags_vanishing_gradients():
    deep = [keras.layers.Dense(16, activation="sigmoid") for _ in range(12)]
    model = _sequential(*deep, keras.layers.Dense(3), optimizer=keras.optimizers.SGD(0.1))
    report = _examine(model, _classification(), checks=["gradient_flow"])
    (f,) = _only(report, "gradient_flow", "warning")
    assert "vanish" in f.message and f.layer == deep[0].name


def test_gradient_flow_flags_layer_without_gradient():
    model = _sequential(
        keras.layers.Dense(16, activation="relu"), Unused(name="unused"), keras.layers.Dense(3)
    )
    report = _examine(model, _classification(), checks=["gradient_flow"])
    (f,) = _only(report, "gradient_flow", "warning")
    assert f.layer == "unused" and "no gradient" in f.message
    assert f.data["no_gradient"] == ["unused"]


def test_dead_units_flags_a_dead_relu_layer():
    model = _sequential(
        keras.layers.Dense(
            32, activation="relu", bias_initializer=keras.initializers.Constant(-100.0), name="dead"
        ),
        keras.layers.Dense(3),
    )
    report = _examine(model, _classification(), checks=["dead_units"])
    (f,) = _only(report, "dead_units", "warning")
    assert f.layer == "dead" and f.data["dead_fractions"] == [1.0]


def test_dead_units_independent_count():
    # Reference computed in the test: units whose pre-activation is <= 0 on every example.
    model = _sequential(
        keras.layers.Dense(
            64, activation="relu", name="h", bias_initializer=keras.initializers.Constant(-1.5)
        ),
        keras.layers.Dense(3),
    )
    x, y = _classification()
    report = _examine(model, (x, y), checks=["dead_units"], sample_size=128)
    kernel, bias = (w.numpy() for w in model.layers[0].weights)
    expected = float(np.mean(~((x @ kernel + bias) > 0).any(axis=0)))
    f = report.by_check("dead_units")[0]
    assert f.data["dead_fractions"][0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("rate, word", [(50.0, "lower"), (1e-9, "raise")])
def test_update_ratio_flags_far_off_rates(rate, word):
    model = _sequential(
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(3),
        optimizer=keras.optimizers.SGD(rate),
    )
    report = _examine(model, _classification(), checks=["update_ratio"])
    (f,) = _only(report, "update_ratio", "warning")
    assert word in f.message


def test_update_ratio_and_gradient_norm_match_independent_formula():
    # One Dense layer, MSE, SGD: gradient and update in closed form.
    model = _sequential(
        keras.layers.Dense(4, name="only"), optimizer=keras.optimizers.SGD(0.05), loss="mse"
    )
    x, _ = _classification()
    y = x[:, :4] * 2.0
    kernel, bias = (w.numpy().astype("float64") for w in model.layers[0].weights)
    report = _examine(model, (x, y), checks=["gradient_flow", "update_ratio"], batch_size=16)
    # examine samples array data with a seeded permutation; rebuild the same first batch.
    order = np.random.default_rng(0).permutation(len(x))[:16]
    xb, yb = x[order].astype("float64"), y[order].astype("float64")
    residual = xb @ kernel + bias - yb
    g_kernel = 2 * xb.T @ residual / residual.size
    g_bias = 2 * residual.sum(axis=0) / residual.size
    g_norm = np.sqrt((g_kernel**2).sum() + (g_bias**2).sum())
    w_norm = np.sqrt((kernel**2).sum() + (bias**2).sum())
    flow = report.by_check("gradient_flow")[0].data
    assert flow["grad_norms"][0] == pytest.approx(g_norm, rel=1e-5)
    assert flow["ratios"][0] == pytest.approx(g_norm / w_norm, rel=1e-5)
    ratio = report.by_check("update_ratio")[0].data["ratios"][0]
    assert ratio == pytest.approx(0.05 * g_norm / w_norm, rel=1e-5)


def test_initial_loss_matches_log_classes_for_a_uniform_output():
    # Zero kernel and bias: the prediction is uniform, the loss is exactly log(C).
    model = _sequential(
        keras.layers.Dense(5, kernel_initializer="zeros", name="head"),
    )
    x, y = _classification(classes=5)
    report = _examine(model, (x, y), checks=["initial_loss"])
    (f,) = report.by_check("initial_loss")
    assert f.severity == "info"
    assert f.data["loss"] == pytest.approx(np.log(5), rel=1e-6)


def test_nonfinite_names_the_first_layer_producing_nan():
    model = _sequential(
        keras.layers.Dense(8, name="pre"), Log(name="log"), keras.layers.Dense(3, name="post")
    )
    report = _examine(model, _classification(), checks=["nonfinite"])
    (f,) = _only(report, "nonfinite", "error")
    assert f.layer == "log" and "forward" in f.message


def test_nonfinite_flags_nan_in_data():
    model = _sequential(keras.layers.Dense(3))
    x, y = _classification()
    x[5, 2] = np.nan
    report = _examine(model, (x, y), checks=["nonfinite"], sample_size=128)
    (f,) = _only(report, "nonfinite", "error")
    assert "data" in f.message


def test_nonfinite_flags_nan_weights():
    head = keras.layers.Dense(3, name="head")
    model = _sequential(keras.layers.Dense(8), head)
    kernel = head.kernel.numpy()
    kernel[0, 0] = np.inf
    head.kernel.assign(kernel)
    report = _examine(model, _classification(), checks=["nonfinite"])
    (f,) = _only(report, "nonfinite", "error")
    assert f.layer == "head"


def _slow(x, y):
    time.sleep(0.02)
    return x, y


def test_input_pipeline_flags_a_starved_model_with_concrete_advice():
    model, (x, y) = _mlp()
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .map(lambda a, b: tf.py_function(_slow, [a, b], [tf.float32, tf.int32]))
        .map(lambda a, b: (tf.ensure_shape(a, [8]), tf.ensure_shape(b, [])))
        .batch(16)
    )
    report = _examine(model, data, checks=["input_pipeline"], sample_size=16)
    (f,) = _only(report, "input_pipeline", "warning")
    assert "input-bound" in f.message
    assert "prefetch" in f.message and "num_parallel_calls" in f.message
    assert "py_function" in f.message


def test_pipeline_advice_reads_the_dataset_graph():
    base = tf.data.Dataset.range(10)
    ops_seq = _checks.pipeline._dataset_ops(base.map(lambda v: v + 1).batch(2))
    assert "MapDataset" in ops_seq and not any(o.startswith("Prefetch") for o in ops_seq)
    tuned = base.map(lambda v: v + 1, num_parallel_calls=tf.data.AUTOTUNE).cache().prefetch(2)
    assert _checks.pipeline._pipeline_advice(_checks.pipeline._dataset_ops(tuned)) == []


def test_precision_reports_audit_findings():
    keras.config.set_dtype_policy("mixed_float16")
    model = _sequential(
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(3),
        optimizer=tfkit.LossScaleOptimizer(keras.optimizers.Adam(1e-2)),
    )
    report = _examine(model, _classification(), checks=["precision"])
    codes = {f.data["code"] for f in _only(report, "precision", "warning")}
    assert "half_output" in codes


def test_learning_rate_flags_a_rate_far_from_lr_find():
    model = _sequential(
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(3),
        optimizer=keras.optimizers.SGD(1e-6),
    )
    report = _examine(model, _classification(), checks=[], learning_rate=True)
    (f,) = _only(report, "learning_rate", "warning")
    assert "below" in f.message and f.data["suggestion"] > 1e-4


def test_learning_rate_silent_on_a_sensible_rate():
    model, data = _mlp()
    report = _examine(model, data, checks=[], learning_rate=True)
    assert _problems(report) == [], str(report)


def test_zero_input_baseline_flags_a_blind_model():
    model = _sequential(
        Blind(name="blind"), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)
    )
    report = _examine(model, _classification(), checks=[], baseline=True, overfit_steps=40)
    (f,) = _only(report, "zero_input", "warning")
    assert "zero inputs" in f.message


def test_zero_input_baseline_silent_on_a_healthy_model():
    model, data = _mlp()
    report = _examine(model, data, checks=[], baseline=True, overfit_steps=40)
    assert _problems(report) == [], str(report)


def test_check_that_raises_becomes_an_error_finding():
    # Labels out of range make the training step itself raise on CPU.
    model = _sequential(keras.layers.Dense(3))
    x, y = _classification()
    report = _examine(model, (x, y + 7), checks=["overfit_batch"])
    (f,) = _only(report, "overfit_batch", "error")
    assert "could not run" in f.message


# ------------------------------------------------------------------ report, API, errors


def test_report_text_markdown_and_plots(tmp_path):
    model, data = _mlp()
    report = _examine(model, data)
    text = str(report)
    assert text.startswith("tfkit doctor: 0 error(s), 0 warning(s)")
    assert "[gradient_flow]" in text
    md = report.to_markdown()
    assert "| severity | check | layer | message |" in md and "`overfit_batch`" in md
    paths = report.plot(tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["gradient_flow.png", "activations.png"]
    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    flow = report.by_check("gradient_flow")[0].data
    assert flow["layers"] == ["hidden_1", "hidden_2", "logits"]


def test_finding_validates_severity():
    with pytest.raises(ValueError, match="severity"):
        doctor.Finding("x", "fatal", "m")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"checks": ["nope"]}, ValueError, "unknown check"),
        ({"checks": "nonfinite"}, TypeError, "checks"),
        ({"time_budget": 0}, ValueError, "time_budget"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"learning_rate": 1}, TypeError, "learning_rate"),
        ({"baseline": "yes"}, TypeError, "baseline"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    model, data = _mlp()
    with pytest.raises(error, match=match):
        doctor.examine(model, data, **kwargs)


def test_bad_model_and_data():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        doctor.examine(model, (np.ones((4, 2)), np.ones((4, 1))))
    with pytest.raises(TypeError, match="keras.Model"):
        doctor.examine("model", (np.ones((4, 2)), np.ones((4, 1))))
    model.compile("sgd", "mse")
    with pytest.raises(TypeError, match="data"):
        doctor.examine(model, np.ones((4, 2)))
    with pytest.raises(ValueError, match="empty"):
        doctor.examine(
            model, tf.data.Dataset.from_tensor_slices((np.ones((0, 2)), np.ones((0, 1)))).batch(2)
        )


def test_exported_from_tfkit():
    assert tfkit.doctor.examine is doctor.examine
    assert set(doctor.ALL_CHECKS) == set(_checks.CHECKS)


def test_time_budget_bounds_the_training_checks():
    # The overfit loop checks the clock after every update: with no time, exactly one update.
    model, data = _mlp()
    report = _examine(model, data, checks=["overfit_batch"], time_budget=1e-9)
    (f,) = report.by_check("overfit_batch")
    assert len(f.data["losses"]) == 1


def test_docstring_examples_run():
    import doctest

    import tfkit.doctor._examine as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model, data = _mlp()
    report = _examine(model, data)
    assert _problems(report) == [], str(report)


def test_interrupted_check_still_restores_the_model(monkeypatch):
    def train_then_interrupt(ctx):
        x, y, sw = ctx.batch
        ctx.model.train_on_batch(x, y)
        raise KeyboardInterrupt

    def train_then_fail(ctx):
        x, y, sw = ctx.batch
        ctx.model.train_on_batch(x, y)
        raise RuntimeError()  # no message

    monkeypatch.setitem(_checks.CHECKS, "precision", train_then_fail)
    monkeypatch.setitem(_checks.CHECKS, "dead_units", train_then_interrupt)
    model, data = _mlp()
    report = _examine(model, data, checks=["precision"])
    (f,) = report.by_check("precision")
    assert f.severity == "error" and f.message == "the check could not run: RuntimeError: "
    _build(model, data)
    before = _snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        doctor.examine(model, data, checks=["dead_units"])
    _assert_restored(before, model)
