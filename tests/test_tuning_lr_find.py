"""LR range test: the sweep applies the rates it claims, suggestions on a problem with a
known optimal rate, exact restoration of model and optimizer state, composition."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.tuning.lr_find import LRFinderResult, lr_find

N, D = 256, 8


def _isotropic_regression(seed: int = 0):
    """Least squares with Hessian exactly 2*I: X^T X / n = I, y = X w*."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(N, D)))
    x = (q * math.sqrt(N)).astype("float32")
    y = (x @ rng.normal(size=(D, 1))).astype("float32")
    return x, y


def _linear_model(optimizer=None, **compile_kwargs) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(optimizer or keras.optimizers.SGD(0.01), "mse", **compile_kwargs)
    return model


def _all_state(model) -> list[np.ndarray]:
    variables = list(model.variables) + list(model.metrics_variables)
    variables += list(model.optimizer.variables)
    inner = getattr(model.optimizer, "inner_optimizer", None)
    if inner is not None:
        variables += list(inner.variables)
    return [np.array(v.numpy(), copy=True) for v in variables]


def _assert_bit_identical(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_sweep_applies_exponential_rates_exactly():
    # On loss(w) = mean((Xw - y)^2) with X^T X / n = I the Hessian is 2I, so one SGD
    # step at rate lr multiplies the loss by (1 - 2 lr)^2: the recorded curve must
    # follow that recurrence for the rates lr_i = min_lr * (max_lr/min_lr)^(i/(steps-1)).
    x, y = _isotropic_regression()
    model = _linear_model()
    result = lr_find(model, (x, y), min_lr=1e-4, max_lr=10.0, steps=60, batch_size=N, verbose=0)
    lrs = 1e-4 * (10.0 / 1e-4) ** (np.arange(60) / 59)
    np.testing.assert_allclose(result.lrs, lrs[: len(result.lrs)], rtol=1e-12)
    expected = np.mean(y.astype("float64") ** 2) * np.cumprod(
        np.concatenate([[1.0], (1.0 - 2.0 * lrs[:-1]) ** 2])
    )
    # Compare until float32 no longer resolves the loss (it falls to ~1e-20 of L0 in
    # theory, and the float32 residue is what the divergent tail then amplifies).
    k = int(np.argmax(expected < 1e-6 * expected[0]))
    assert k > 30
    np.testing.assert_allclose(result.losses[:k], expected[:k], rtol=1e-3)
    # Smoothed loss: independent bias-corrected EMA, beta = 0.98.
    avg, smoothed = 0.0, []
    for i, loss in enumerate(result.losses):
        avg = 0.98 * avg + 0.02 * loss
        smoothed.append(avg / (1 - 0.98 ** (i + 1)))
    np.testing.assert_allclose(result.smoothed, smoothed, rtol=1e-12)


def test_suggestion_within_factor_3_of_optimal_rate():
    # Gradient descent on a quadratic with curvature L converges fastest at lr = 1/L
    # and diverges above 2/L (L from the data, independently of the finder).
    x, y = _isotropic_regression(seed=1)
    curvature = np.linalg.eigvalsh(2.0 / N * x.T.astype("float64") @ x)
    assert np.ptp(curvature) < 1e-6
    optimal = 1.0 / curvature.max()
    model = _linear_model()
    result = lr_find(model, (x, y), batch_size=N, verbose=0)  # defaults: 1e-7 .. 10, 100 steps
    assert result.diverged and "stopped" in result.reason
    assert result.lrs[-1] > 2.0 / curvature.max()  # it can only diverge past 2/L
    assert optimal / 3 <= result.suggestion <= 3 * optimal
    assert result.suggestion == result.suggestions["min_over_10"]
    # Both rules, recomputed from the recorded curve as fastai defines them
    # (first 10% and last 5 points left out).
    start, end = len(result.lrs) // 10, len(result.lrs) - 5
    lrs, sm = result.lrs[start:end], result.smoothed[start:end]
    i_min = int(np.argmin(sm))
    assert result.suggestions["min_over_10"] == pytest.approx(lrs[i_min] / 10, rel=1e-12)
    slopes = np.gradient(sm[: i_min + 1], np.log(lrs[: i_min + 1]))
    assert result.suggestions["steepest"] == pytest.approx(lrs[np.argmin(slopes)], rel=1e-12)
    assert result.suggestions["steepest"] < lrs[i_min]


def _bn_dropout_model(seed: int, jit_compile=False, optimizer=None) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer or keras.optimizers.Adam(1e-3),
        "mse",
        metrics=["mae"],
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
def test_restores_weights_optimizer_and_rng_bit_identical(jit_compile):
    x, y = _isotropic_regression()
    model = _bn_dropout_model(7, jit_compile)
    # The XLA variant skips the twin: one XLA compilation is enough to test restoration.
    twin = None if jit_compile else _bn_dropout_model(7, jit_compile)
    for m in (model, twin) if twin else (model,):  # state: slots, iterations, BN stats
        for _ in range(3):
            m.train_on_batch(x[:32], y[:32])
    before = _all_state(model)
    assert int(model.optimizer.iterations.numpy()) == 3
    result = lr_find(model, (x, y), min_lr=1e-5, max_lr=100.0, steps=12, verbose=0)
    assert len(result.lrs) >= 2
    _assert_bit_identical(before, _all_state(model))
    assert int(model.optimizer.iterations.numpy()) == 3
    if twin is None:
        return
    # Training afterwards is indistinguishable from a twin that never ran the test
    # (dropout seed state included).
    for _ in range(2):
        model.train_on_batch(x[:32], y[:32])
        twin.train_on_batch(x[:32], y[:32])
    _assert_bit_identical(_all_state(twin), _all_state(model))


def test_never_trained_model_leaves_no_optimizer_state_behind():
    """On a fresh model the Adam slots and metrics are created before the snapshot.

    Keras creates them lazily at the first traced step when no strategy is
    set; a snapshot taken before that would miss them, and the sweep's moments
    would stay in the optimizer afterwards.
    """
    x, y = _isotropic_regression()
    model = _bn_dropout_model(7, False)
    lr_find(model, (x, y), min_lr=1e-5, max_lr=1.0, steps=6, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0
    slots = [v for v in model.optimizer.variables if v is not model.optimizer.iterations]
    assert slots, "the optimizer should be built by now"
    for v in slots:
        if "learning_rate" in v.path:
            continue
        np.testing.assert_array_equal(v.numpy(), np.zeros_like(v.numpy()), err_msg=v.path)


def test_schedule_is_overridden_then_restored():
    x, y = _isotropic_regression()
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=1000)
    model = _linear_model(keras.optimizers.SGD(schedule))
    model.train_on_batch(x, y)
    before = _all_state(model)
    config = model.optimizer.get_config()
    result = lr_find(model, (x, y), min_lr=1e-4, max_lr=10.0, steps=40, batch_size=N, verbose=0)
    # The schedule is never swapped out: the control plane wraps it (its knobs are state).
    after = model.optimizer.get_config()
    assert after["learning_rate"]["config"]["rate"] == config["learning_rate"]
    assert {k: v for k, v in after.items() if k != "learning_rate"} == {
        k: v for k, v in config.items() if k != "learning_rate"
    }
    _assert_bit_identical(before, _all_state(model))
    # The sweep drives a variable: a second test reuses the traced step.
    traced = model.train_function
    lr_find(model, (x, y), min_lr=1e-4, max_lr=10.0, steps=5, batch_size=N, verbose=0)
    assert model.train_function is traced
    # The sweep used the swept rates, not the schedule: same curve as a float-rate run
    # started from the same weights.
    reference = _linear_model()
    reference.set_weights(model.get_weights())
    expected = lr_find(
        reference, (x, y), min_lr=1e-4, max_lr=10.0, steps=40, batch_size=N, verbose=0
    )
    np.testing.assert_allclose(result.losses, expected.losses, rtol=1e-6)
    # And the schedule still drives training afterwards.
    model.train_on_batch(x, y)
    # optimizer.learning_rate: the rate at the optimizer's step (2 updates done).
    np.testing.assert_allclose(float(model.optimizer.learning_rate), float(schedule(2)), rtol=1e-6)


def test_mixed_float16_with_loss_scale_optimizer():
    keras.config.set_dtype_policy("mixed_float16")
    x, y = _isotropic_regression()
    model = _bn_dropout_model(3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.train_on_batch(x[:32], y[:32])
    before = _all_state(model)
    # A sweep up to 1e3 with Adam drives float16 activations towards overflow.
    result = lr_find(model, (x, y), min_lr=1e-5, max_lr=1e3, steps=25, verbose=0)
    assert result.suggestion is not None
    _assert_bit_identical(before, _all_state(model))


def test_keras_gradient_accumulation_runs_whole_windows(monkeypatch):
    x, y = _isotropic_regression()
    model = _linear_model(keras.optimizers.SGD(0.01, gradient_accumulation_steps=3))
    calls = []
    original = model.train_on_batch

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "train_on_batch", counting)
    model.optimizer.build(model.trainable_variables)
    before = _all_state(model)
    result = lr_find(model, (x, y), min_lr=1e-4, max_lr=1e-2, steps=5, batch_size=64, verbose=0)
    assert len(result.lrs) == 5 and len(calls) == 15  # 5 updates of 3 micro-batches
    _assert_bit_identical(before, _all_state(model))


def test_recompute_if_available():
    recompute = pytest.importorskip("tfkit.recompute")
    x, y = _isotropic_regression()
    keras.utils.set_random_seed(0)
    layer = recompute.Recompute(keras.layers.Dense(16, activation="relu"))
    model = keras.Sequential([keras.Input((D,)), layer, keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.train_on_batch(x[:32], y[:32])
    before = _all_state(model)
    result = lr_find(model, (x, y), min_lr=1e-5, max_lr=10.0, steps=30, verbose=0)
    assert len(result.lrs) >= 2
    _assert_bit_identical(before, _all_state(model))


def test_dataset_input_is_cycled_and_progress_bar_shown(capsys):
    x, y = _isotropic_regression()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)  # 4 batches for 12 steps
    model = _linear_model()
    result = lr_find(model, data, min_lr=1e-4, max_lr=1e-1, steps=12, verbose=1)
    assert len(result.lrs) == 12 and not result.stopped_early and not result.diverged
    assert "12/12" in capsys.readouterr().out


def test_diverging_at_once_gives_no_suggestion():
    x, y = _isotropic_regression()
    model = _linear_model()
    result = lr_find(model, (x, y), min_lr=10.0, max_lr=1e4, steps=20, batch_size=N, verbose=0)
    assert result.suggestion is None and result.suggestions["steepest"] is None
    assert "no suggestion" in result.reason and "diverge" in result.reason


def test_non_finite_loss_at_once_gives_no_suggestion():
    x, y = _isotropic_regression()
    model = _linear_model()
    y_nan = np.full_like(y, np.nan)
    result = lr_find(model, (x, y_nan), steps=10, batch_size=N, verbose=0)
    assert len(result.lrs) == 0 and result.suggestion is None
    assert "non-finite" in result.reason


def test_plot_writes_png(tmp_path):
    x, y = _isotropic_regression()
    result = lr_find(_linear_model(), (x, y), min_lr=1e-4, steps=40, batch_size=N, verbose=0)
    path = result.plot(tmp_path / "sub" / "lr.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    empty = LRFinderResult(
        np.array([]),
        np.array([]),
        np.array([]),
        {"steepest": None, "min_over_10": None},
        True,
        True,
        "no suggestion: diverged",
    )
    assert empty.plot(tmp_path / "empty.png").endswith("empty.png")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_lr": 1.0, "max_lr": 1.0}, "min_lr.*< `max_lr`"),
        ({"min_lr": 2.0, "max_lr": 1.0}, "min_lr.*< `max_lr`"),
        ({"min_lr": 0.0}, "min_lr.*> 0.*0.0"),
        ({"min_lr": -1e-3}, "min_lr.*> 0"),
        ({"max_lr": float("inf")}, "max_lr.*finite"),
        ({"steps": 1}, "steps.*>= 2.*1"),

        ({"beta": 1.0}, "beta"),
        ({"divergence_threshold": 1.0}, "divergence_threshold"),
        ({"batch_size": 0}, "batch_size.*>= 1"),
    ],
)
def test_bad_arguments(kwargs, match):
    x, y = _isotropic_regression()
    with pytest.raises(ValueError, match=match):
        lr_find(_linear_model(), (x, y), verbose=0, **kwargs)


@pytest.mark.parametrize("kwargs", [{"steps": 2.5}, {"steps": 100.0}, {"min_lr": "1e-3"}])
def test_wrong_types_are_type_errors(kwargs):
    x, y = _isotropic_regression()
    (name,) = kwargs
    with pytest.raises(TypeError, match=rf"^lr_find: `{name}` must be .*; received {name}="):
        lr_find(_linear_model(), (x, y), verbose=0, **kwargs)


def test_bad_data_and_model():
    x, y = _isotropic_regression()
    with pytest.raises(ValueError, match="0 examples"):
        lr_find(_linear_model(), (x[:0], y[:0]), verbose=0)
    empty = tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(4)
    with pytest.raises(ValueError, match="empty"):
        lr_find(_linear_model(), empty, verbose=0)
    with pytest.raises(TypeError, match="data"):
        lr_find(_linear_model(), x, verbose=0)
    uncompiled = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        lr_find(uncompiled, (x, y), verbose=0)


def test_under_mirrored_strategy(mirrored_strategy):
    x, y = _isotropic_regression()
    with mirrored_strategy.scope():
        model = _bn_dropout_model(5)
    model.train_on_batch(x[:32], y[:32])
    before = _all_state(model)
    result = lr_find(model, (x, y), min_lr=1e-5, max_lr=10.0, steps=12, verbose=0)
    assert len(result.lrs) >= 2
    _assert_bit_identical(before, _all_state(model))
    # Every replica holds the restored values, not only the primary copy.
    checked = 0
    for v, saved in zip(model.variables, before, strict=False):  # _all_state starts with these
        replicas = getattr(v._value, "values", ())  # a MirroredVariable's per-device copies
        if len(replicas) == 2:
            assert all(r.numpy().tobytes() == saved.tobytes() for r in replicas), v.path
            checked += 1
    assert checked >= len(model.trainable_variables)


def test_tfkit_gradient_accumulator():
    from tfkit import optimizers as accumulation
    x, y = _isotropic_regression()
    keras.config.set_dtype_policy("mixed_float16")  # LossScaleOptimizer(GradientAccumulator(.))
    optimizer = accumulation.GradientAccumulator(keras.optimizers.Adam(1e-3), accumulation_steps=2)
    model = _bn_dropout_model(9, optimizer=optimizer)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for _ in range(3):  # an open accumulation window and non-zero slots
        model.train_on_batch(x[:32], y[:32])
    before = _all_state(model)
    calls = []
    original = model.train_on_batch
    model.train_on_batch = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        result = lr_find(model, (x, y), min_lr=1e-5, max_lr=10.0, steps=10, verbose=0)
    finally:
        del model.train_on_batch
    assert len(calls) == 2 * len(result.lrs)  # one sweep step = one real update
    _assert_bit_identical(before, _all_state(model))
