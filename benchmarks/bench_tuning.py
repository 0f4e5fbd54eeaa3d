"""What a learning-rate range test costs compared with training the same batches with fit.

lr_find runs one ``train_on_batch`` per update and reads the loss back to the
host each time (it must, to smooth it and stop on divergence), snapshots and
restores the whole training state, and, when the learning rate is a schedule,
traces the train step once more. This measures those costs as ratios to
``model.fit`` over the same 50 batches, interleaved, medians of repeats.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from harness import interleaved_medians, ratio_table  # noqa: E402

from tfkit.tuning._state import TrainingState  # noqa: E402
from tfkit.tuning.lr_find import lr_find  # noqa: E402

STEPS, BATCH = 50, 32


def _model(learning_rate=1e-3) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(256, activation="relu")(inputs)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    return model


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * BATCH, 64), dtype="float32")
    y = rng.integers(0, 10, STEPS * BATCH).astype("int32")
    fit_a, fit_b, finder = _model(), _model(), _model()
    scheduled = _model(keras.optimizers.schedules.CosineDecay(1e-3, 1000))
    snap = _model()
    snap.train_on_batch(x[:BATCH], y[:BATCH])

    def restore_only():
        TrainingState.capture(snap).restore()

    def find(model):
        return lambda: lr_find(
            model, (x, y), min_lr=1e-6, max_lr=1e-2, steps=STEPS, batch_size=BATCH, verbose=0
        )

    cases = {
        "fit, 50 batches": lambda: fit_a.fit(x, y, batch_size=BATCH, epochs=1, verbose=0),
        "fit, 50 batches (control)": lambda: fit_b.fit(x, y, batch_size=BATCH, epochs=1, verbose=0),
        "lr_find, 50 updates (float rate)": find(finder),
        "lr_find, 50 updates (schedule: +1 trace)": find(scheduled),
        "snapshot + restore only": restore_only,
    }
    medians = interleaved_medians(cases, repeats=7, warmup=1)
    print(ratio_table(medians, "fit, 50 batches", "lr_find cost vs fit over the same batches"))


if __name__ == "__main__":
    main()
