"""BackupAndRestore in a custom loop: TrainStep on an uncompiled model, public resume position.

The loop is the one README and examples/custom_loop.py show: callbacks through
``keras.callbacks.CallbackList``, one iterator from ``backup.iterator(dataset)``
over a ``repeat()``-ed dataset reshuffled each epoch, and the epoch and batch
to continue from in ``backup.initial_epoch`` / ``backup.initial_step``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfkit
from tfkit.callbacks import BackupAndRestore

N, BATCH, EPOCHS = 32, 4, 3
STEPS = N // BATCH


class _Stop(Exception):
    pass


def _loop(backup_dir, stop_at=None, strategy=None):
    keras.utils.set_random_seed(3)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(8), keras.layers.Dropout(0.2),
             keras.layers.Dense(1)]
        )  # fmt: skip
        optimizer = tfkit.GradientAccumulator(keras.optimizers.Adam(1e-2), 2)
    step = tfkit.TrainStep(model, "mse", optimizer, strategy=strategy)  # not compiled
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(N, seed=1).repeat()
    dataset = dataset.batch(BATCH, drop_remainder=True)
    if strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    stop = tfkit.callbacks.EarlyStopping(monitor="loss", patience=5)
    backup = BackupAndRestore(backup_dir, save_freq=3, callbacks=[stop])
    callbacks = keras.callbacks.CallbackList(
        [backup, stop], model=model, epochs=EPOCHS, steps=STEPS
    )
    callbacks.on_train_begin()
    batches = backup.iterator(dataset)
    seen = 0
    for epoch in range(backup.initial_epoch, EPOCHS):
        callbacks.on_epoch_begin(epoch)
        first = backup.initial_step if epoch == backup.initial_epoch else 0
        losses = []
        for b in range(first, STEPS):
            callbacks.on_train_batch_begin(b)
            logs = step(*next(batches))
            losses.append(float(logs["loss"]))
            callbacks.on_train_batch_end(b, logs)
            seen += 1
            if seen == stop_at:
                raise _Stop
        callbacks.on_epoch_end(epoch, {"loss": float(np.mean(losses))})
    callbacks.on_train_end()
    return model, backup, int(optimizer.iterations)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model, _, updates = _loop(tmp_path_factory.mktemp("ref") / "b")
    return [w.copy() for w in model.get_weights()], updates


@pytest.mark.parametrize("stop_at", [5, 11])  # mid-epoch 0; mid-epoch 1
def test_uncompiled_train_step_loop_resumes_exactly(tmp_path, reference, stop_at):
    with pytest.raises(_Stop):
        _loop(tmp_path, stop_at)
    model, backup, updates = _loop(tmp_path)
    saved = stop_at // 3 * 3  # save_freq=3
    assert (backup.initial_epoch, backup.initial_step) == divmod(saved, STEPS)
    assert updates == reference[1]
    for a, b in zip(reference[0], model.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert not tmp_path.exists()


def test_fresh_start_position_is_zero(tmp_path):
    model, backup, _ = _loop(tmp_path, stop_at=None)
    assert (backup.initial_epoch, backup.initial_step, backup.restored_from) == (0, 0, None)


def test_iterator_refuses_a_non_dataset(tmp_path):
    with pytest.raises(TypeError, match="`dataset` must be"):
        BackupAndRestore(tmp_path).iterator([1, 2, 3])
