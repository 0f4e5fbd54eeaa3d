"""State handling for recomputation: replay random seeds, never apply updates twice.

A recomputed forward pass must see exactly the state the original forward pass
saw, and must leave no trace. Keras 3 keeps all layer state in Keras
``Variable`` objects updated through ``Variable.assign`` (``assign_add`` and
``assign_sub`` call it): BatchNormalization moving statistics, and the
``SeedGenerator`` state every Keras random op (Dropout, GaussianNoise, ...)
draws its seed from and advances by one per draw.

So:

* during the original forward pass, :class:`AssignRecorder` notes the value
  each Keras variable had *before* its first assignment;
* the recomputed pass runs inside ``keras.StatelessScope(state_mapping=...)``
  mapping those variables to the noted values. Reads see the pre-forward state
  (the same seeds, hence the same dropout masks), and every assignment is
  captured by the scope and dropped (moving statistics are updated once).

Anything Keras cannot intercept this way (TensorFlow stateful random ops such as
``tf.random.uniform``, ``tf.random.Generator``, raw ``tf.Variable.assign``)
still runs in the recomputed pass; :func:`find_nondeterministic_ops` lists such
ops so the caller can warn, naming the layer.
"""

from __future__ import annotations

import contextlib
import re
import threading

import keras
import tensorflow as tf

from tfkit import _internals
from tfkit._internals import KerasVariableBase as _KerasVariable

__all__ = [
    "AssignRecorder",
    "find_nondeterministic_ops",
    "layer_owning_op",
    "replay_scope",
]

_local = threading.local()
_patch_lock = threading.Lock()
_original_assign = None
_active_recorders = 0  # recorders open in any thread


def _recording_assign(self, value):
    recorders = getattr(_local, "recorders", None)
    if recorders:
        recorders[-1].note(self)
    return _original_assign(self, value)


def _acquire_patch() -> None:
    """Route ``keras.Variable.assign`` through the recorder while any recording is open.

    Scoped, not process-wide: the class attribute is replaced when the first
    recorder opens (in any thread) and put back when the last one closes.
    The count is global rather than per thread because replica threads of a
    ``tf.distribute`` strategy trace concurrently: one thread removing the
    patch while another still records would blind the other. Recording only
    happens while a recompute forward pass is traced or run, so outside those
    windows ``Variable.assign`` is Keras' own.
    """
    global _original_assign, _active_recorders
    with _patch_lock:
        if _active_recorders == 0:
            if _original_assign is None:
                _original_assign = _KerasVariable.assign
            _internals.set_variable_assign(_recording_assign)
        _active_recorders += 1


def _release_patch() -> None:
    global _active_recorders
    with _patch_lock:
        _active_recorders -= 1
        if _active_recorders == 0:
            # _original_assign stays set: a thread already inside _recording_assign still needs it.
            _internals.set_variable_assign(_original_assign)


def _raw_value(variable):
    """A copy of the variable's current value, in its own dtype (no autocast)."""
    with _internals.AutocastScope(None):
        value = tf.convert_to_tensor(variable.value)
    # A real copy, as Keras' SeedGenerator.next does: a read can alias the
    # variable's buffer, which the assignment that follows may update in place.
    if value.dtype == tf.bool:
        return tf.logical_and(value, True)
    return value * tf.ones([], value.dtype)


class AssignRecorder:
    """Context manager noting the pre-assignment value of every Keras variable assigned.

    ``mapping`` is a list of ``(variable, value_before_first_assign)`` suitable
    for ``keras.StatelessScope(state_mapping=...)``.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self.mapping: list[tuple[_KerasVariable, tf.Tensor]] = []

    def note(self, variable) -> None:
        if id(variable) in self._seen:
            return
        self._seen.add(id(variable))
        # Read before the assignment runs: in graph mode the automatic control
        # dependencies of tf.function order this read before the assign op.
        self.mapping.append((variable, _raw_value(variable)))

    def __enter__(self) -> AssignRecorder:
        if not hasattr(_local, "recorders"):
            _local.recorders = []
        _acquire_patch()
        _local.recorders.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _local.recorders.pop()
        _release_patch()


class _NoRecording:
    """Suspend any enclosing recorder (the recomputed pass must not be recorded)."""

    def __enter__(self):
        self._saved = getattr(_local, "recorders", [])
        _local.recorders = []

    def __exit__(self, *exc):
        _local.recorders = self._saved


@contextlib.contextmanager
def replay_scope(mapping, call_context, autocast_dtype, has_autocast):
    """Re-enter the forward pass's Keras context for the recomputed pass.

    Args:
        mapping: ``AssignRecorder.mapping`` of the forward pass.
        call_context: the Keras ``CallContext`` active during the forward pass
            (carries ``training``); a layer called outside one would clear its
            ``losses`` on entry, so one is always set.
        autocast_dtype: dtype of the mixed-precision autocast scope of the
            forward pass (``None`` for a scope that disables autocasting).
        has_autocast: whether an autocast scope was active at all.
    """
    saved_ctx = _internals.current_call_context()
    _internals.set_current_call_context(call_context)
    try:
        with _NoRecording(), keras.StatelessScope(state_mapping=mapping):
            if has_autocast:
                with _internals.AutocastScope(autocast_dtype):
                    yield
            else:
                yield
    finally:
        _internals.set_current_call_context(saved_ctx)


# TensorFlow ops whose result or effect differs when run a second time.
_NONDETERMINISTIC = {
    "RandomUniform",
    "RandomUniformInt",
    "RandomStandardNormal",
    "TruncatedNormal",
    "ParameterizedTruncatedNormal",
    "RandomGamma",
    "RandomPoisson",
    "RandomPoissonV2",
    "RandomShuffle",
    "Multinomial",
    "RandomCrop",
    "RngReadAndSkip",
    "RngSkip",
    "AssignVariableOp",
    "AssignAddVariableOp",
    "AssignSubVariableOp",
}
_NONDETERMINISTIC_PREFIXES = ("Stateful", "ResourceScatter", "ResourceApply", "Assign")


def find_nondeterministic_ops(ops) -> list:
    """Return the ops among ``ops`` whose recomputation cannot reproduce the forward pass."""
    return [
        op
        for op in ops
        if op.type in _NONDETERMINISTIC or op.type.startswith(_NONDETERMINISTIC_PREFIXES)
    ]


def layer_owning_op(op, layers) -> str | None:
    """Name of the innermost layer among ``layers`` whose name scope contains ``op``."""
    names = {layer.name for layer in layers}
    for part in reversed(op.name.split("/")[:-1]):
        if part in names:
            return part
        # tf.name_scope makes repeated scopes unique as "name_1", "name_2", ...
        base = re.sub(r"_\d+$", "", part)
        if base in names:
            return base
    return None
