"""The seam for Keras/TensorFlow internals, and the scoping of recompute's assign hook."""

from __future__ import annotations

import ast
import pathlib

import keras

from tfkit import _internals
from tfkit.recompute import _state as _recompute_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTROL_PLANE = [
    "tfkit/optimizers/tree.py",
    "tfkit/optimizers/hyperparameters.py",
    "tfkit/optimizers/layerwise_decay.py",
    "tfkit/callbacks/momentum.py",
    "tfkit/callbacks/reduce_lr_on_plateau.py",
    "tfkit/callbacks/hyperparameter_logger.py",
    "tfkit/callbacks/epoch_scheduler.py",
    "tfkit/tuning/lr_find.py",
    "tfkit/tuning/_state.py",
]


def test_assign_hook_is_installed_only_while_recording():
    original = _internals.KerasVariableBase.assign
    v = keras.Variable(1.0)
    with _recompute_state.AssignRecorder() as outer:
        assert _internals.KerasVariableBase.assign is not original
        with _recompute_state.AssignRecorder():
            pass
        assert _internals.KerasVariableBase.assign is not original  # still recording (outer)
        v.assign(2.0)
    assert _internals.KerasVariableBase.assign is original
    assert [var for var, _ in outer.mapping] == [v]
    v.assign(3.0)  # no recorder: Keras' own assign
    assert float(v.numpy()) == 3.0


def test_control_plane_uses_no_internals_outside_the_seam():
    """No keras.src / tensorflow.python import and no `._private` attribute of a foreign object."""
    for rel in CONTROL_PLANE:
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                assert not any(n.startswith(("keras.src", "tensorflow.python")) for n in names), (
                    rel,
                    names,
                )
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = node.value
                # self._x / cls._x / a module-level _helper are the module's own.
                own = isinstance(owner, ast.Name) and owner.id in {
                    "self",
                    "cls",
                    "_internals",
                    "state",
                }
                assert own, f"{rel}:{node.lineno}: .{node.attr} on {ast.unparse(owner)}"
