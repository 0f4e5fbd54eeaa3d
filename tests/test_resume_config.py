"""BackupAndRestore refuses a backup of another configuration, naming each item; adapts on opt-in.

Also: healthy non-finite states are not damage, a SIGINT inside a save leaves
a resumable directory, a read-only directory fails before training, and a
full disk is a warning that keeps the last good backup. An exception stops
``fit`` mid-epoch (``on_train_end`` does not run, as after a kill).
"""

from __future__ import annotations

import errno
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkit
from tfkit.callbacks import BackupAndRestore, _atomic

N, EPOCHS = 32, 3


class _Stop(Exception):
    pass


class _StopAt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise _Stop


class _Fault(_atomic.Fault):
    def __init__(self, save, stage, error):
        self.target, self.stage, self.error = save, stage, error

    def at(self, stage):
        if stage == self.stage and self.save == self.target:
            raise self.error


def _data(bad=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    if bad:
        x[5] = 1e6  # overflows float16: the loss scaler skips that step
    return x, y


def _model(k=2, beta_1=0.9, optimizer=None, mixed=False, strategy=None):
    keras.utils.set_random_seed(3)
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    with (strategy or tf.distribute.get_strategy()).scope():
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(8), keras.layers.Dense(1, dtype="float32")]
        )
        inner = optimizer or keras.optimizers.Adam(1e-2, beta_1=beta_1)
        model.compile(tfkit.GradientAccumulator(inner, k), "mse", metrics=["mae"])
    return model


def _fit(model, backup, stop_at=None, batch_size=4, bad=False, callbacks=(), **kwargs):
    x, y = _data(bad)
    extra = [_StopAt(stop_at)] if stop_at else []
    return model.fit(
        x, y, batch_size=batch_size, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=[backup, *callbacks, *extra], **kwargs,
    )  # fmt: skip


def _interrupt(path, stop_at=6, **model_kwargs):
    with pytest.raises(_Stop):
        _fit(_model(**model_kwargs), BackupAndRestore(path, save_freq=3), stop_at)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(k=3), r"accumulation steps: backup 2, this run 3"),
        (dict(beta_1=0.8), r"Adam\.beta_1: backup 0\.9, this run 0\.8"),
        (dict(optimizer=keras.optimizers.SGD(1e-2)), r"optimizer tree: backup 'GradientAccumulator > Adam'"),
        (dict(batch_size=8), r"steps per epoch: backup 8, this run 4"),
    ],
)  # fmt: skip
def test_changed_configuration_is_refused_naming_each_item(tmp_path, change, match):
    _interrupt(tmp_path)
    batch_size = change.pop("batch_size", 4)
    model = _model(**change)
    before = [w.copy() for w in model.get_weights()]
    for on_change in ("refuse", "adapt"):  # none of these can be continued exactly
        with pytest.raises(RuntimeError, match=match):
            _fit(model, BackupAndRestore(tmp_path, save_freq=3, on_change=on_change),
                 batch_size=batch_size)  # fmt: skip
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing loaded


def test_changed_carried_callbacks_are_refused(tmp_path):
    _interrupt(tmp_path)
    stop = tfkit.callbacks.EarlyStopping(patience=2)
    with pytest.raises(RuntimeError, match="callbacks carried: backup 0, this run 1"):
        _fit(_model(), BackupAndRestore(tmp_path, save_freq=3, callbacks=[stop]))


def test_changed_batch_of_a_dataset_is_refused(tmp_path):
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat()

    def run(batch, **kwargs):
        return _model().fit(
            ds.batch(batch, drop_remainder=True), steps_per_epoch=6, epochs=EPOCHS,
            verbose=0, **kwargs,
        )  # fmt: skip

    with pytest.raises(_Stop):
        run(4, callbacks=[BackupAndRestore(tmp_path, save_freq=3), _StopAt(7)])
    with pytest.raises(RuntimeError, match=r"input: backup .*shape=\(4, 3\).*this run .*\(8, 3\)"):
        run(8, callbacks=[BackupAndRestore(tmp_path, save_freq=3)])


@pytest.mark.slow
def test_learning_rate_assigned_by_keras_callback_is_not_a_change(tmp_path):
    """A callback assigning the rate variable (as Keras' ReduceLROnPlateau does): restored, not refused."""
    x, y = _data()

    def halve(epoch, logs):
        if epoch == 0:
            plateau.model.optimizer.learning_rate = 5e-3  # the setter, as Keras' own callbacks use it

    plateau = keras.callbacks.LambdaCallback(on_epoch_end=halve)

    def run(backup, stop_at=None):
        model = _model()
        model.fit(x, y, batch_size=4, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[backup, plateau] + ([_StopAt(stop_at)] if stop_at else []))  # fmt: skip
        return model

    expected = run(BackupAndRestore(tmp_path / "ref")).get_weights()
    with pytest.raises(_Stop):
        run(BackupAndRestore(tmp_path / "run", save_freq=3), 14)
    backup = BackupAndRestore(tmp_path / "run", save_freq=3)
    resumed = run(backup)
    assert backup.restored_from is not None
    for a, b in zip(expected, resumed.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_skipped_mixed_precision_steps_and_sigint_inside_a_save_resume_exactly(tmp_path):
    """inf in the loss/metric totals is healthy; a KeyboardInterrupt mid-save leaves no temp dir.

    The compiled metric (``mae``) is built by fit's first step, after
    ``on_train_begin``: the resume verifies and restores it then.
    """
    reference = _model(mixed=True)
    history = _fit(reference, BackupAndRestore(tmp_path / "ref"), bad=True)
    assert not np.isfinite(history.history["loss"][0])  # a skipped step's inf is in the total
    backup = BackupAndRestore(tmp_path / "run", save_freq=3)
    backup._fault = _Fault(3, "optimizer.npz", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(mixed=True), backup, bad=True)
    names = os.listdir(tmp_path / "run")
    assert names == ["backup-000000000001"], names  # the interrupted write left nothing
    resumed, backup = _model(mixed=True), BackupAndRestore(tmp_path / "run", save_freq=3)
    history2 = _fit(resumed, backup, bad=True)
    assert backup.damaged_backups == [] and backup.restored_from is not None
    for a, b in zip(reference.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert backup.initial_step == 6  # the third backup (batch 9) was interrupted
    np.testing.assert_array_equal(history2.history["loss"], history.history["loss"])


def test_non_finite_weights_are_still_refused(tmp_path):
    _interrupt(tmp_path)
    (name,) = [n for n in os.listdir(tmp_path) if n.startswith("backup-")]
    path = tmp_path / name
    with np.load(path / "model.npz") as f:
        arrays = [f[k] for k in sorted(f.files, key=lambda k: int(k[4:]))]
    arrays[0][0, 0] = np.nan
    np.savez(path / "model.npz", *arrays)
    os.remove(path / "manifest.json")
    _atomic.write_manifest(str(path))  # checksums match: only the finiteness check can tell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="non-finite values in model array 0"):
            _fit(_model(), BackupAndRestore(tmp_path, save_freq=3))


def test_read_only_backup_dir_is_one_error_before_training(tmp_path):
    model = _model()
    before = int(model.optimizer.iterations)
    backup = BackupAndRestore(tmp_path / "b")
    backup._fault = _Fault(0, "probe", PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(OSError, match=r"cannot write backups to backup_dir=.*Permission denied"):
        _fit(model, backup)
    assert int(model.optimizer.iterations) == before  # no step ran
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="cannot write backups"):
        _fit(model, BackupAndRestore(tmp_path / "file" / "b"))


def test_full_disk_is_a_warning_and_the_last_good_backup_stays(tmp_path):
    x, y = _data()
    expected = _model()
    expected.fit(x, y, batch_size=4, epochs=EPOCHS, shuffle=False, verbose=0)
    backup = BackupAndRestore(tmp_path, save_freq=3)
    backup._fault = _Fault(2, "progress.json", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.warns(RuntimeWarning, match="was not written.*No space left.*intact"):
        with pytest.raises(_Stop):
            _fit(_model(), backup, 8)  # backups after batches 3 (kept) and 6 (fails)
    (name,) = [n for n in os.listdir(tmp_path) if not n.startswith(".tmp")]
    assert name == "backup-000000000000" and _atomic.verify(str(tmp_path / name)) is None
    resumed, backup = _model(), BackupAndRestore(tmp_path, save_freq=3)
    _fit(resumed, backup)
    assert backup.initial_step == 3
    for a, b in zip(expected.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_changed_replica_count_is_refused_unless_adapted(tmp_path, mirrored_strategy):
    """Elastic resume: 2 replicas -> 1 keeps fit's global batch; within 1e-5 of the 2-replica run."""
    x, y = _data()
    one = tf.distribute.MirroredStrategy(["/cpu:0"])

    def run(strategy, callbacks):
        model = _model(strategy=strategy)
        model.fit(x, y, batch_size=4, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=callbacks)  # fmt: skip
        return model

    expected = run(mirrored_strategy, []).get_weights()
    with pytest.raises(_Stop):  # backups after batches 3 and 9: accumulation windows open
        run(mirrored_strategy, [BackupAndRestore(tmp_path / "odd", save_freq=3), _StopAt(10)])
    with pytest.raises(RuntimeError, match="open accumulation window: backup '2 replicas, 1 of 2"):
        run(one, [BackupAndRestore(tmp_path / "odd", save_freq=3, on_change="adapt")])
    with pytest.raises(_Stop):  # a backup after batch 8: the window closed
        run(mirrored_strategy, [BackupAndRestore(tmp_path, save_freq=4), _StopAt(10)])
    with pytest.raises(RuntimeError, match="replicas: backup 2, this run 1"):
        run(one, [BackupAndRestore(tmp_path, save_freq=4)])
    backup = BackupAndRestore(tmp_path, save_freq=4, on_change="adapt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # replayed batches (distributed input)
        model = run(one, [backup])
    assert backup.adapted == {"replicas": (2, 1)}
    for a, b in zip(expected, model.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_on_change_is_validated(tmp_path):
    with pytest.raises(ValueError, match="`on_change`"):
        BackupAndRestore(tmp_path, on_change="maybe")


def test_generator_input_is_named_in_one_warning_and_replayed(tmp_path):
    """from_generator cannot be checkpointed: one warning naming it, then a loud replay."""
    x, y = _data()

    def dataset():
        def gen():
            for i in range(0, N, 4):
                yield x[i : i + 4], y[i : i + 4]

        spec = (tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None, 1), tf.float32))
        return tf.data.Dataset.from_generator(gen, output_signature=spec)

    expected = _model()
    expected.fit(dataset(), epochs=EPOCHS, verbose=0)
    with pytest.warns(RuntimeWarning, match=r"training input \(element_spec=.*cannot be checkpointed"
                      ) as record:  # fmt: skip
        with pytest.raises(_Stop):
            _model().fit(dataset(), epochs=EPOCHS, verbose=0,
                         callbacks=[BackupAndRestore(tmp_path, save_freq=3), _StopAt(13)])  # fmt: skip
    assert len([w for w in record if "cannot be checkpointed" in str(w.message)]) == 1
    resumed = _model()
    with pytest.warns(RuntimeWarning, match="replaying 4 batches of epoch 1"):
        resumed.fit(dataset(), epochs=EPOCHS, verbose=0,
                    callbacks=[BackupAndRestore(tmp_path, save_freq=3)])  # fmt: skip
    for a, b in zip(expected.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
