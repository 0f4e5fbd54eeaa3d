"""EarlyStopping: same decisions as Keras', stop on NaN with restore, device snapshots, resume."""

from __future__ import annotations

import math
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit.callbacks import EarlyStopping


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


class _Scripted(keras.callbacks.Callback):
    """Overwrite the monitored value with a scripted sequence and perturb weights each epoch."""

    def __init__(self, values, key="val_loss"):
        super().__init__()
        self.values, self.key = values, key

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        # Weights mark the epoch, so restores are checkable: kernel == epoch + 1.
        self.model.layers[0].kernel.assign(np.full((2, 1), epoch + 1.0, "float32"))


def _drive(callback, values, key="val_loss"):
    """Run ``callback`` through a CallbackList on a scripted sequence (custom loop)."""
    model = _model()
    scripted = _Scripted(values, key)
    callbacks = keras.callbacks.CallbackList([scripted, callback], model=model)
    callbacks.on_train_begin()
    epochs = 0
    for epoch in range(len(values)):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_epoch_end(epoch, {"loss": 1.0})
        epochs += 1
        if model.stop_training:
            break
    callbacks.on_train_end()
    return model, epochs


SEQUENCES = [
    [1.0, 0.9, 0.95, 0.97, 0.99, 0.5],
    [1.0, 1.0, 1.0, 1.0, 1.0],
    [3.0, 2.0, 1.0, 0.5, 0.4, 0.39, 0.385],
    [1.0, 2.0, 0.5, 0.6, 0.7, 0.8, 0.9],
]
CONFIGS = [
    dict(patience=0),
    pytest.param(dict(patience=2), marks=pytest.mark.slow),
    pytest.param(dict(patience=1, min_delta=0.05), marks=pytest.mark.slow),
    dict(patience=2, baseline=0.45),
    pytest.param(dict(patience=1, start_from_epoch=2), marks=pytest.mark.slow),
    pytest.param(dict(patience=2, restore_best_weights=True), marks=pytest.mark.slow),
    dict(patience=3, restore_best_weights=True, min_delta=0.02, start_from_epoch=1),
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_same_decisions_as_keras_early_stopping(config):
    """Keras' own callback is the reference: same stop epoch, best, best epoch, weights."""
    for values in SEQUENCES:
        ours = EarlyStopping(**config)
        ref = keras.callbacks.EarlyStopping(**config)
        model_ours, epochs_ours = _drive(ours, values)
        model_ref, epochs_ref = _drive(ref, values)
        assert epochs_ours == epochs_ref, values
        assert ours.stopped_epoch == ref.stopped_epoch
        assert ours.best == pytest.approx(float(ref.best))
        assert ours.best_epoch == ref.best_epoch
        np.testing.assert_array_equal(model_ours.get_weights()[0], model_ref.get_weights()[0])


def test_threshold_mode_rel():
    # rel: an improvement must beat best * (1 - 0.1); 0.95 after 1.0 is not one, 0.85 is.
    es = EarlyStopping(patience=1, min_delta=0.1, threshold_mode="rel")
    _, epochs = _drive(es, [1.0, 0.95, 0.85, 0.8])
    assert epochs == 2 and es.best == 1.0
    es = EarlyStopping(patience=1, min_delta=0.1, threshold_mode="rel")
    _, epochs = _drive(es, [1.0, 0.85, 0.7, 0.7])
    assert epochs == 4 and es.best == pytest.approx(0.7)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_stops_at_once_on_nonfinite_and_restores(bad):
    es = EarlyStopping(patience=10, restore_best_weights=True)
    model, epochs = _drive(es, [1.0, 0.5, 0.7, bad, 0.1, 0.1])
    assert epochs == 4 and es.stopped_epoch == 3 and es.stopped_on_nonfinite
    np.testing.assert_array_equal(model.get_weights()[0], np.full((2, 1), 2.0))  # epoch 1's weights


def test_nonfinite_in_fit_restores_finite_weights():
    """A real divergence in model.fit: loss becomes inf/NaN; weights end finite and best."""
    x = np.full((16, 2), 10.0, "float32")
    y = np.ones((16, 1), "float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.03), "mse", jit_compile=True)
    es = EarlyStopping(monitor="loss", patience=50, restore_best_weights=True)
    history = model.fit(x, y, batch_size=16, epochs=60, verbose=0, callbacks=[es])
    losses = history.history["loss"]
    assert not np.isfinite(losses[-1]) and len(losses) < 60
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert es.best == pytest.approx(min(v for v in losses if np.isfinite(v)))


def test_snapshot_stays_on_device_without_get_weights(monkeypatch):
    calls = []
    model = _model()
    monkeypatch.setattr(model, "get_weights", lambda: calls.append(1) or [])
    es = EarlyStopping(patience=5, restore_best_weights=True)
    callbacks = keras.callbacks.CallbackList([_Scripted([3.0, 2.0, 1.0, 2.0]), es], model=model)
    callbacks.on_train_begin()
    for epoch in range(4):
        callbacks.on_epoch_end(epoch, {})
    callbacks.on_train_end()
    assert calls == []  # Keras' EarlyStopping would call get_weights() at every improvement
    assert all(isinstance(v, tf.Variable) for v in es.state.best_weights.copies)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), 3.0))


def test_restores_at_end_without_trigger_and_disk_snapshot(tmp_path):
    for kwargs in ({}, {"snapshot": "disk", "snapshot_path": str(tmp_path / "best.weights.h5")}):
        es = EarlyStopping(patience=10, restore_best_weights=True, **kwargs)
        model, epochs = _drive(es, [3.0, 1.0, 2.0, 2.5])
        assert epochs == 4 and es.stopped_epoch == 0
        np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), 2.0))


def test_state_survives_a_resume_through_tf_checkpoint(tmp_path):
    values = [3.0, 1.0, 2.0, 2.5, 2.6, 2.7]
    # Uninterrupted run: patience 3 stops at epoch 4 (waits at epochs 2, 3, 4).
    reference = EarlyStopping(patience=3, restore_best_weights=True)
    _, epochs_ref = _drive(reference, values)
    assert epochs_ref == 5

    # Interrupted after epoch 2, state saved with the model, process "restarts".
    model = _model()
    es = EarlyStopping(patience=3, restore_best_weights=True)
    callbacks = keras.callbacks.CallbackList([_Scripted(values), es], model=model)
    callbacks.on_train_begin()
    for epoch in range(3):
        callbacks.on_epoch_end(epoch, {})
    path = tf.train.Checkpoint(model=model, early_stopping=es.state).save(str(tmp_path / "ckpt"))
    # no on_train_end: preempted

    model2 = _model()
    es2 = EarlyStopping(patience=3, restore_best_weights=True)
    tf.train.Checkpoint(model=model2, early_stopping=es2.state).restore(path).assert_existing_objects_matched()
    assert es2.wait == 1 and es2.best == 1.0 and es2.best_epoch == 1
    callbacks = keras.callbacks.CallbackList([_Scripted(values), es2], model=model2)
    callbacks.on_train_begin()  # must NOT reset: in_progress was saved as 1
    stopped_at = None
    for epoch in range(3, len(values)):
        callbacks.on_epoch_end(epoch, {})
        if model2.stop_training:
            stopped_at = epoch
            break
    callbacks.on_train_end()
    assert stopped_at == reference.stopped_epoch == 4
    # The snapshot of epoch 1 came back through the checkpoint.
    np.testing.assert_array_equal(model2.layers[0].kernel.numpy(), np.full((2, 1), 2.0))
    # After a completed run the same instance starts afresh (Keras' reuse rule).
    callbacks.on_train_begin()
    assert es2.wait == 0 and es2.best is None


def test_get_state_set_state_resume():
    es = EarlyStopping(patience=3)
    es.set_state({"wait": 2, "best": 0.5, "best_epoch": 4, "in_progress": 1})
    model = _model()
    callbacks = keras.callbacks.CallbackList([es], model=model)
    callbacks.on_train_begin()
    callbacks.on_epoch_end(5, {"val_loss": 0.9})
    assert model.stop_training and es.wait == 3
    with pytest.raises(ValueError, match="unknown state keys"):
        es.set_state({"patience": 1})


def test_fit_end_to_end_with_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0]])).astype("float32")
    model = _model()
    es = EarlyStopping(patience=0, min_delta=10.0, restore_best_weights=True)
    history = model.fit(x, y, validation_data=(x, y), epochs=10, verbose=0, callbacks=[es])
    assert len(history.history["loss"]) == 2 and es.stopped_epoch == 1 and es.best_epoch == 0


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="maximum")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="patience"):
        EarlyStopping(patience=1.5)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-0.1)
    with pytest.raises(ValueError, match="threshold_mode"):
        EarlyStopping(threshold_mode="relative")
    with pytest.raises(ValueError, match="snapshot"):
        EarlyStopping(snapshot="host")
    es = EarlyStopping(monitor="val_acc_typo", mode="min")
    model = _model()
    callbacks = keras.callbacks.CallbackList([es], model=model)
    callbacks.on_train_begin()
    with pytest.warns(UserWarning, match=r"val_acc_typo.*Available keys: \['loss', 'val_loss'\]"):
        callbacks.on_epoch_end(0, {"loss": 1.0, "val_loss": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callbacks.on_epoch_end(1, {"loss": 1.0})  # warned once only
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        _drive(EarlyStopping(monitor="something"), [1.0], key="something")


def test_config_round_trip():
    es = EarlyStopping(monitor="loss", patience=3, threshold_mode="rel", restore_best_weights=True)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(es), safe_mode=True)
    assert restored.get_config() == es.get_config()


def test_device_snapshot_under_mirrored_strategy(mirrored_strategy):
    with mirrored_strategy.scope():
        model = _model()
    es = EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    model, epochs = _drive_model(model, es, [3.0, 1.0, 2.0, 2.5])
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), 2.0))
    assert all(isinstance(c, tf.distribute.DistributedValues) for c in es.state.best_weights.copies)


def _drive_model(model, callback, values):
    scripted = _Scripted(values)
    callbacks = keras.callbacks.CallbackList([scripted, callback], model=model)
    callbacks.on_train_begin()
    for epoch in range(len(values)):
        callbacks.on_epoch_end(epoch, {})
    callbacks.on_train_end()
    return model, len(values)


class _Preempt(Exception):
    pass


class _CheckpointEachEpoch(keras.callbacks.Callback):
    """Saves model + EarlyStopping state after every epoch; 'crashes' after epoch ``crash_after``."""

    def __init__(self, checkpoint, directory, crash_after=None):
        super().__init__()
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1)
        self.crash_after = crash_after

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch)
        if epoch == self.crash_after:
            raise _Preempt()


@pytest.mark.parametrize("crash_after", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_preempted_fit_resumes_with_same_decisions(tmp_path, crash_after):
    values = [3.0, 1.0, 2.0, 2.5, 2.6, 2.7, 2.8]

    def run(directory, crash_after=None, restore=False):
        model = _model()
        es = EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
        checkpoint = tf.train.Checkpoint(model=model, early_stopping=es.state)
        saver = _CheckpointEachEpoch(checkpoint, directory, crash_after)
        initial_epoch = 0
        if restore:
            checkpoint.restore(saver.manager.latest_checkpoint).assert_existing_objects_matched()
            initial_epoch = int(saver.manager.latest_checkpoint.rsplit("-", 1)[1]) + 1
        x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
        # _Scripted sets val_loss and marks the weights before EarlyStopping reads them.
        model.fit(x, y, validation_data=(x, y), epochs=len(values), initial_epoch=initial_epoch, verbose=0,
                  callbacks=[_Scripted(values), es, saver])
        return model, es

    reference_model, reference = run(str(tmp_path / "ref"))
    with pytest.raises(_Preempt):
        run(str(tmp_path / "ckpt"), crash_after=crash_after)
    model, resumed = run(str(tmp_path / "ckpt"), restore=True)
    assert resumed.stopped_epoch == reference.stopped_epoch == 4
    assert resumed.best_epoch == reference.best_epoch == 1
    np.testing.assert_array_equal(model.get_weights()[0], reference_model.get_weights()[0])


def test_disk_snapshot_is_atomic_and_deleted_when_training_ends(tmp_path, monkeypatch):
    # Temporary snapshots go under a private temp root, so a leak is visible.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    user_path = tmp_path / "user" / "best.weights.h5"
    for path in (None, str(user_path)):
        es = EarlyStopping(patience=10, restore_best_weights=True, snapshot="disk", snapshot_path=path)
        written = []
        model = _model()
        original = model.save_weights

        def spy(filepath, *args, written=written, original=original, **kwargs):
            written.append(os.path.basename(filepath))
            return original(filepath, *args, **kwargs)

        model.save_weights = spy
        scripted = _Scripted([3.0, 1.0, 2.0, 2.5])
        callbacks = keras.callbacks.CallbackList([scripted, es], model=model)
        callbacks.on_train_begin()
        for epoch in range(4):
            callbacks.on_epoch_begin(epoch)
            callbacks.on_epoch_end(epoch, {"loss": 1.0})
        # Never written in place: a temporary file renamed over the snapshot.
        assert written and all(name.startswith(".tmp-") for name in written)
        assert os.path.exists(es._snapshot.path)
        callbacks.on_train_end()
        np.testing.assert_array_equal(model.layers[0].kernel.numpy(), np.full((2, 1), 2.0))
        assert os.listdir(tmp_path / "tmp") == []  # no leaked directory or file
        if path is not None:
            assert os.listdir(user_path.parent) == []


def test_disk_snapshot_in_fit_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    es = EarlyStopping(monitor="loss", patience=1, restore_best_weights=True, snapshot="disk")
    model = _model()
    model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=3, verbose=0, callbacks=[es])
    model.fit(np.ones((8, 2)), np.ones((8, 1)), epochs=2, verbose=0, callbacks=[es])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argument", ["restore_best_weights", "stop_on_nonfinite"])
@pytest.mark.parametrize("value", ["no", 1, None, np.float32(1.0)])
def test_booleans_only_from_bool(argument, value):
    with pytest.raises(TypeError, match=f"`{argument}`.*received {argument}="):
        EarlyStopping(**{argument: value})
    assert getattr(EarlyStopping(**{argument: np.bool_(True)}), argument) is True


def test_numpy_scalars_accepted_like_python_scalars():
    es = EarlyStopping(patience=np.int64(3), min_delta=np.float32(0.5), start_from_epoch=np.int32(1))
    assert (es.patience, es.min_delta, es.start_from_epoch) == (3, 0.5, 1)
    for name in ("patience", "start_from_epoch", "min_delta"):
        with pytest.raises(ValueError, match=name):
            EarlyStopping(**{name: 10**400})
