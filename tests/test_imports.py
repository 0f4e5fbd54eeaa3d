"""``import tfkit`` is cheap, and every tfkit object is registered before a model loads."""

import pathlib
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import tfkit

SAVE = """
import keras, tfkit
schedule = tfkit.schedules.OneCycle(0.1, total_steps=10)
inputs = keras.Input((4,))
x = tfkit.Recompute(keras.layers.Dense(3))(inputs)
model = keras.Model(inputs, keras.layers.Dense(1)(x))
optimizer = tfkit.LossScaleOptimizer(
    tfkit.GradientAccumulator(keras.optimizers.SGD(schedule), accumulation_steps=2),
    min_scale=1.0,
)
model.compile(optimizer, "mse")
model.fit(keras.ops.ones((4, 4)), keras.ops.ones((4, 1)), epochs=1, verbose=0)
model.save(PATH)
"""

CHECK = """
m = keras.saving.load_model(PATH, safe_mode=True)
chain = [type(m.optimizer).__name__, type(m.optimizer.inner_optimizer).__name__]
print(chain, type(m.layers[1]).__name__)
"""


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_import_tfkit_imports_no_tensorflow(root):
    out = _python(
        "import sys, tfkit; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tensorflow', 'keras', 'numpy')))",
        root,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("saved") / "m.keras")
    root = pathlib.Path(__file__).resolve().parents[1]
    saved = _python(f"PATH = {path!r}\n" + SAVE, root)
    assert saved.returncode == 0, saved.stderr[-3000:]
    return path


@pytest.mark.parametrize(
    "imports",
    [
        "import tfkit; import keras",  # the hook registers once Keras has loaded
        "import keras; import tfkit",  # Keras already there: registered at once
        "import tensorflow; import tfkit; import keras",
        "import tfkit.schedules; import keras",  # a submodule import registers the rest
    ],
)
def test_safe_mode_load_in_any_import_order(imports, root, saved_model):
    out = _python(f"PATH = {saved_model!r}\n{imports}\n" + CHECK, root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "['LossScaleOptimizer', 'GradientAccumulator'] Recompute"


def _all_modules():
    package = pathlib.Path(tfkit.__file__).parent
    return [m.name for m in pkgutil.walk_packages([str(package)], prefix="tfkit.")]


def test_every_module_that_registers_is_in_the_list(root):
    """A new module with @register_keras_serializable must be reachable from the list."""
    registering = []
    for name in _all_modules():
        path = pathlib.Path(root, *name.split(".")).with_suffix(".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        if "register_keras_serializable" in path.read_text():
            registering.append(name)
    assert registering  # the scan itself works
    out = _python(
        "import sys, tfkit; tfkit.register_serializables(); "
        f"print([m for m in {registering!r} if m not in sys.modules])",
        root,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", "add the module to tfkit.SERIALIZABLE_MODULES"


def test_lazy_attributes():
    assert tfkit.GradientAccumulator.__module__ == "tfkit.optimizers.gradient_accumulator"
    assert tfkit.schedules.OneCycle.__name__ == "OneCycle"
    assert {"GradientAccumulator", "schedules", "__version__"} <= set(dir(tfkit))
    assert set(tfkit.__all__) <= set(dir(tfkit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tfkit.nope  # noqa: B018
