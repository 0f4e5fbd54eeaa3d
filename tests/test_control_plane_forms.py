"""The control plane on every optimizer form, read back from the weights.

Reference: the same optimizer built by plain Keras with the rate the control
plane should apply (``base * multiplier * epoch factor``) as its float rate.
Same initial weights, same data: the weights after training must agree.
"""

from __future__ import annotations

import glob
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkit
from tfkit.callbacks import (
    EarlyStopping,
    EpochScheduler,
    HyperparameterLogger,
    MomentumScheduler,
    NaNGuard,
    ReduceLROnPlateau,
    UpdateRatioMonitor,
)
from tfkit.optimizers import control, layerwise_decay, parameter_groups, walk

RTOL = 1e-5
FACTOR = 0.5  # EpochScheduler's factor: every update applies base * FACTOR


def _has(name):
    return hasattr(keras.optimizers, name)


def _leaf(kind: str, lr: float, name: str | None = None):
    if not _has(kind):
        pytest.skip(f"keras.optimizers.{kind} is not in Keras {keras.__version__}")
    kwargs = {"name": name} if name else {}
    if kind == "AdamEMA":
        return keras.optimizers.Adam(lr, use_ema=True, ema_overwrite_frequency=None, **kwargs)
    return getattr(keras.optimizers, kind)(lr, **kwargs)


LEAVES = ["SGD", "Adam", "AdamW", "Lion", "Adafactor", "Lamb", "Muon", "ScheduleFreeAdamW"]


def _form(form: str, lr: float):
    """Build optimizer ``form`` whose every group has base rate ``lr`` (the head: ``2 * lr``)."""
    if form in LEAVES:
        return _leaf(form, lr)
    if form == "AdamEMA":
        return keras.optimizers.Adam(lr, use_ema=True)
    if form == "map":
        return keras.optimizers.MultiOptimizer(
            keras.optimizers.OptimizerMap(
                keras.optimizers.SGD(2 * lr, name="head"),
                {"body/.*": keras.optimizers.Adam(lr, name="body")},
            )
        )
    if form == "selector":
        head, body = keras.optimizers.SGD(2 * lr, name="head"), keras.optimizers.Adam(lr, name="body")
        return keras.optimizers.MultiOptimizer(lambda v: body if "body" in v.path else head)
    if form == "keras_lso":
        return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(lr))
    if form == "chain":  # wrap(GradientAccumulator(layerwise_decay(...))), as mixed precision builds it
        inner = layerwise_decay(keras.optimizers.AdamW(2 * lr, name="adamw"), ["body/.*"], 0.5)
        return tfkit.precision.LossScaleOptimizer(tfkit.GradientAccumulator(inner, 1))
    raise AssertionError(form)


FORMS = [*LEAVES, "AdamEMA", "map", "selector", "keras_lso", "chain"]


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((4,))
    h = keras.layers.Dense(4, name="body")(inp)
    out = keras.layers.Dense(2, name="head")(h)
    return keras.Model(inp, out)


def _data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")


def _fit(optimizer, callbacks):
    model = _model()
    model.compile(optimizer, "mse")
    model.fit(*_data(), batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
    return model


@pytest.mark.parametrize("form", FORMS)
def test_fit_applies_the_controlled_rate(form):
    controlled = _fit(_form(form, 0.02), [EpochScheduler(lambda e: FACTOR), HyperparameterLogger()])
    reference = _fit(_form(form, 0.02 * FACTOR), [])
    for a, b in zip(controlled.weights, reference.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=1e-7)
    # Every group reports the rate it applies; Keras' own property agrees.
    for name, state in control(controlled.optimizer).items():
        base = {"head": 0.04, "body": 0.02, "adamw": 0.04, "adamw_layer_0": 0.02}.get(name, 0.02)
        assert state.learning_rate() == pytest.approx(base * FACTOR, rel=1e-6), name
        assert float(state.optimizer.learning_rate) == pytest.approx(base * FACTOR, rel=1e-6)


@pytest.mark.parametrize("form", ["SGD", "AdamW", "Lion", "map", "selector", "chain"])
def test_train_step_applies_the_controlled_rate(form):
    x, y = _data()

    def run(optimizer, multiplier):
        model = _model()
        model.build((None, 4))
        optimizer.build(model.trainable_variables)  # a selector's groups exist once built
        step = tfkit.TrainStep(model, "mse", optimizer, jit_compile=True)
        for state in control(optimizer).values():
            state.learning_rate_multiplier.assign(multiplier)
        for i in range(0, 16, 4):
            step(x[i : i + 4], y[i : i + 4])
        assert step.trace_count == 1
        return model

    controlled, reference = run(_form(form, 0.02), FACTOR), run(_form(form, 0.02 * FACTOR), 1.0)
    for a, b in zip(controlled.weights, reference.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=1e-7)


def test_scheduled_beta_1_equals_keras_with_that_float():
    """A constant momentum schedule at 0.8 gives exactly Adam(beta_1=0.8)."""
    schedule = keras.optimizers.schedules.PolynomialDecay(0.8, 10, end_learning_rate=0.8)
    controlled = _fit(keras.optimizers.Adam(0.01, beta_1=0.9), [MomentumScheduler(schedule)])
    reference = _fit(keras.optimizers.Adam(0.01, beta_1=0.8), [])
    for a, b in zip(controlled.weights, reference.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=1e-7)
    assert controlled.optimizer.get_config()["beta_1"] == 0.9  # config keeps the float


def test_keras_gradient_accumulation_exact_rate_refused_momentum():
    """The rate knobs are read at Keras' real update (exact); a momentum schedule is refused."""
    controlled = _fit(keras.optimizers.SGD(0.02, gradient_accumulation_steps=2),
                      [EpochScheduler(lambda e: FACTOR)])  # fmt: skip
    reference = _fit(keras.optimizers.SGD(0.02 * FACTOR, gradient_accumulation_steps=2), [])
    for a, b in zip(controlled.weights, reference.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=1e-7)
    opt = keras.optimizers.SGD(0.1, momentum=0.9, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="GradientAccumulator"):
        _fit(opt, [MomentumScheduler(lambda step: 0.9)])


def test_selector_multi_optimizer_is_built_first_and_never_a_leaf():
    opt = _form("selector", 0.02)
    assert parameter_groups(opt) == {}  # unbuilt: no groups, and no leaf either
    with pytest.raises(ValueError, match="no sub-optimizers yet"):
        control(opt)
    model = _fit(opt, [ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)])
    states = control(model.optimizer)
    assert sorted(states) == ["body", "head"]
    assert all(float(s.learning_rate_multiplier.numpy()) == 0.5 for s in states.values())


def test_unbuilt_selector_on_an_unbuilt_model_says_what_to_do():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(1)

        def call(self, x):
            return self.d(x)

    model = Sub()
    model.compile(_form("selector", 0.1), "mse")
    cb = keras.callbacks.CallbackList([HyperparameterLogger()], model=model)
    with pytest.raises(ValueError, match=r"build the model \(model.build"):
        cb.on_train_begin()


def test_keras_callbacks_read_and_write_the_applied_rate(tmp_path):
    """Keras' ReduceLROnPlateau and CSVLogger see the rate the control plane applies."""
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    csv = str(tmp_path / "log.csv")
    model.fit(
        *_data(), batch_size=4, epochs=3, verbose=0,
        callbacks=[
            EpochScheduler(lambda e: FACTOR),
            keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9),
            keras.callbacks.CSVLogger(csv),
        ],
    )  # fmt: skip
    rows = open(csv).read().splitlines()[1:]
    logged = [float(r.split(",")[1]) for r in rows]
    # Keras logs the rate before its reduction (its first epoch only sets `best`),
    # and writes the reduced applied rate back through `optimizer.learning_rate`.
    np.testing.assert_allclose(logged, [0.05, 0.05, 0.025], rtol=1e-6)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0125, rel=1e-6)


def test_tensorboard_event_files_for_the_full_chain(tmp_path):
    """The reported crash: Keras' TensorBoard with wrap(GradientAccumulator(layerwise_decay(...)))."""
    pytest.importorskip("tensorboard")
    model = _model()
    inner = layerwise_decay(keras.optimizers.AdamW(0.02, name="adamw"), ["body/.*"], 0.5)
    model.compile(tfkit.precision.wrap(tfkit.GradientAccumulator(inner, 2)), "mse")
    model.fit(
        *_data(), batch_size=4, epochs=2, verbose=0,
        callbacks=[EpochScheduler(lambda e: FACTOR ** (e + 1)),
                   keras.callbacks.TensorBoard(str(tmp_path))],
    )  # fmt: skip
    scalars = {}
    for path in glob.glob(os.path.join(str(tmp_path), "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    scalars.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor)
                    )
    for tag, base in (("epoch_learning_rate_adamw", 0.02), ("epoch_learning_rate_adamw_layer_0", 0.01)):
        np.testing.assert_allclose(
            [scalars[tag][e] for e in range(2)], [base * 0.5, base * 0.25], rtol=1e-6
        )


CALLBACKS = {
    "MomentumScheduler": lambda: MomentumScheduler(lambda step: 0.9),
    "ReduceLROnPlateau": lambda: ReduceLROnPlateau(monitor="loss", patience=0, min_delta=1e9),
    "EpochScheduler": lambda: EpochScheduler(lambda e: 1.0),
    "HyperparameterLogger": lambda: HyperparameterLogger(),
    "EarlyStopping": lambda: EarlyStopping(monitor="loss"),
    "NaNGuard": lambda: NaNGuard(),
    "UpdateRatioMonitor": lambda: UpdateRatioMonitor(),
    "BackupAndRestore": "backup",
}


def _keras_objects(model, callbacks):
    seen, out = set(), []

    def add(obj):
        if id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)

    for layer in model._flatten_layers(include_self=True):  # noqa: SLF001 - test-side walk
        add(layer)
        for v in layer.weights:
            add(v)
    for opt in walk(model.optimizer):
        add(opt)
        for v in opt.variables:
            add(v)
    for cb in callbacks:
        add(cb)
    return out


def _shadowing(obj) -> list[str]:
    cls = type(obj)
    found = []
    for name in getattr(obj, "__dict__", {}):
        attr = getattr(cls, name, None)
        if callable(attr) or isinstance(attr, property):
            found.append(f"{cls.__name__}.{name}")
    return found


@pytest.mark.parametrize("name", sorted(CALLBACKS))
def test_no_callback_leaves_an_instance_attribute_shadowing_a_method(name, tmp_path):
    make = CALLBACKS[name]
    cb = tfkit.callbacks.BackupAndRestore(str(tmp_path)) if make == "backup" else make()
    model = _model()
    model.compile(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 4, 0.5),
                                       momentum=0.5), "mse")  # fmt: skip
    baseline = {id(o): _shadowing(o) for o in _keras_objects(model, [])}
    model.fit(*_data(), batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    for obj in _keras_objects(model, [cb]):
        assert _shadowing(obj) == baseline.get(id(obj), []), (name, _shadowing(obj))


def _frames_to_schedule(make, callbacks) -> int:
    """Keras/tfkit Python frames from ``train_step`` to the schedule's ``__call__`` (both included)."""
    counts = []

    class Probe(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            frame, n = sys._getframe(), 0
            while frame is not None:
                path = frame.f_code.co_filename
                if f"{os.sep}keras{os.sep}" in path or f"{os.sep}tfkit{os.sep}" in path:
                    n += 1
                if frame.f_code.co_name == "train_step":
                    counts.append(n)  # a read from inside the update, not a callback's
                    break
                frame = frame.f_back
            return tf.constant(0.01)

        def get_config(self):
            return {}

    model = _model()
    model.compile(make(Probe()), "mse")
    model.fit(*_data(), batch_size=16, epochs=1, verbose=0, callbacks=callbacks)
    return max(counts)


CHAINS = {
    "plain": lambda s: keras.optimizers.SGD(s),
    "keras_lso": lambda s: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(s)),
    "tfkit_chain": lambda s: tfkit.precision.LossScaleOptimizer(
        tfkit.GradientAccumulator(keras.optimizers.SGD(s), 1)
    ),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_frames_from_train_step_to_the_schedule(chain):
    """The control plane adds one frame (its rate object) to whatever the chain costs."""
    plain = _frames_to_schedule(CHAINS[chain], [])
    controlled = _frames_to_schedule(CHAINS[chain], [HyperparameterLogger()])
    assert controlled == plain + 1
    if chain == "plain":
        assert controlled <= 12


# -- layer-wise decay: groups by structure ------------------------------------------------
def _blocks_model(recompute: bool):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    x = keras.layers.Dense(4, name="embed")(inp)
    for i in range(2):
        block = keras.layers.Dense(4, name=f"block_{i}")
        x = (tfkit.Recompute(block) if recompute else block)(x)
    return keras.Model(inp, keras.layers.Dense(1, name="head")(x))


def _routing(model):
    """``{variable path: group}`` of a built LayerwiseDecay."""
    out = {}
    for name, opt in parameter_groups(model.optimizer).items():
        for v in opt._trainable_variables:  # noqa: SLF001 - test-side read of what Keras routed
            out[v.path] = name
    return out


PATTERNS = ["embed/.*", "block_0/.*", "block_1/.*"]


@pytest.mark.parametrize("recompute", [False, True])
def test_layerwise_decay_sees_the_same_paths_with_recompute_and_after_reload(recompute, tmp_path):
    model = _blocks_model(recompute)
    model.compile(layerwise_decay(keras.optimizers.AdamW(1e-3, name="adamw"), PATTERNS, 0.5), "mse")
    x = np.ones((4, 4), "float32")
    model.fit(x, x[:, :1], verbose=0, callbacks=[HyperparameterLogger()])
    routing = _routing(model)
    want = {"embed": "adamw_layer_0", "block_0": "adamw_layer_1", "block_1": "adamw_layer_2"}
    assert routing == {p: want.get(p.split("/")[0], "adamw") for p in routing}
    assert len(set(routing.values())) == 4
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert _routing(loaded) == routing
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_layerwise_decay_takes_layer_objects():
    model = _blocks_model(True)
    layers = [model.get_layer("embed"), model.get_layer("recompute").layer, model.get_layer("recompute_1").layer]
    opt = layerwise_decay(keras.optimizers.SGD(0.1, name="sgd"), layers, 0.5)
    model.compile(opt, "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0)
    assert sorted(set(_routing(model).values())) == ["sgd", "sgd_layer_0", "sgd_layer_1", "sgd_layer_2"]
    with pytest.raises(ValueError, match="must be built"):
        layerwise_decay(keras.optimizers.SGD(0.1), [keras.layers.Dense(2)], 0.5)


@pytest.mark.parametrize(
    "patterns, match",
    [
        (["embed/.*", "blok_0/.*"], r"received pattern='blok_0/\.\*'"),
        (["embed/.*", "e.*"], r"must not overlap; variable 'embed/kernel' is matched by"),
    ],
)
def test_layerwise_decay_refuses_a_pattern_matching_nothing_or_overlapping(patterns, match):
    model = _blocks_model(False)
    model.compile(layerwise_decay(keras.optimizers.SGD(0.1), patterns, 0.5), "mse")
    with pytest.raises(ValueError, match=match):
        model.fit(np.ones((4, 4)), np.ones((4, 1)), verbose=0)
