"""The recompute-in-backprop primitive behind :mod:`tfkit.recompute`.

One ``tf.custom_gradient`` per call. The forward pass runs with the tape
stopped, so none of its intermediate tensors is kept for the backward pass; the
gradient function runs the block again under a local tape and differentiates
it. What it does differently from ``tf.recompute_grad``, and why, is written in
docs/recompute.md ("Where the time goes").
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence

import tensorflow as tf

from tfkit import _internals
from tfkit.recompute import _state as state

__all__ = ["recompute_call"]

# Module-level so that benchmarks/bench_recompute.py can wrap it for an ablation.
_custom_gradient = tf.custom_gradient

# How many recomputed blocks may be differentiated at once (see _BackwardGate).
GATE_DEPTH = 2


class _BackwardGate(threading.local):
    """Bound how far the backward pass runs ahead of the weight gradients.

    TensorFlow's executor starts an op as soon as its inputs exist. A block's
    input gradient is ready before its weight gradients are; without a bound the
    executor races down the chain of input gradients, recomputing block after
    block while the weight-gradient matmuls of the earlier ones still hold their
    recomputed activations -- the peak then depends on thread timing. The
    gradient functions are traced in backward order, so each one can gate its
    recomputation on the gradients of the block differentiated ``GATE_DEPTH``
    calls before it: at most ``GATE_DEPTH`` blocks' activations are alive, and
    the weight gradients of one block still overlap the recomputation of the
    next. (tf.recompute_grad bounds it to one block with an IdentityN on all
    gradients, which also blocks that overlap; docs/recompute.md.)
    """

    def __init__(self) -> None:
        self.graph = None
        self.done: list = []

    def wait_for(self, graph):
        if graph is not self.graph:
            self.graph, self.done = graph, []
        return self.done[-GATE_DEPTH:][:1] if GATE_DEPTH > 0 else []

    def finished(self, graph, grads) -> None:
        if graph is self.graph:
            self.done.append(tf.group([g for g in grads if g is not None]))
            del self.done[:-GATE_DEPTH]


_gate = _BackwardGate()


def _is_differentiable(x) -> bool:
    return tf.is_tensor(x) and (x.dtype.is_floating or x.dtype.is_complex)


def _tape_is_recording() -> bool:
    """True if some gradient tape could record this call (checked at trace time)."""
    return _internals.tape_could_record()


def _zero_after(dys: Sequence[tf.Tensor]) -> tf.Tensor:
    """A scalar 0.0 that data-depends on the first incoming gradient.

    Added to the recomputation inputs it makes the recomputed forward pass start
    only once the gradient reaches the block, and it stops common-subexpression
    elimination (Grappler, XLA) from merging the recomputation with the
    original forward pass, which would bring every activation back. XLA ignores
    control dependencies, hence a data dependency. Reading one element costs
    nothing; ``where`` keeps a NaN gradient NaN.
    """
    first = tf.reshape(dys[0], [-1])[:1]
    probe = tf.reduce_max(tf.cast(first, tf.float32))
    return tf.where(tf.math.is_nan(probe), tf.constant(float("nan")), tf.constant(0.0))


def recompute_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    *,
    owner: str,
    layers: Callable[[], list] | None = None,
    warned: set | None = None,
):
    """Call ``fn(*args, **kwargs)``, recomputing its activations in backprop.

    Floating-point tensors anywhere in ``args`` and ``kwargs`` are the
    differentiable inputs of the block; every other leaf (Python values, integer
    or boolean masks) is bound into a closure, so ``tf.custom_gradient`` only
    ever sees positional tensors (``keras.remat`` fails in graph mode because
    it passes keyword arguments through).

    Args:
        fn: the block.
        args, kwargs: its arguments.
        owner: name used in errors and warnings.
        layers: returns the Keras layers inside ``fn`` (to check there is
            something to differentiate and to name the culprit of a
            non-deterministic op); ``None`` if unknown.
        warned: a set shared across calls so each warning is given once.
    """
    if _internals.in_symbolic_scope() or not _tape_is_recording():
        # Shape inference, building, inference: nothing to differentiate.
        return fn(*args, **kwargs)

    structure = (args, kwargs)
    leaves = tf.nest.flatten(structure)
    positions = [i for i, leaf in enumerate(leaves) if _is_differentiable(leaf)]
    inner_layers = layers() if layers is not None else []
    if (
        not positions
        and layers is not None
        and not any(v.trainable for layer in inner_layers for v in layer.trainable_variables)
    ):
        raise ValueError(
            f"{owner}: nothing to recompute. The block received no floating-point tensor "
            "input and has no trainable variables, so no gradient flows through it; "
            "call it without recomputation."
        )
    tensors = [leaves[i] for i in positions]
    if not tensors:
        # tf.custom_gradient needs one tensor input; the block's only
        # differentiable sources are its variables (e.g. an Embedding on ids).
        tensors = [tf.zeros([])]

    def call_with(values):
        filled = list(leaves)
        # strict=False: with no differentiable input, `values` is the dummy scalar.
        for i, t in zip(positions, values, strict=False):
            filled[i] = t
        a, k = tf.nest.pack_sequence_as(structure, filled)
        return fn(*a, **k)

    call_context = _internals.current_call_context() or _internals.new_call_context()
    autocast = _internals.autocast_scope()

    @_custom_gradient
    def block(*values):
        with state.AssignRecorder() as recorder, _internals.stop_recording():
            outputs = call_with(values)
        flat_outputs = tf.nest.flatten(outputs)

        def grad_fn(*dys, variables=None):
            variables = list(variables or ())
            dys = [
                tf.zeros_like(o) if d is None else d for d, o in zip(dys, flat_outputs, strict=True)
            ]
            eager = tf.executing_eagerly()
            graph = None if eager else tf.compat.v1.get_default_graph()
            with tf.control_dependencies(None if eager else _gate.wait_for(graph)):
                zero = _zero_after(dys)
            inputs = [v + tf.cast(zero, v.dtype) for v in values]
            first_op = 0 if eager else len(graph.get_operations())
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(inputs)
                tape.watch(variables)
                with state.replay_scope(
                    recorder.mapping,
                    call_context,
                    autocast.dtype if autocast is not None else None,
                    autocast is not None,
                ):
                    recomputed = tf.nest.flatten(call_with(inputs))
            reads = []
            if not eager:
                new_ops = graph.get_operations()[first_op:]
                _warn_nondeterministic(new_ops, owner, inner_layers, warned)
                reads = [op for op in new_ops if op.type == "ReadVariableOp"]
            grads = tape.gradient(
                recomputed,
                inputs + variables,
                output_gradients=dys,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            input_grads, variable_grads = grads[: len(inputs)], grads[len(inputs) :]
            if not eager:
                # The recomputed pass reads the weights during backprop. A weight
                # whose own gradient does not need that read (W2 in x@W1@W2: dW2
                # uses x@W1, the read of W2 only feeds the input gradient) could
                # otherwise be updated by the optimizer before the read runs:
                # automatic control dependencies do not order a read before a
                # later write. Release the variable gradients only after every
                # read of the recomputed pass. (XLA snapshots variables at entry.)
                with tf.control_dependencies(reads):
                    variable_grads = [tf.identity(g) for g in variable_grads]
                _gate.finished(graph, grads)
            return input_grads, variable_grads

        return outputs, grad_fn

    return block(*tensors)


def _warn_nondeterministic(ops, owner, layers: list, warned):
    culprits = state.find_nondeterministic_ops(ops)
    if not culprits:
        return
    seen = warned if warned is not None else set()
    for op in culprits:
        name = state.layer_owning_op(op, layers) or owner
        if name in seen:
            continue
        seen.add(name)
        warnings.warn(
            f"{owner}: layer '{name}' runs the stateful op '{op.type}' ({op.name}), which "
            "draws different values (or updates state again) when the block is "
            "recomputed in backprop; its gradients will not match the forward pass. "
            "Use keras.random ops with a keras.random.SeedGenerator (as Keras layers "
            "do) or keep this layer outside the recomputed block.",
            UserWarning,
            stacklevel=2,
        )


def _replay_saved(layer, inputs, saved, kwargs, replay):
    """``saved`` (the forward pass's output of ``layer``) with ``layer``'s gradient.

    The recomputed pass does not run ``layer`` again: it takes the output kept
    from the forward pass. Gradients still flow to the layer's input and
    weights: the backward function differentiates ``layer`` at ``inputs``
    under its own tape. For a layer whose gradient does not need its output
    (a matmul or convolution: ``dx = dy W^T``, ``dW = x^T dy``) the forward op
    of that tape has no consumer and the runtime prunes it, so the layer's
    forward compute is not repeated -- the point of saving it.
    """
    # The backend variables (tf.Variable): what a tape can watch.
    weights = [w.value for w in layer.trainable_variables]

    @tf.custom_gradient
    def substitute(x, *weight_values):
        def grad(dy):
            with replay(), tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                tape.watch(weights)
                y = layer(x, **kwargs)
            grads = tape.gradient(
                y, [x] + weights, output_gradients=dy,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )  # fmt: skip
            return grads

        return tf.identity(saved), grad

    # The weights enter as tensors read under the recomputation's tape, so
    # their gradients reach the variables through those reads.
    return substitute(inputs, *weights)


def recompute_selective(
    layers: Sequence,
    save: Sequence[bool],
    inputs,
    layer_kwargs: Callable,
    *,
    owner: str,
    warned: set | None = None,
):
    """Run ``layers`` in sequence on ``inputs``; keep the outputs of the ``save`` ones only.

    The forward pass keeps the block's input and the outputs of the layers
    whose ``save`` flag is set; in backprop the other layers run again from
    those (a pointwise layer after a saved matmul recomputes from the matmul's
    output), and each saved layer contributes its gradient without running
    its forward pass again (:func:`_replay_saved`). With no layer saved this
    is :func:`recompute_call` on the whole sequence; with every layer saved it
    keeps what plain backprop keeps, minus the intermediate tensors inside
    each layer.

    Args:
        layers: the layers, called one after the other.
        save: one flag per layer.
        inputs: the block's input tensor.
        layer_kwargs: ``layer -> dict`` of keyword arguments for its call
            (``training``).
        owner, warned: as for :func:`recompute_call`.
    """
    if _internals.in_symbolic_scope() or not _tape_is_recording():
        x = inputs
        for layer in layers:
            x = layer(x, **layer_kwargs(layer))
        return x
    call_context = _internals.current_call_context() or _internals.new_call_context()
    autocast = _internals.autocast_scope()
    inner_layers = [sub for layer in layers for sub in _internals.flatten_layers(layer)]

    @_custom_gradient
    def block(x):
        kept = []
        with state.AssignRecorder() as recorder, _internals.stop_recording():
            h = x
            for layer, keep in zip(layers, save, strict=True):
                h = layer(h, **layer_kwargs(layer))
                kept.append(h if keep else None)
        output = h

        def replay():
            return state.replay_scope(
                recorder.mapping,
                call_context,
                autocast.dtype if autocast is not None else None,
                autocast is not None,
            )

        def grad_fn(dy, variables=None):
            variables = list(variables or ())
            eager = tf.executing_eagerly()
            graph = None if eager else tf.compat.v1.get_default_graph()
            with tf.control_dependencies(None if eager else _gate.wait_for(graph)):
                zero = _zero_after([dy])
            start = x + tf.cast(zero, x.dtype)
            first_op = 0 if eager else len(graph.get_operations())
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(start)
                tape.watch(variables)
                with replay():
                    h = start
                    for layer, saved in zip(layers, kept, strict=True):
                        kwargs = layer_kwargs(layer)
                        if saved is None:
                            h = layer(h, **kwargs)
                        else:
                            h = _replay_saved(layer, h, saved, kwargs, replay)
            reads = []
            if not eager:
                new_ops = graph.get_operations()[first_op:]
                _warn_nondeterministic(new_ops, owner, inner_layers, warned)
                reads = [op for op in new_ops if op.type == "ReadVariableOp"]
            grads = tape.gradient(
                h, [start] + variables, output_gradients=dy,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )  # fmt: skip
            input_grad, variable_grads = grads[0], grads[1:]
            if not eager:
                # As in recompute_call: weight gradients only after every read.
                with tf.control_dependencies(reads):
                    variable_grads = [tf.identity(g) for g in variable_grads]
                _gate.finished(graph, grads)
            return input_grad, variable_grads

        return output, grad_fn

    return block(inputs)
