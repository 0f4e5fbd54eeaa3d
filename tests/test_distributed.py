"""The all-of-tfkit recipe ends with the same weights on 1 device, 2 mirrored replicas and 2 workers."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from distributed_recipe import train
from multiworker import run_workers

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def single_device_weights():
    return train(tf.distribute.get_strategy())


def _assert_same(got, expected):
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_mirrored_strategy_equals_single_device(single_device_weights, mirrored_strategy):
    _assert_same(train(mirrored_strategy), single_device_weights)


def test_multi_worker_mirrored_equals_single_device(single_device_weights, tmp_path, root):
    run_workers(
        str(HERE / "distributed_recipe.py"), lambda i: [str(tmp_path / f"w{i}.npz")], root=root
    )
    for index in range(2):
        with np.load(tmp_path / f"w{index}.npz") as f:
            got = [f[f"arr_{i}"] for i in range(len(single_device_weights))]
        _assert_same(got, single_device_weights)
