"""BackupAndRestore's backups in-process: atomic layout, verification, damaged backups refused.

The kill-anywhere harness (tests/test_resume_kill.py) covers real SIGKILLs;
here an exception stops ``fit`` mid-epoch (``on_train_end`` does not run, as
after a kill) so each case stays cheap.
"""

from __future__ import annotations

import json
import os
import warnings

import keras
import numpy as np
import pytest

import tfkit
from tfkit.callbacks import BackupAndRestore, _atomic

N, BATCH, EPOCHS = 32, 4, 3  # 8 batches an epoch


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


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 3)).astype("float32"), rng.normal(size=(N, 1)).astype("float32")


def _model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(8), keras.layers.Dropout(0.2), keras.layers.Dense(1)]
    )
    inner = keras.optimizers.Adam(1e-2)
    model.compile(tfkit.LossScaleOptimizer(tfkit.GradientAccumulator(inner, 2)), "mse")
    return model


def _fit(model, backup, stop_at=None, **kwargs):
    x, y = _data()
    callbacks = [backup] + ([_StopAt(stop_at)] if stop_at else [])
    return model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
        **kwargs,
    )


def _interrupted(backup_dir, stop_at, **kwargs):
    with pytest.raises(_Stop):
        _fit(_model(), BackupAndRestore(backup_dir, **kwargs), stop_at)
    return sorted(n for n in os.listdir(backup_dir) if n.startswith("backup-"))


@pytest.fixture(scope="module")
def reference():
    model = _model()
    x, y = _data()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return [w.copy() for w in model.get_weights()], history.history["loss"]


def _assert_same(model, weights):
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_backup_layout_holds_every_optimizer_variable(tmp_path):
    names = _interrupted(tmp_path, 6, save_freq=3)
    assert names == ["backup-000000000001"]  # the older one removed after the commit
    path = tmp_path / names[0]
    assert sorted(os.listdir(path)) == sorted(
        ["manifest.json", "model.npz", "metrics.npz", "optimizer.npz", "progress.json"]
        + ["data.index", "data.data-00000-of-00001"]  # the input iterator's position
    )
    assert _atomic.verify(str(path)) is None
    progress = json.loads((path / "progress.json").read_text())
    assert (progress["epoch"], progress["batches_done"]) == (0, 6)
    model = _model()
    model.optimizer.build(model.trainable_variables)
    with np.load(path / "optimizer.npz") as f:
        # scale, windows, Adam slots, and the control plane's three knobs
        assert len(f.files) == len(model.optimizer.variables) + 3
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


@pytest.mark.parametrize("stop_at", [6, 13])  # mid-epoch 0; mid-epoch 1 after an epoch boundary
def test_interrupted_fit_resumes_exactly_with_the_same_logs(tmp_path, reference, stop_at):
    weights, losses = reference
    _interrupted(tmp_path, stop_at, save_freq=3)
    model, backup = _model(), BackupAndRestore(tmp_path, save_freq=3)
    history = _fit(model, backup)
    assert backup.skipped_batches == (stop_at // 3 * 3) % 8
    _assert_same(model, weights)
    # The resumed epoch's loss averages all of its batches, as uninterrupted.
    np.testing.assert_allclose(
        history.history["loss"], losses[-len(history.history["loss"]) :], rtol=1e-6
    )
    assert not tmp_path.exists()  # deleted after the completed fit


def test_epoch_backups_resume_exactly(tmp_path, reference):
    _interrupted(tmp_path, 12)  # save_freq="epoch": the backup of epoch 0's end
    model, backup = _model(), BackupAndRestore(tmp_path)
    _fit(model, backup)
    assert backup.skipped_batches == 0
    _assert_same(model, reference[0])


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def _bad_progress(path):
    progress = json.loads((path / "progress.json").read_text())
    progress["batches_done"] = 1000
    (path / "progress.json").write_text(json.dumps(progress))
    os.remove(path / "manifest.json")
    _atomic.write_manifest(str(path))  # checksums match: only validation can tell


@pytest.mark.parametrize(
    "damage",
    [
        "flip",
        "progress",
        pytest.param("truncate", marks=pytest.mark.slow),
        pytest.param("no_manifest", marks=pytest.mark.slow),
    ],
)
def test_damaged_newest_backup_is_reported_and_the_previous_resumes(tmp_path, reference, damage):
    names = _interrupted(tmp_path, 13, save_freq=3, double_checkpoint=True)
    assert len(names) == 2
    newest = tmp_path / names[-1]
    if damage == "flip":
        _flip_byte(newest / "model.npz")
    elif damage == "truncate":
        os.truncate(newest / "optimizer.npz", 10)
    elif damage == "no_manifest":
        os.remove(newest / "manifest.json")
    else:
        _bad_progress(newest)
    model, backup = _model(), BackupAndRestore(tmp_path, save_freq=3, double_checkpoint=True)
    with pytest.warns(RuntimeWarning, match="skipping damaged backup") as record:
        _fit(model, backup)
    assert len([w for w in record if "damaged" in str(w.message)]) == 1
    assert "\n" not in str(record[0].message)  # one line
    assert backup.restored_from == str(tmp_path / names[0])
    _assert_same(model, reference[0])


def test_no_verified_backup_is_an_error_that_says_so(tmp_path):
    names = _interrupted(tmp_path, 6, save_freq=3)
    _flip_byte(tmp_path / names[0] / "optimizer.npz")
    model = _model()
    weights = [w.copy() for w in model.get_weights()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="none of the 1 backup.*verifies.*optimizer.npz"):
            _fit(model, BackupAndRestore(tmp_path, save_freq=3))
    _assert_same(model, weights)  # nothing loaded


def test_backup_from_another_model_is_refused(tmp_path):
    _interrupted(tmp_path, 6, save_freq=3)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    other.compile("sgd", "mse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="differ from this model"):
            _fit(other, BackupAndRestore(tmp_path, save_freq=3))


def test_leftover_temporary_directory_is_removed(tmp_path, reference):
    _interrupted(tmp_path, 6, save_freq=3)
    leftover = tmp_path / ".tmp-backup-killed"
    leftover.mkdir()
    (leftover / "model.npz").write_bytes(b"half")
    model = _model()
    _fit(model, BackupAndRestore(tmp_path, save_freq=3))
    assert not tmp_path.exists()
    _assert_same(model, reference[0])


@pytest.mark.parametrize(
    "kwargs, exc, argument",
    [
        (dict(save_freq=0), ValueError, "save_freq"),
        (dict(save_freq="batch"), ValueError, "save_freq"),
        (dict(save_freq=True), TypeError, "save_freq"),
        (dict(save_freq=2.5), TypeError, "save_freq"),
        (dict(save_freq=10**400), ValueError, "save_freq"),
        (dict(double_checkpoint="no"), TypeError, "double_checkpoint"),
        (dict(delete_checkpoint=1), TypeError, "delete_checkpoint"),
        (dict(callbacks=[keras.callbacks.History()]), TypeError, "callbacks[0]"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, exc, argument):
    with pytest.raises(exc, match=f"`{argument}`".replace("[", r"\[").replace("]", r"\]")):
        BackupAndRestore(tmp_path, **kwargs)


def test_numpy_save_freq_and_config_round_trip(tmp_path):
    backup = BackupAndRestore(tmp_path, save_freq=np.int64(4))
    assert backup.save_freq == 4 and type(backup.save_freq) is int
    config = backup.get_config()
    assert BackupAndRestore.from_config(config).get_config() == config


def test_mirrored_strategy_run_resumes_exactly(tmp_path, mirrored_strategy):
    x, y = _data()

    def run(callbacks):
        keras.utils.set_random_seed(5)
        with mirrored_strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        return model

    expected = run([]).get_weights()
    with pytest.raises(_Stop):
        run([BackupAndRestore(tmp_path, save_freq=2), _StopAt(5)])
    backup = BackupAndRestore(tmp_path, save_freq=2)
    model = run([backup])
    assert backup.skipped_batches == 4
    _assert_same(model, expected)


def test_damaged_backup_is_not_kept_as_the_previous_one(tmp_path):
    names = _interrupted(tmp_path, 13, save_freq=3, double_checkpoint=True)
    _flip_byte(tmp_path / names[-1] / "model.npz")
    model = _model()
    with pytest.warns(RuntimeWarning, match="skipping damaged backup"):
        with pytest.raises(_Stop):  # one more backup, then stopped again
            _fit(model, BackupAndRestore(tmp_path, save_freq=3, double_checkpoint=True), 5)
    kept = sorted(n for n in os.listdir(tmp_path) if n.startswith("backup-"))
    assert kept == [names[0], "backup-000000000004"]
    assert all(_atomic.verify(str(tmp_path / n)) is None for n in kept)


def test_control_plane_knobs_resume_with_the_weights(tmp_path):
    """A plateau multiplier set before the kill is in force after the resume.

    The reference trains the whole run at half the rate; the resumed model
    starts from a fresh optimizer (multiplier 1) and must pick 0.5 up from the
    backup, or its weights differ from the reference.
    """
    from tfkit.optimizers import control

    def halved():
        model = _model()
        (state,) = control(model.optimizer).values()
        state.learning_rate_multiplier.assign(0.5)
        return model

    reference = halved()
    _fit(reference, BackupAndRestore(tmp_path / "ref"))
    with pytest.raises(_Stop):
        _fit(halved(), BackupAndRestore(tmp_path / "run", save_freq=3), 6)
    resumed = _model()
    backup = BackupAndRestore(tmp_path / "run", save_freq=3)
    _fit(resumed, backup)
    assert backup.skipped_batches == 6
    (state,) = control(resumed.optimizer).values()
    assert float(state.learning_rate_multiplier.numpy()) == 0.5
    _assert_same(resumed, [w.copy() for w in reference.get_weights()])
