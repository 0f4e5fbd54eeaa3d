"""tfkit.precision.set_policy / auto_policy: every branch, on CPU, by injecting devices."""

from __future__ import annotations

import keras
import pytest

from tfkit.devices import DeviceDescription
from tfkit.precision.policy import POLICIES, PolicyChange, auto_policy, set_policy


def gpu(index: int, cc, model: str = "GPU") -> DeviceDescription:
    return DeviceDescription(f"GPU:{index}", "GPU", model, cc)


CPU = DeviceDescription("CPU:0", "CPU")
TPU = DeviceDescription("TPU:0", "TPU", "TPU v4")


AUTO_CASES = (
    ([], "float32"),
    ([CPU], "float32"),
    ([CPU, gpu(0, (8, 0), "A100")], "mixed_bfloat16"),
    ([gpu(0, (9, 0), "H100")], "mixed_bfloat16"),
    ([gpu(0, (8, 9), "L4")], "mixed_bfloat16"),
    ([gpu(0, (7, 0), "V100")], "mixed_float16"),
    ([gpu(0, (7, 5), "T4")], "mixed_float16"),
    ([gpu(0, (6, 1), "P4")], "float32"),
    ([gpu(0, (3, 7), "K80")], "float32"),
    # Several GPUs: the lowest capability decides (one policy for all replicas).
    ([gpu(0, (8, 0)), gpu(1, (7, 5))], "mixed_float16"),
    ([gpu(0, (7, 5)), gpu(1, (8, 0))], "mixed_float16"),
    ([gpu(0, (8, 0)), gpu(1, (9, 0))], "mixed_bfloat16"),
    ([gpu(0, (8, 6)), gpu(1, (6, 0))], "float32"),
    # Unknown capability (no CUDA details): no guess.
    ([gpu(0, None, "unknown")], "float32"),
    ([gpu(0, (8, 0)), gpu(1, None)], "float32"),
    ([CPU, TPU], "mixed_bfloat16"),
)


def test_auto_policy_rule():
    # One test over all cases: each case is cheap, the per-test Keras teardown is not.
    for devices, expected in AUTO_CASES:
        name, reason = auto_policy(devices)
        assert name == expected, devices
        assert reason, devices  # always says why
        change = set_policy("auto", devices=devices)
        assert change.name == expected and change.requested == "auto", devices
        assert keras.config.dtype_policy().name == expected, devices


def test_auto_reason_names_the_deciding_gpu():
    _, reason = auto_policy([gpu(0, (8, 0), "A100"), gpu(1, (7, 0), "V100")])
    assert "GPU:1" in reason and "7.0" in reason and "lowest of 2" in reason


def test_auto_on_this_machine_uses_list_devices():
    from tfkit.devices import list_devices

    expected, _ = auto_policy(list_devices())
    assert set_policy("auto").name == expected


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16", "float32"])
def test_explicit_policy_is_applied_and_returned(name):
    change = set_policy(name)
    assert isinstance(change, PolicyChange)
    assert change.name == name == str(change)
    assert keras.config.dtype_policy().name == name
    layer = keras.layers.Dense(2)
    expected_compute = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(
        name, "float32"
    )
    assert layer.compute_dtype == expected_compute
    assert layer.variable_dtype == "float32"


def test_context_manager_restores_previous_policy_even_nested_and_on_error():
    keras.config.set_dtype_policy("float32")
    with set_policy("mixed_float16") as outer:
        assert outer.previous.name == "float32"
        assert keras.config.dtype_policy().name == "mixed_float16"
        with set_policy("mixed_bfloat16"):
            assert keras.layers.Dense(1).compute_dtype == "bfloat16"
        assert keras.config.dtype_policy().name == "mixed_float16"
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(RuntimeError), set_policy("mixed_float16"):
        raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == "float32"


def test_plain_call_is_not_undone():
    keras.config.set_dtype_policy("float32")
    set_policy("mixed_float16")
    assert keras.config.dtype_policy().name == "mixed_float16"


def test_bad_name_lists_allowed_values():
    keras.config.set_dtype_policy("float32")
    for bad in ["float16", "bfloat16", "mixed-float16", "Auto", ""]:
        with pytest.raises(ValueError) as err:
            set_policy(bad)
        message = str(err.value)
        assert repr(bad) in message
        for allowed in POLICIES:
            assert allowed in message
    assert keras.config.dtype_policy().name == "float32"  # nothing applied on error


def test_bad_types():
    with pytest.raises(TypeError, match="policy"):
        set_policy(keras.DTypePolicy("float32"))
    with pytest.raises(TypeError, match="devices"):
        set_policy("auto", devices="GPU:0")
    with pytest.raises(TypeError, match="devices"):
        auto_policy([("GPU:0", (8, 0))])
    with pytest.raises(TypeError, match="devices"):
        set_policy("float32", devices=[object()])
