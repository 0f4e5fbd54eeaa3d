"""Contract tests: properties every tfkit schedule has, parametrized over all of them.

Serialization (get_config/from_config, keras.saving with safe_mode=True),
step dtypes, steps up to 2**40, float32 vs float64, no retracing under
``tf.function(jit_compile=True)``, and the learning rate actually used by
``model.fit`` and by a custom jit-compiled training loop.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.schedules import (
    SWALR,
    Constant,
    CosineDecay,
    CosineDecayRestarts,
    Cyclic,
    ExponentialDecay,
    InverseSqrtDecay,
    InverseTimeDecay,
    Join,
    LinearCosineDecay,
    MultiStepDecay,
    NaturalExpDecay,
    OneCycle,
    OneCycleMomentum,
    PiecewiseConstantDecay,
    PolynomialDecay,
    Product,
    ScaledSchedule,
    Warmup,
    WarmupStableDecay,
    get_scheduler,
)

# Every public schedule, with arguments whose interesting points (boundaries,
# warmup end, decay end, restarts) fall within the first 40 steps.
CASES = {
    "PiecewiseConstantDecay": lambda: PiecewiseConstantDecay([5, 12, 30], [0.1, 0.05, 0.01, 0.001]),
    "MultiStepDecay": lambda: MultiStepDecay(0.1, milestones=[5, 12, 30], gamma=0.3),
    "ExponentialDecay": lambda: ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5),
    "ExponentialDecay_staircase": lambda: ExponentialDecay(0.1, 7, 0.5, staircase=True),
    "NaturalExpDecay": lambda: NaturalExpDecay(0.1, decay_steps=10, decay_rate=0.5),
    "InverseTimeDecay": lambda: InverseTimeDecay(0.1, decay_steps=5, decay_rate=0.5),
    "PolynomialDecay": lambda: PolynomialDecay(0.1, 30, end_learning_rate=0.01, power=2.0),
    "PolynomialDecay_cycle": lambda: PolynomialDecay(0.1, 10, 0.01, power=0.5, cycle=True),
    "CosineDecay": lambda: CosineDecay(0.1, decay_steps=30, alpha=0.1),
    "CosineDecay_warmup": lambda: CosineDecay(0.0, 25, warmup_target=0.1, warmup_steps=8),
    "CosineDecayRestarts": lambda: CosineDecayRestarts(0.1, 5, t_mul=2.0, m_mul=0.8, alpha=0.1),
    "CosineDecayRestarts_warmup": lambda: CosineDecayRestarts(
        0.01, 6, t_mul=1.0, warmup_target=0.1, warmup_steps=4
    ),
    "LinearCosineDecay": lambda: LinearCosineDecay(0.1, 30, num_periods=2.0, alpha=0.1, beta=0.01),
    "OneCycle": lambda: OneCycle(0.1, total_steps=30),
    "OneCycle_three_phase_linear": lambda: OneCycle(
        0.1, 35, pct_start=0.25, anneal_strategy="linear", three_phase=True
    ),
    "OneCycleMomentum": lambda: OneCycle(0.1, 30, three_phase=True).momentum_schedule,
    "Cyclic_triangular": lambda: Cyclic(0.01, 0.1, step_size=4, step_size_down=6),
    "Cyclic_triangular2": lambda: Cyclic(0.01, 0.1, step_size=5, mode="triangular2"),
    "Cyclic_exp_range": lambda: Cyclic(0.01, 0.1, step_size=5, mode="exp_range", gamma=0.97),
    "Warmup_linear": lambda: Warmup(
        CosineDecay(0.1, 25), warmup_steps=6, initial_learning_rate=0.01
    ),
    "Warmup_constant": lambda: Warmup(
        MultiStepDecay(0.1, [10, 20]),
        warmup_steps=6,
        initial_learning_rate=0.01,
        warmup_type="constant",
    ),
    "Join": lambda: Join(
        [PolynomialDecay(0.01, 5, 0.1), CosineDecay(0.1, 20), ExponentialDecay(0.02, 5, 0.5)],
        boundaries=[5, 25],
    ),
    "Warmup_Join_nested": lambda: Warmup(
        Join([OneCycle(0.1, 12), Cyclic(0.001, 0.01, step_size=3)], boundaries=[12]),
        warmup_steps=5,
    ),
    "MultiStepDecay_torch_milestones": lambda: MultiStepDecay(0.1, [20, 0, 7, 7], gamma=0.5),
    "CosineDecay_cycles": lambda: CosineDecay(0.1, 30, alpha=0.1, num_cycles=1.5),
    "Constant": lambda: Constant(0.05),
    "InverseSqrtDecay": lambda: InverseSqrtDecay(0.1, timescale=4),
    "WarmupStableDecay": lambda: WarmupStableDecay(0.1, 8, 10, 15, alpha=0.1),
    "WarmupStableDecay_1sqrt": lambda: WarmupStableDecay(
        0.1, 6, 5, 20, warmup_type="1-sqrt", decay_type="1-sqrt"
    ),
    "WarmupStableDecay_cosine_cycles": lambda: WarmupStableDecay(
        0.1, 5, 0, 25, alpha=0.2, warmup_type="cosine", num_cycles=0.8
    ),
    "Product_chained": lambda: Product(
        [
            Constant(0.1),
            Join([Constant(0.1), Constant(1.0)], boundaries=[4]),
            ExponentialDecay(1.0, decay_steps=1, decay_rate=0.95),
        ]
    ),
    "Product_nested": lambda: Product(
        [Warmup(CosineDecay(0.1, 30), 5), MultiStepDecay(1.0, [10, 10], gamma=0.7)]
    ),
    "ScaledSchedule": lambda: ScaledSchedule(Warmup(CosineDecay(0.1, 30), 5), 0.5),
    "SWALR_cos": lambda: SWALR(0.1, swa_lr=0.01, anneal_steps=20),
    "SWALR_linear_up": lambda: SWALR(0.01, swa_lr=0.05, anneal_steps=7, anneal_strategy="linear"),
    "SWALR_joined": lambda: Join([CosineDecay(0.1, 20, alpha=0.5), SWALR(0.05, 0.02, 5)], [20]),
    "get_scheduler_cosine_warmup_with_min_lr": lambda: get_scheduler(
        "cosine_warmup_with_min_lr", 0.1, 6, 36, min_lr=0.001
    ),
    "get_scheduler_cosine_with_restarts": lambda: get_scheduler(
        "cosine_with_restarts", 0.1, 5, 35, num_cycles=3
    ),
}
NAMES = sorted(CASES)


def test_every_public_schedule_is_under_contract():
    import tfkit.schedules

    public = {getattr(tfkit.schedules, n) for n in tfkit.schedules.__all__}
    public = {c for c in public if isinstance(c, type)}
    covered = {type(CASES[n]()) for n in NAMES}
    assert public <= covered, public - covered


STEPS = list(range(45))

# Long schedules: the last steps of the decays must stay exact in float32.
LONG = {
    "CosineDecay_long": lambda: CosineDecay(0.1, decay_steps=10**9, alpha=0.0),
    "PolynomialDecay_long": lambda: PolynomialDecay(0.1, 10**9, end_learning_rate=0.0, power=1.0),
    "LinearCosineDecay_long": lambda: LinearCosineDecay(0.1, 10**9, beta=0.0),
    "OneCycle_long": lambda: OneCycle(0.1, total_steps=10**9 + 7),
    "OneCycleMomentum_long": lambda: OneCycleMomentum(10**9 + 7, three_phase=True),
    "CosineDecayRestarts_long": lambda: CosineDecayRestarts(0.1, 10**8, t_mul=1.0),
    "Cyclic_long": lambda: Cyclic(0.0, 0.1, step_size=10**8 + 1),
    "Warmup_long": lambda: Warmup(CosineDecay(0.1, 10**9), warmup_steps=10**8),
    "WarmupStableDecay_long": lambda: WarmupStableDecay(0.1, 10**8, 5 * 10**8, 4 * 10**8 + 7),
    "InverseSqrtDecay_long": lambda: InverseSqrtDecay(0.1, timescale=10**8),
    "SWALR_long": lambda: SWALR(0.1, 0.001, anneal_steps=10**9),
    "Product_long": lambda: Product(
        [CosineDecay(0.1, 10**9), MultiStepDecay(1.0, [10**8, 10**9], gamma=0.5)]
    ),
}


def graph_values(schedule, steps, dtype="int64"):
    """The schedule at every step: one traced call on the step vector (schedules are elementwise).

    Optimizers pass scalar steps; the scalar path is checked against this one
    under XLA in ``test_numeric_contract`` and in every ``model.fit`` test.
    """
    fn = tf.function(lambda step: schedule(step))
    return fn(tf.constant(steps, dtype)).numpy().astype(np.float64)


def as_float64(schedule):
    """The same schedule with every (nested) ``dtype`` set to float64."""

    def convert(obj):
        if isinstance(obj, dict):
            return {k: ("float64" if k == "dtype" else convert(v)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        return obj

    config = convert(keras.saving.serialize_keras_object(schedule))
    return keras.saving.deserialize_keras_object(config)


@pytest.mark.parametrize("name", NAMES)
def test_serialization_contract(name):
    s = CASES[name]()
    assert isinstance(s, keras.optimizers.schedules.LearningRateSchedule)
    assert keras.saving.get_registered_name(type(s)) == f"tfkit>{type(s).__name__}"
    expected = graph_values(s, STEPS)
    # get_config returns the constructor arguments, as plain JSON.
    config = s.get_config()
    json.dumps(config)
    clone = type(s).from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(graph_values(clone, STEPS), expected)
    # keras.saving, through JSON, in safe mode (no lambdas anywhere).
    blob = json.dumps(keras.saving.serialize_keras_object(s))
    clone = keras.saving.deserialize_keras_object(json.loads(blob), safe_mode=True)
    assert type(clone) is type(s)
    np.testing.assert_array_equal(graph_values(clone, STEPS), expected)


HUGE = [2**31 - 1, 2**40, 2**40 + 1, 2**50]


@pytest.mark.parametrize("name", NAMES)
def test_numeric_contract(name):
    s = CASES[name]()
    s64 = as_float64(s)
    step_dtypes = ("int64", "int32", "float32", "float64")

    @tf.function  # one trace for every variant keeps this test fast
    def evaluate(steps, huge):
        return {
            "by_dtype": [s(tf.cast(steps, d)) for d in step_dtypes],
            "huge": [s(tf.cast(huge, d)) for d in ("int64", "float32", "float64")],
            "int32_max": s(tf.constant(2**31 - 1, tf.int32)),
            "float64": s64(steps),
        }

    out = {
        k: tf.nest.map_structure(lambda t: t.numpy().astype(np.float64), v)
        for k, v in evaluate(tf.constant(STEPS, tf.int64), tf.constant(HUGE, tf.int64)).items()
    }
    reference = out["by_dtype"][0]
    assert np.all(np.isfinite(reference)) and np.all(reference >= 0)
    # Any step dtype gives the same values; Python ints and eager calls too.
    for dtype, got in zip(step_dtypes[1:], out["by_dtype"][1:], strict=True):
        np.testing.assert_allclose(got, reference, rtol=1e-7, err_msg=dtype)
    assert float(s(7)) == pytest.approx(reference[7], rel=1e-7)
    # Far past the end: finite and >= 0 (finite schedules hold their last value).
    for got in out["huge"]:
        assert np.all(np.isfinite(got)) and np.all(got >= 0), got
    assert out["int32_max"] >= 0
    # float64 on request; float32 within 1e-6 of the float64 peak.
    assert s(3).dtype == tf.float32 and s64(3).dtype == tf.float64
    v64 = out["float64"]
    assert np.abs(reference - v64).max() <= 1e-6 * np.abs(v64).max()
    # Scalar steps under XLA: one trace for any number of step values.
    fn = tf.function(lambda step: s(step), jit_compile=True)
    jit = [float(fn(tf.constant(t, tf.int64))) for t in STEPS[::4]]
    assert fn.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(jit, reference[::4], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LONG))
def test_float32_exact_at_the_end_of_long_schedules(name):
    s = LONG[name]()
    s64 = as_float64(s)
    end = 10**9 + 10**8 + 7
    steps = [0, 1, 10**8 - 1, 10**8, 10**8 + 1, 2**24 + 1, 2**30, end - 3, end - 2, end - 1, end]
    steps += list(range(10**9 - 3, 10**9 + 3)) + [2**40 - 1, 2**40]
    v32, v64 = graph_values(s, steps), graph_values(s64, steps)
    peak = np.abs(v64).max()
    assert np.abs(v32 - v64).max() <= 1e-6 * peak, np.abs(v32 - v64).argmax()


def test_float64_initial_rate_gives_float64():
    s = CosineDecay(np.float64(0.1), 100)
    assert s.dtype == "float64" and s(5).dtype == tf.float64
    assert OneCycle(tf.constant(0.1, tf.float64), 100)(0).dtype == tf.float64
    assert ExponentialDecay(0.1, 10, 0.5)(0).dtype == tf.float32


def test_decays_never_increase_and_warmups_rise():
    decays = [n for n in NAMES if "Decay" in n and "cycle" not in n and "Restarts" not in n]
    decays = [n for n in decays if not n.startswith(("CosineDecay_warmup", "LinearCosine"))]
    decays = [n for n in decays if not n.startswith("WarmupStableDecay")]
    for name in decays:
        v = graph_values(CASES[name](), STEPS)
        assert np.all(np.diff(v) <= 1e-9), name
    for name in ("CosineDecay_warmup", "Warmup_linear", "OneCycle", "WarmupStableDecay"):
        v = graph_values(CASES[name](), range(6))
        assert np.all(np.diff(v) > 0), name


# --- The learning rate actually used by an optimizer.


def _lr_probe_model(schedule, jit_compile=True):
    """A model where each SGD update moves the kernel by exactly -learning_rate.

    The kernel is reset to 0 after every batch and the target is -10, so the
    mean-absolute-error gradient is exactly 1: the kernel after update k is
    -lr_k, bit for bit. A built-in loss keeps the model loadable in safe mode.
    """
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule),
        loss="mean_absolute_error",
        jit_compile=jit_compile,
    )
    return model


def _fit_and_record(model, n):
    record = _RecordRate()
    x = np.ones((n, 1), "float32")
    model.fit(
        x,
        np.full((n, 1), -10.0, "float32"),
        batch_size=1,
        epochs=1,
        shuffle=False,
        callbacks=[record],
        verbose=0,
    )
    return record.used


class _RecordRate(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.used = []

    def on_train_batch_end(self, batch, logs=None):
        kernel = self.model.layers[0].kernel
        self.used.append(-float(kernel.numpy()[0, 0]))
        kernel.assign(tf.zeros_like(kernel))


# The variants run in `make test-full` (TFKIT_FULL=1) and are marked slow.
_SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("TFKIT_FULL") != "1", reason="variant; TFKIT_FULL=1 runs it"),
]


def _fit_params(fast):
    return [n if n in fast else pytest.param(n, marks=_SLOW) for n in NAMES]


@pytest.mark.parametrize("name", NAMES)  # every schedule, in CI too (about 1 s each)
def test_model_fit_uses_schedule_at_each_update(name):
    schedule = CASES[name]()
    used = _fit_and_record(_lr_probe_model(schedule), 36)
    expected = [float(schedule(k)) for k in range(36)]  # update k uses schedule(k)
    np.testing.assert_allclose(used, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "name",
    [
        "Warmup_Join_nested",
        "OneCycle",
        "CosineDecayRestarts_warmup",
        "Product_nested",
        "WarmupStableDecay_1sqrt",
        "get_scheduler_cosine_warmup_with_min_lr",
    ],
)
def test_custom_jit_loop_uses_schedule(name):
    schedule = CASES[name]()
    kernel = keras.Variable(np.zeros((1,), "float32"))
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    optimizer.build([kernel])

    @tf.function(jit_compile=True)
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(kernel.value)
        optimizer.apply_gradients([(tape.gradient(loss, kernel.value), kernel)])
        used = -kernel.value[0]
        kernel.assign(tf.zeros_like(kernel.value))
        return used

    used = [float(train_step()) for _ in range(30)]
    assert train_step.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(used, [float(schedule(k)) for k in range(30)], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", _fit_params({"OneCycle", "Warmup_Join_nested", "Product_nested"}))
def test_saved_model_with_schedule_loads_in_safe_mode_and_resumes(name, tmp_path):
    schedule = CASES[name]()
    model = _lr_probe_model(schedule, jit_compile=False)
    _fit_and_record(model, 4)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    restored = loaded.optimizer._learning_rate
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations) == 4
    # Training resumes at update 4 of the schedule.
    used = _fit_and_record(loaded, 5)
    np.testing.assert_allclose(
        used, [float(schedule(k)) for k in range(4, 9)], rtol=1e-6, atol=1e-9
    )
