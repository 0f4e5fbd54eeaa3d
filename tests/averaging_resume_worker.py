"""Worker for the averaging kill-and-resume test: may SIGKILL itself, then resumes.

Usage: python averaging_resume_worker.py BACKUP_DIR OUT.npz [--kill-at-batch N]

Trains LossScaleOptimizer(GradientAccumulator(Adam, 2)) under install() with
WeightAveraging("ema", warmup=True) updated in-graph, a second
WeightAveraging("swa", start_epoch=1) from the callback, and SpikeGuard("rollback")
(one batch carries a 1e4x loss), all carried by BackupAndRestore(save_freq=1).
With --kill-at-batch it sends itself SIGKILL after that many batches; run again
without it and it resumes, then writes the weights, both averages and the guard's
state to OUT.npz.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfkit  # noqa: E402


class KillAt(keras.callbacks.Callback):
    def __init__(self, at: int):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv) -> None:
    backup_dir, out = argv[0], argv[1]
    kill_at = int(argv[3]) if len(argv) > 3 and argv[2] == "--kill-at-batch" else None
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], "float32")).astype("float32")
    y[40:44] *= 1e4  # micro-batch 10 of epoch 0 spikes
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])  # fmt: skip
    inner = keras.optimizers.Adam(0.01)
    model.compile(tfkit.LossScaleOptimizer(tfkit.GradientAccumulator(inner, 2)), "mse")
    ema = tfkit.callbacks.WeightAveraging("ema", decay=0.8, warmup=True, final_weights="current")
    swa = tfkit.callbacks.WeightAveraging("swa", start_epoch=1, final_weights="current")
    guard = tfkit.callbacks.SpikeGuard("rollback", warmup_steps=4, snapshot_every=3)
    tfkit.training.install(model, spike_guard=guard, weight_averaging=ema)
    backup = tfkit.callbacks.BackupAndRestore(backup_dir, save_freq=1, callbacks=[ema, swa, guard])
    callbacks = [backup, ema, swa, guard] + ([KillAt(kill_at)] if kill_at else [])
    print("TRAINING", flush=True)
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    state = guard.state.as_dict()
    np.savez(
        out,
        *model.get_weights(),
        *ema.get_averaged_weights(),
        *swa.get_averaged_weights(),
        counts=np.array([ema.averaged_updates, swa.averaged_updates, state["spikes"],
                         state["rollbacks"], state["accepted"], int(inner.iterations)]),  # fmt: skip
        statistics=np.array([state["loss_mean"], state["loss_var"]]),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
