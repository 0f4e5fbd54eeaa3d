"""Shared test set-up: quiet TensorFlow, deterministic seeds, isolated global state."""

from __future__ import annotations

import os
import pathlib
import sys

# Before TensorFlow is imported anywhere: no C++ log noise, no GPU probing output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PYTHONHASHSEED", "0")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the whole session, so MirroredStrategy tests run
# in-process. This must happen before TensorFlow initialises its devices; the
# rest of the suite keeps running on /CPU:0 as usual.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Examples import their sibling helper modules (examples/digits_data.py).
sys.path.insert(0, str(ROOT / "examples"))
# Test helpers (multiworker.py, recipe modules) import as plain modules.
sys.path.insert(0, str(ROOT / "tests"))

FULL = os.environ.get("TFKIT_FULL") == "1"

# Controls that assert a Keras defect report "this Keras bug is fixed" when it is.
from keras_defects import pytest_collection_modifyitems, pytest_runtest_makereport  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """Seed every test and restore the global dtype policy it may have changed."""
    policy = keras.config.dtype_policy()
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy(policy)
    # free_memory=False skips a full gc.collect() (~0.45 s a test with
    # TensorFlow loaded); Python's collector still runs on its own schedule.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def mirrored_strategy():
    """A MirroredStrategy over the two logical CPU devices.

    Each strategy gets fresh collective keys (as TensorFlow's own tests do):
    two strategies in one process otherwise reuse collective instance keys and
    fail with "Shape mismatch in the collective instance".
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def root() -> pathlib.Path:
    return ROOT
