"""tfkit.memory: peak memory of a step, measured in fresh processes with the BFC allocator.

The functions named ``target_*`` run in the child processes started by
``measure_in_subprocess`` (this file is loaded there by path).
"""

from __future__ import annotations

import os
import pathlib

import pytest
import tensorflow as tf

from tfkit.memory import MemoryStats, measure_in_subprocess, peak_memory

THIS = str(pathlib.Path(__file__).resolve())


# ---------------------------------------------------------------- child-process targets


def target_allocation(n: int) -> dict:
    """One step that materialises an n-element float32 tensor and reduces it."""
    scale = tf.Variable(2.0)  # a variable read, so Grappler cannot constant-fold the step

    @tf.function
    def step():
        return tf.reduce_sum(tf.fill([n], scale) * scale)

    return peak_memory(step).to_dict()


def target_residual_mlp(recompute: bool, blocks: int = 12) -> dict:
    """Peak memory of one training step of a residual MLP, with or without Recompute."""
    import keras

    from tfkit.recompute import Recompute

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32,))
    h = inputs
    for _ in range(blocks):
        block = keras.Sequential(
            [keras.layers.Dense(256, activation="relu"), keras.layers.Dense(32)]
        )
        h = h + (Recompute(block) if recompute else block)(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    opt = keras.optimizers.SGD(0.01)
    opt.build(model.trainable_variables)
    x = tf.random.stateless_normal([512, 32], seed=[0, 1])
    y = tf.zeros([512, 1])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    return peak_memory(step).to_dict()


def target_residual_mlp_pair() -> dict:
    """Both variants in one child (the peak is reset before each measurement)."""
    return {"plain": target_residual_mlp(False), "recompute": target_residual_mlp(True)}


def target_oom(n: int) -> dict:
    try:
        target_allocation(n)
    except tf.errors.ResourceExhaustedError:
        return {"oom": True}
    return {"oom": False}


# ---------------------------------------------------------------- tests


def test_stats_arithmetic():
    stats = MemoryStats("CPU:0", baseline=100, peak=350)
    assert stats.step_peak == 250
    assert stats.to_dict() == {"device": "CPU:0", "baseline": 100, "peak": 350, "step_peak": 250}


@pytest.mark.skipif(
    os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true"),
    reason="this process uses the BFC allocator",
)
def test_cpu_without_bfc_raises_pointing_to_subprocess():
    with pytest.raises(RuntimeError, match="TF_CPU_ALLOCATOR_USE_BFC=true"):
        peak_memory(lambda: tf.zeros([4]), device="CPU:0")


def test_bad_arguments():
    with pytest.raises(TypeError, match="`step`"):
        peak_memory(42)
    with pytest.raises(ValueError, match="`warmup`"):
        peak_memory(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="`target`"):
        measure_in_subprocess("no_colon")
    with pytest.raises(ValueError, match="`mem_limit_mb`"):
        measure_in_subprocess("m:f", mem_limit_mb=0)


def test_known_allocation_measured_exactly():
    """The step's peak is the 4 * n bytes of its one big tensor (plus allocator rounding)."""
    n = 1 << 20
    stats = measure_in_subprocess(f"{THIS}:target_allocation", {"n": n})
    assert stats["device"] == "CPU:0"
    assert 4 * n <= stats["step_peak"] <= 4 * n + 64 * 1024, stats


def test_child_failure_is_reported():
    # A module that imports fast (no TensorFlow) and lacks the function.
    with pytest.raises(RuntimeError, match="(?s)json:target_missing.*AttributeError"):
        measure_in_subprocess("json:target_missing")


@pytest.mark.slow
def test_memory_limit_gives_real_oom():
    result = measure_in_subprocess(f"{THIS}:target_oom", {"n": 16 << 20}, mem_limit_mb=32)
    assert result == {"oom": True}


def test_recompute_reduces_activation_memory():
    """Twelve residual blocks of 512x256 activations: Recompute keeps only block inputs.

    Without recomputation the step keeps ~2 hidden activations (512x256 float32,
    0.5 MiB each) per block; with it, one block input (512x32) per block plus
    one block's activations during its backward pass.
    """
    result = measure_in_subprocess(f"{THIS}:target_residual_mlp_pair")
    plain, wrapped = result["plain"], result["recompute"]
    hidden = 512 * 256 * 4
    assert plain["step_peak"] >= 12 * hidden, plain
    ratio = wrapped["step_peak"] / plain["step_peak"]
    assert ratio < 0.5, (plain, wrapped)
