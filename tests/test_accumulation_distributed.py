"""GradientAccumulator under MultiWorkerMirroredStrategy: two local worker processes.

Each worker runs tests/mw_worker_accumulation.py with its own TF_CONFIG on
127.0.0.1; the result must equal single-device training on the same global
batches (float32, rtol 1e-5), including ``flush()`` of the last partial window.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from multiworker import run_workers

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT_S = 240


def _single_device_reference():
    sys.path.insert(0, str(HERE))
    try:
        import mw_worker_accumulation as worker
    finally:
        sys.path.remove(str(HERE))
    from tfkit.optimizers import GradientAccumulator

    x, y = worker.data()
    model = worker.build_model()
    optimizer = GradientAccumulator(worker.inner(), worker.K)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=worker.GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    optimizer.flush()
    return model.get_weights()


def test_multi_worker_mirrored_equals_single_device(tmp_path, root):
    run_workers(
        str(HERE / "mw_worker_accumulation.py"),
        lambda index: [str(tmp_path / f"w{index}.npz")],
        root=root,
        timeout=TIMEOUT_S,
    )

    expected = _single_device_reference()
    for index in range(2):
        result = np.load(tmp_path / f"w{index}.npz")
        assert int(result["replicas"]) == 2
        # After fit: 2 updates, 2 micro-batches open; after flush: 3 updates, window empty.
        assert result["counters"].tolist() == [2, 2, 3, 0]
        weights = [result[f"arr_{i}"] for i in range(len(expected))]
        for w, e in zip(weights, expected, strict=True):
            np.testing.assert_allclose(w, e, rtol=1e-5, atol=1e-6)


def _ragged_reference():
    """Single device, one big batch per window: the inner optimizer on the window's mean."""
    import mw_worker_accumulation as worker
    import tensorflow as tf

    x, y = worker.data()
    x, y = x[: worker.RAGGED_SAMPLES], y[: worker.RAGGED_SAMPLES]
    model = worker.build_model()
    inner = worker.inner()
    window = worker.K * worker.GLOBAL_BATCH
    for lo in range(0, len(x), window):  # 32, 32, then the flushed 12
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[lo : lo + window]) - y[lo : lo + window]))
        inner.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return model.get_weights()


@pytest.mark.slow
def test_multi_worker_ragged_weighted_windows_equal_big_batches(tmp_path, root):
    """Per-replica weights: the ragged last window (8 + 4 samples) is one exact mean."""
    run_workers(
        str(HERE / "mw_worker_accumulation.py"),
        lambda index: [str(tmp_path / f"w{index}.npz"), "ragged"],
        root=root,
        timeout=TIMEOUT_S,
    )
    sys.path.insert(0, str(HERE))
    try:
        expected = _ragged_reference()
    finally:
        sys.path.remove(str(HERE))
    for index in range(2):
        result = np.load(tmp_path / f"w{index}.npz")
        assert result["counters"].tolist() == [2, 2, 3, 0]
        weights = [result[f"arr_{i}"] for i in range(len(expected))]
        for w, e in zip(weights, expected, strict=True):
            np.testing.assert_allclose(w, e, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
