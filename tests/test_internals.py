"""The seam for Keras/TensorFlow internals (tfkit/_internals), and the scoping of recompute's assign hook.

The scan covers every module of ``tfkit`` outside ``tfkit/_internals`` with no
exempted names: a private attribute is allowed only when tfkit itself defines
it *and* it is not an attribute of a Keras/TensorFlow object the code could be
reaching into (a subclass's ``self._x`` is checked against its foreign bases).
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkit import _internals
from tfkit.recompute import _state as _recompute_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfkit"
SEAM = PACKAGE / "_internals"
FOREIGN_ROOTS = ("keras", "tensorflow", "tf", "keras_tuner")
FORBIDDEN_MODULES = ("keras.src", "tensorflow.python", "tf_keras")


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if SEAM not in p.parents)


def _sample_objects() -> list:
    """Built Keras objects whose attributes (private ones included) tfkit must not reach into."""
    v = keras.Variable(np.ones((2, 2), "float32"))
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    sgd.build([v])
    adam = keras.optimizers.Adam()
    adam.build([v])
    lso = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD())
    lso.build([v])
    dense = keras.layers.Dense(2)
    dense.build((None, 2))
    bn = keras.layers.BatchNormalization()
    bn.build((None, 2))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    objects = [v, sgd, adam, lso, dense, bn, model, keras.callbacks.Callback(),
               keras.losses.MeanSquaredError(), keras.metrics.Mean(), tf.Module(),
               tf.Variable(1.0), tf.data.Dataset.range(2), tf.distribute.get_strategy(),
               keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)]  # fmt: skip
    if hasattr(keras.optimizers, "MultiOptimizer"):
        objects.append(keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(sgd, {})))
    return objects


@pytest.fixture(scope="module")
def foreign_names() -> set[str]:
    names: set[str] = set()
    for obj in _sample_objects():
        names |= {n for n in dir(obj) if n.startswith("_") and not n.startswith("__")}
    return names


def _own_definitions() -> set[str]:
    """Private names tfkit defines itself: functions, classes, class attributes, ``self._x = ...``."""
    own: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.ClassDef):
                pass
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.alias):
                own.add(node.asname or node.name.split(".")[-1])
    return own


def _foreign_base_names(path: pathlib.Path, class_name: str) -> set[str]:
    """Every attribute of the non-tfkit classes in ``class_name``'s MRO (and of a built instance)."""
    rel = path.relative_to(ROOT).with_suffix("")
    module = importlib.import_module(".".join(rel.parts))
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        return set()
    names: set[str] = set()
    for base in cls.__mro__:
        if base is not object and not base.__module__.startswith("tfkit"):
            names |= set(dir(base))
    for obj in _sample_objects():
        if any(
            isinstance(obj, base)
            for base in cls.__mro__
            if base not in (object,) and not base.__module__.startswith("tfkit")
            and base.__module__.split(".")[0] in ("keras", "tensorflow")
            and base.__name__ not in ("Module", "AutoTrackable", "Trackable", "KerasSaveable")
        ):
            names |= set(dir(obj))
    return names


def _dotted_root(node) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _violations(path: pathlib.Path, own: set[str], foreign: set[str]) -> list[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT)
    found = []
    # Names bound to foreign objects by imports: assigning to their attributes patches Keras/TF.
    foreign_bound = set(FOREIGN_ROOTS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FOREIGN_ROOTS:
            foreign_bound |= {a.asname or a.name for a in node.names}
        if isinstance(node, ast.ImportFrom) and node.module == "tfkit._internals":
            foreign_bound |= {a.asname or a.name for a in node.names}
    classes: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for sub in ast.walk(node):
                classes.setdefault(id(sub), node.name)
    base_cache: dict[str, set[str]] = {}

    def base_names(node) -> set[str]:
        cls = classes.get(id(node))
        if cls is None:
            return set()
        if cls not in base_cache:
            base_cache[cls] = _foreign_base_names(path, cls)
        return base_cache[cls]

    def where(node) -> str:
        return f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}"

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                a.name for a in node.names
            ]
            if any(n.startswith(FORBIDDEN_MODULES) for n in names):
                found.append(f"{where(node)} (internal module import)")
        elif isinstance(node, ast.Attribute):
            text = ast.unparse(node)
            if text.startswith(("keras.src", "tf.__internal__", "tensorflow.python")):
                found.append(f"{where(node)} (internal module)")
            if text in ("object.__setattr__", "object.__delattr__", "types.MethodType"):
                found.append(f"{where(node)} (instance patching)")
            if isinstance(node.ctx, ast.Store) and _dotted_root(node.value) in foreign_bound:
                found.append(f"{where(node)} (assigns an attribute of a Keras/TF object)")
            if _private(node.attr):
                owner = node.value
                is_self = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                if is_self:
                    if node.attr not in own or node.attr in base_names(node):
                        found.append(f"{where(node)} (private attribute of a Keras base class)")
                elif isinstance(node.ctx, ast.Store):
                    found.append(f"{where(node)} (sets a private attribute of another object)")
                elif node.attr not in own or node.attr in foreign:
                    found.append(f"{where(node)} (private attribute of a foreign object)")
        elif isinstance(node, ast.Name) and node.id == "MethodType":
            found.append(f"{where(node)} (instance patching)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1:
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    if _private(name.value) and (name.value not in own or name.value in foreign):
                        found.append(f"{where(node)} (private attribute by name)")
                if node.func.id in ("setattr", "delattr") and _dotted_root(node.args[0]) in (
                    foreign_bound
                ):
                    found.append(f"{where(node)} (sets an attribute of a Keras/TF object)")
    return found


def test_no_internals_outside_the_seam(foreign_names):
    own = _own_definitions()
    found = [v for path in _modules() for v in _violations(path, own, foreign_names)]
    assert not found, "\n".join(found)


def test_the_scan_catches_each_kind_of_use(tmp_path, foreign_names):
    """The scanner itself: every forbidden pattern in a synthetic module is reported."""
    source = "\n".join([
        "import types",
        "import keras",
        "from keras.src.backend import get_keras_mask",
        "def f(opt, model, state):",
        "    opt._get_current_learning_rate()",
        "    state._learning_rate",
        "    model._initial_epoch = 3",
        "    object.__setattr__(opt, 'apply', f)",
        "    opt.apply = types.MethodType(f, opt)",
        "    keras.optimizers.SGD.apply = f",
        "    getattr(opt, '_learning_rate')",
        "    x = tf.__internal__.distribute",
    ])  # fmt: skip
    path = PACKAGE / "_scan_probe_for_test.py"
    path.write_text(source)
    try:
        found = _violations(path, _own_definitions(), foreign_names)
    finally:
        path.unlink()
    lines = sorted({int(v.split(":")[1]) for v in found})
    assert lines == [3, 5, 6, 7, 8, 9, 10, 11, 12], found


def test_every_seam_function_says_why():
    for name in _internals.__all__:
        obj = getattr(_internals, name)
        if callable(obj) and getattr(obj, "__module__", "").startswith("tfkit._internals"):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


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


def test_shadow_attribute_is_scoped():
    layer = keras.layers.Dense(1)
    with _internals.shadow_attribute(layer, "call", lambda x: x):
        assert "call" in vars(layer)
    assert "call" not in vars(layer)
    with pytest.raises(RuntimeError), _internals.shadow_attribute(layer, "call", None):
        raise RuntimeError
    assert "call" not in vars(layer)
