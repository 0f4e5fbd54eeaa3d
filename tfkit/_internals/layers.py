"""Keras layer and variable internals: call context, autocast, assign hook, traversal."""

from __future__ import annotations

# Why each import is needed (all only importable from ``keras.src``, Keras 3.0
# through 3.15):
# * recompute re-enters the forward pass's Keras context in the backward pass:
#   the active ``CallContext`` (it carries ``training``) lives in Keras' global
#   state, the mixed-precision autocast scope is a backend object, and a
#   symbolic (shape-only) call must not be recomputed;
# * recompute records the value every Keras variable had before its first
#   assignment in the forward pass (BatchNorm statistics, seed generators) by
#   routing ``Variable.assign`` through a recorder while it records; ``assign``
#   is defined on the backend-independent base class, which ``keras.Variable``
#   (the TF backend's subclass) does not override.
from keras.src.backend import AutocastScope, get_autocast_scope
from keras.src.backend.common import global_state
from keras.src.backend.common.symbolic_scope import in_symbolic_scope
from keras.src.backend.common.variables import Variable as KerasVariableBase
from keras.src.layers.layer import CallContext

__all__ = [
    "AutocastScope",
    "KerasVariableBase",
    "adopt_parent_path",
    "autocast_scope",
    "batch_normalization_moments",
    "batch_normalization_reduction_axes",
    "build_shapes",
    "current_call_context",
    "flatten_layers",
    "in_symbolic_scope",
    "keras_history",
    "new_call_context",
    "set_current_call_context",
    "set_variable_assign",
]


def autocast_scope():
    """The active mixed-precision autocast scope, or ``None``."""
    return get_autocast_scope()


def current_call_context():
    """The Keras ``CallContext`` of the outermost layer call in progress, or ``None``."""
    return global_state.get_global_attribute("current_call_ctx")


def set_current_call_context(context) -> None:
    """Make ``context`` the active Keras ``CallContext`` (``None`` clears it); recompute's replay."""
    global_state.set_global_attribute("current_call_ctx", context)


def new_call_context():
    """A fresh top-level ``CallContext`` (a layer called outside one clears its ``losses``)."""
    return CallContext(entry_layer=None)


def set_variable_assign(function) -> None:
    """Make ``function`` the ``assign`` of every Keras variable (the class attribute).

    Recompute's ``AssignRecorder`` installs its recorder while a recompute
    forward pass records and puts Keras' own back when the last recorder
    closes (``tfkit/recompute/_state.py``); ``tests/test_internals.py`` checks
    it is Keras' own outside those windows. There is no public hook on
    variable assignment in Keras 3.0 through 3.15.
    """
    KerasVariableBase.assign = function


def flatten_layers(layer, include_self: bool = True, recursive: bool = True) -> list:
    """``layer``'s sub-layers in Keras' tracking order (``Layer._flatten_layers``, Keras 3.0-3.15).

    Unlike the public ``layers`` property (models only) it works on any layer
    and lets the caller walk one level at a time.
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def batch_normalization_moments(layer, inputs, mask):
    """Keras BatchNormalization's own (masked) batch moments (``_moments``, Keras 3.0-3.15).

    tfkit's accumulating BatchNormalization must normalise with exactly the
    statistics Keras computes, synchronized variant included.
    """
    return layer._moments(inputs, mask)


def batch_normalization_reduction_axes(layer) -> list:
    """The axes Keras BatchNormalization reduces over (``_reduction_axes``, set in ``build``)."""
    return layer._reduction_axes


def build_shapes(model) -> dict:
    """The input shapes a subclassed model was built with (``Layer._build_shapes_dict``), or ``{}``."""
    return getattr(model, "_build_shapes_dict", None) or {}


def keras_history(tensor):
    """The ``(operation, node_index, tensor_index)`` that made a symbolic tensor, or ``None``."""
    return getattr(tensor, "_keras_history", None)


def adopt_parent_path(inner, wrapper) -> None:
    """Give ``inner`` the variable-path parent of ``wrapper``, before ``inner`` first opens its scope.

    Keras fixes a layer's path prefix (``Layer._parent_path``, Keras 3.4
    through 3.15) the first time the layer opens its name scope: a layer
    first called inside a wrapper's ``call`` gets the wrapper's name in every
    variable path. ``tfkit.Recompute`` calls this so that wrapping a block
    leaves its variables' paths (and the patterns that match them) unchanged.
    A layer that already has a path (built or called before) is left alone.
    """
    if getattr(inner, "_parent_path", None) is None:
        inner._parent_path = getattr(wrapper, "_parent_path", None) or ""
