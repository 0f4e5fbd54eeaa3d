"""Elastic resume: a changed replica count re-derives the accumulation steps, or is refused.

fit's global batch is ``per-replica batch x replicas``. When a run resumes on
another number of devices with the same per-replica batch, every update keeps
its samples only if the accumulation steps scale by the inverse factor:
``BackupAndRestore(on_change="adapt")`` derives them from the steps per epoch.
The global batch itself is measured at the first step after a resume (the loss
tracker's sample count): a derived k that would not keep the samples of an
update is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from stopping import Stop as _Stop
from stopping import StopAt as _StopAt

import tfkit
from tfkit.callbacks import BackupAndRestore

N = 32


def _xy(n=N):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype("float32"), rng.normal(size=(n, 1)).astype("float32")


def _model(k, strategy=None):
    keras.utils.set_random_seed(3)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(tfkit.GradientAccumulator(keras.optimizers.SGD(0.05), k), "mse")
    return model


def _one_replica():
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    return tf.distribute.MirroredStrategy(["/cpu:0"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tf.data", "numpy"])
def test_two_one_four_replicas_equal_the_uninterrupted_run(tmp_path, root, mode):
    """2 replicas x k=2 -> 1 x k=4 -> 4 x k=1 (per-replica batch 4): within 1e-5 of 2 replicas throughout.

    ``tf.data``: a static batch (drop_remainder), every micro-batch full.
    ``numpy``: fit's own pipeline under ``tfkit.training.install`` (each
    micro-batch weighed by its size).
    """
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, str(root / "tests" / "elastic_worker.py"), str(tmp_path), mode],
        capture_output=True, text=True, env=env, cwd=root, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["one"]["adapted"]["accumulation steps"] == [2, 4]
    assert report["one"]["initial"] == [1, 4]  # epoch 1, batch 2 of 8 -> batch 4 of 16
    assert report["four"]["adapted"]["accumulation steps"] == [4, 1]
    assert report["four"]["initial"] == [1, 3]  # batch 12 of 16 -> batch 3 of 4
    assert report["four"]["k"] == 1
    assert report["four"]["iterations"] == report["expected_iterations"] == 12
    assert report["max_abs"] <= 1e-5 and report["max_rel"] <= 1e-5


def _backup_on_two(tmp_path, mirrored_strategy, k, batch, stop, n=N):
    x, y = _xy(n)
    with pytest.raises(_Stop):
        _model(k, mirrored_strategy).fit(
            x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0,
            callbacks=[BackupAndRestore(tmp_path, save_freq=2), _StopAt(stop)],
        )  # fmt: skip


@pytest.mark.slow
def test_ragged_micro_batches_are_refused_without_install(tmp_path, mirrored_strategy):
    """30 samples: a ragged last batch (dynamic spec); plain fit would weigh it as a full one."""
    _backup_on_two(tmp_path, mirrored_strategy, k=2, batch=8, stop=2, n=30)
    x, y = _xy(30)
    model = _model(2, _one_replica())
    before = [w.copy() for w in model.get_weights()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match=r"elastic resume \(2 -> 4 accumulation steps\).*"
                           r"install\(model\).*drop_remainder=True"):  # fmt: skip
            model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                      callbacks=[BackupAndRestore(tmp_path, on_change="adapt")])  # fmt: skip
    backup = np.load(os.path.join(tmp_path, sorted(os.listdir(tmp_path))[-1], "model.npz"))
    for w, saved in zip(model.get_weights(), [backup[f] for f in sorted(backup.files)], strict=True):
        np.testing.assert_array_equal(w, saved)  # the backup loaded; no step trained after it
    assert any((w != b).any() for w, b in zip(model.get_weights(), before, strict=True))


@pytest.mark.slow
def test_a_fraction_of_an_accumulation_step_is_refused(tmp_path, mirrored_strategy):
    """1 replica x k=1 -> 2 replicas at the same per-replica batch would need k = 1/2."""
    x, y = _xy()
    with pytest.raises(_Stop):
        _model(1, _one_replica()).fit(
            x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
            callbacks=[BackupAndRestore(tmp_path, save_freq=2), _StopAt(2)],
        )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"steps per epoch \(elastic resume\): backup '8 steps "
                       r"of 1 micro-batches per update', this run '4 steps: 1 \* 4 / 8 is not a "
                       r"whole number"):  # fmt: skip
        _model(1, mirrored_strategy).fit(
            x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
            callbacks=[BackupAndRestore(tmp_path, on_change="adapt")],
        )  # fmt: skip


@pytest.mark.slow
def test_changed_k_at_the_same_global_batch_is_refused(tmp_path, mirrored_strategy):
    """Replicas 2 -> 1 with fit's global batch kept but k changed: the updates would change."""
    _backup_on_two(tmp_path, mirrored_strategy, k=2, batch=8, stop=2)
    x, y = _xy()
    with pytest.raises(RuntimeError, match="accumulation steps: backup 2, this run 4"):
        _model(4, _one_replica()).fit(
            x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
            callbacks=[BackupAndRestore(tmp_path, on_change="adapt")],
        )  # fmt: skip


@pytest.mark.slow
def test_a_global_batch_the_steps_do_not_explain_is_refused(tmp_path, mirrored_strategy):
    """``repeat`` + ``steps_per_epoch`` doubled by hand at the same global batch: k=4 would hold 32 samples."""
    x, y = _xy()

    def fit(strategy, steps, callbacks):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat()
        _model(2, strategy).fit(ds, steps_per_epoch=steps, epochs=2, verbose=0,
                                callbacks=callbacks)  # fmt: skip

    with pytest.raises(_Stop):
        fit(mirrored_strategy, 4, [BackupAndRestore(tmp_path, save_freq=2), _StopAt(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match=r"held 8 x 2 = 16 samples, this run's would hold "
                           r"8 x 4 = 32.*no backup was written since"):  # fmt: skip
            fit(_one_replica(), 8, [BackupAndRestore(tmp_path, on_change="adapt")])


def test_every_backup_records_the_measured_global_batch(tmp_path):
    x, y = _xy()
    with pytest.raises(_Stop):
        _model(2).fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                      callbacks=[BackupAndRestore(tmp_path, save_freq=2), _StopAt(4)])  # fmt: skip
    (name,) = os.listdir(tmp_path)
    with open(os.path.join(tmp_path, name, "progress.json")) as f:
        assert json.load(f)["config"]["batch size"] == 4
