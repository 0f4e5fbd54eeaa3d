"""The recompute layer, its function form and the sequential helper (see :mod:`tfkit.recompute`)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import keras

from tfkit import _internals, _validation
from tfkit.recompute._core import recompute_call, recompute_selective

__all__ = ["Recompute", "recompute", "recompute_sequential"]


def _call_params(layer: keras.layers.Layer) -> set[str]:
    return set(inspect.signature(layer.call).parameters)


@keras.saving.register_keras_serializable(package="tfkit")
class Recompute(keras.layers.Layer):
    """Wrap a layer or block so that its activations are recomputed in backprop.

    The wrapped block's output and gradients are those of the block itself;
    only the block's inputs are kept for the backward pass, where the block's
    forward pass runs once more. ``training`` and ``mask`` are forwarded to the
    block when its ``call`` accepts them; any other keyword argument is passed
    through (floating-point tensors among them, such as the ``key`` of
    ``MultiHeadAttention``, receive gradients).

    Outside a gradient tape (inference, ``predict``) the block simply runs.

    **Selective recomputation** (``save=``): for a ``keras.Sequential`` block,
    keep the outputs of the named layers and recompute only the others, like
    PyTorch's selective-checkpoint policies (save matmuls, recompute
    pointwise ops) or the ``list_of_layers`` mode of ``keras.RematScope``.
    Memory kept for backprop: the block's input plus the saved outputs.
    Backward: the unsaved layers run again from the nearest saved output
    before them; a saved layer is not run again (its gradient is taken at its
    recomputed input, so a matmul or convolution costs only its two gradient
    products). Saving ``Dense``/``Conv*`` outputs and recomputing activations,
    normalization and dropout trades little compute for most of the memory.

    Args:
        layer: the ``keras.layers.Layer`` (or ``keras.Model``) to recompute.
            A block with no trainable variables is accepted (recomputing a
            wide activation still saves memory); calling a block that has
            neither trainable variables nor a floating-point input raises
            ``ValueError``, since no gradient could flow through it.
        save: ``None`` (recompute everything, the default) or a list of
            layer class names (``"Dense"``, ``"Conv2D"``) and layer names
            whose outputs are kept; ``layer`` must then be a
            ``keras.Sequential``, and every entry must match one of its
            layers (its direct layers: nest a ``Recompute`` for inner ones).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...). The dtype
            policy defaults to the wrapped layer's.

    Example:
        >>> import keras
        >>> from tfkit.recompute import Recompute
        >>> block = keras.Sequential([keras.layers.Dense(64, activation="relu"),
        ...                           keras.layers.Dense(16)])
        >>> model = keras.Sequential([keras.Input((16,)), Recompute(block),
        ...                           keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> _ = model.fit(keras.ops.ones((8, 16)), keras.ops.ones((8, 1)), verbose=0)
        >>> Recompute(block, save=["Dense"]).save  # keep the matmuls, recompute relu
        ('Dense',)

    Reference: Chen et al., "Training Deep Nets with Sublinear Memory Cost"
    (2016); ``torch.utils.checkpoint.checkpoint``.
    """

    def __init__(
        self, layer: keras.layers.Layer, save: Sequence[str] | None = None, **kwargs
    ) -> None:
        if not isinstance(layer, keras.layers.Layer):
            hint = (
                " For a plain function use tfkit.recompute.recompute(fn)."
                if callable(layer)
                else ""
            )
            raise TypeError(
                "Recompute: argument `layer` must be a keras.layers.Layer (or keras.Model); "
                f"received {layer!r} of type {type(layer).__name__}.{hint}"
            )
        if isinstance(layer, keras.Sequential) and not layer.layers:
            raise ValueError(
                f"Recompute: argument `layer` is an empty Sequential ({layer.name!r}); "
                "there is nothing to recompute."
            )
        save = _check_save(layer, save)
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(**kwargs)
        self.layer = layer
        self.save = save
        self.supports_masking = layer.supports_masking
        params = _call_params(layer)
        self._forward_training = "training" in params
        self._forward_mask = "mask" in params
        self._warned: set[str] = set()

    def build(self, input_shape=None) -> None:
        # The wrapped layer builds itself on its first call (below), whatever its
        # call signature (MultiHeadAttention takes query, value, key shapes).
        self.built = True

    def call(self, inputs, *args, training=None, mask=None, **kwargs):
        args = (inputs, *args)
        if self._forward_training:
            kwargs["training"] = training
        if self._forward_mask and mask is not None:
            kwargs["mask"] = mask
        if not self.layer.built:
            # First call: let the layer create its variables outside the
            # custom gradient. Usually a symbolic call (functional model, fit's
            # symbolic build), where nothing is recomputed anyway. Its variable
            # paths are those it would have unwrapped (see adopt_parent_path).
            _internals.adopt_parent_path(self.layer, self)
            return self.layer(*args, **kwargs)
        if self.save is not None:
            return self._call_selective(args, training, mask, kwargs)
        return recompute_call(
            self.layer,
            args,
            kwargs,
            owner=f"Recompute({self.name!r})",
            layers=lambda: _internals.flatten_layers(self.layer),
            warned=self._warned,
        )

    def _call_selective(self, args, training, mask, kwargs):
        if len(args) != 1 or mask is not None or set(kwargs) - {"training"}:
            raise ValueError(
                f"Recompute({self.name!r}) with `save` runs a Sequential block on one "
                "tensor without a mask or extra arguments; received "
                f"{len(args)} positional argument(s), mask={mask is not None}, "
                f"keywords={sorted(set(kwargs) - {'training'})}."
            )
        layers = self.layer.layers
        names = set(self.save)
        flags = [type(layer).__name__ in names or layer.name in names for layer in layers]

        def layer_kwargs(layer):
            return {"training": training} if "training" in _call_params(layer) else {}

        return recompute_selective(
            layers, flags, args[0], layer_kwargs, owner=f"Recompute({self.name!r})",
            warned=self._warned,
        )  # fmt: skip

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self) -> dict:
        config = super().get_config()
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        if self.save is not None:
            config["save"] = list(self.save)
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> Recompute:
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        return cls(layer, **config)


def _check_save(layer, save) -> tuple[str, ...] | None:
    """``save`` as a tuple of names, after checking it names layers of a Sequential ``layer``."""
    if save is None:
        return None
    if isinstance(save, str) or not isinstance(save, (list, tuple)):
        raise TypeError(
            "Recompute: argument `save` must be None or a list of layer class names or "
            f"layer names; received save={save!r}."
        )
    if not isinstance(layer, keras.Sequential):
        raise ValueError(
            "Recompute: argument `save` needs a keras.Sequential block (its layers run "
            f"one after the other); received save={list(save)!r} for a "
            f"{type(layer).__name__} ({layer.name!r})."
        )
    known = {type(sub).__name__ for sub in layer.layers} | {sub.name for sub in layer.layers}
    for entry in save:
        if not isinstance(entry, str):
            raise TypeError(
                f"Recompute: every entry of `save` must be a string; received save={save!r}."
            )
        if entry not in known:
            raise ValueError(
                f"Recompute: `save` entry {entry!r} matches no layer of {layer.name!r} "
                f"(its layers' class names and names: {sorted(known)}); received "
                f"save={list(save)!r}."
            )
    return tuple(save)


def recompute_sequential(
    layers: Sequence[keras.layers.Layer],
    segments: int | None = None,
    name: str | None = None,
) -> keras.Sequential:
    """Split a stack of layers into segments and recompute each one in backprop.

    Like PyTorch's ``checkpoint_sequential``: the ``n`` layers are cut into
    ``segments`` consecutive chunks of ``n // segments`` layers (the last chunk
    takes the remainder); every chunk except the last is wrapped in
    :class:`Recompute`. The last chunk runs normally, because its activations
    are needed as soon as the forward pass ends, so recomputing it would cost
    time and save nothing.

    Memory: ``segments`` chunk inputs kept, plus one chunk's activations while
    it is being differentiated; ``segments = ceil(sqrt(n))`` (the default)
    makes both O(sqrt(n)). ``segments = n`` recomputes every layer on its own,
    which is best when a block's inputs are much smaller than its internal
    activations (residual MLP and transformer blocks).

    Args:
        layers: the layers (or blocks) to run in order. At least one.
        segments: number of chunks, ``1 <= segments <= len(layers)``;
            default ``ceil(sqrt(len(layers)))``.
        name: name of the returned model.

    Returns:
        A ``keras.Sequential`` of ``Recompute(keras.Sequential(chunk))`` blocks
        followed by the last chunk's layers; use it as a layer or a model.
        It serializes with ``keras.saving`` like any Sequential.

    Example:
        >>> import keras
        >>> from tfkit.recompute import recompute_sequential
        >>> stack = recompute_sequential([keras.layers.Dense(8) for _ in range(9)])
        >>> [type(layer).__name__ for layer in stack.layers]
        ['Recompute', 'Recompute', 'Dense', 'Dense', 'Dense']
    """
    layers = list(layers) if isinstance(layers, (list, tuple)) else layers
    if not isinstance(layers, list) or not layers:
        _validation.fail("recompute_sequential", "layers", layers, "a non-empty list of Keras layers")
    for i, layer in enumerate(layers):
        if not isinstance(layer, keras.layers.Layer):
            _validation.fail(
                "recompute_sequential", f"layers[{i}]", layer, "a keras.layers.Layer", TypeError
            )
    n = len(layers)
    if segments is None:
        segments = math.ceil(math.sqrt(n))
    segments = _validation.check_int("recompute_sequential", "segments", segments, low=1, high=n)
    size = n // segments
    blocks: list[keras.layers.Layer] = []
    for s in range(segments - 1):
        chunk = layers[s * size : (s + 1) * size]
        block = chunk[0] if len(chunk) == 1 else keras.Sequential(chunk)
        blocks.append(Recompute(block))
    blocks.extend(layers[(segments - 1) * size :])
    return keras.Sequential(blocks, name=name)


def recompute(fn: Callable) -> Callable:
    """Function form: ``recompute(fn)(*tensors, **kwargs)`` recomputes ``fn`` in backprop.

    Positional arguments are tensors (or nested structures of tensors);
    floating-point tensors among the positional *and* keyword arguments are
    differentiated, every other keyword argument (``training=True``, integer
    masks, Python values) is bound in a closure, so it works in graph mode
    where ``tf.custom_gradient`` rejects keyword arguments. Variables that
    ``fn`` reads (Keras layers it calls, ``tf.Variable`` it captures) receive
    gradients; Keras state it updates (BatchNorm statistics, dropout seeds) is
    replayed exactly, as for :class:`Recompute`.

    Args:
        fn: any callable returning a tensor or a nested structure of tensors.

    Returns:
        A callable with the same signature as ``fn``.

    Example:
        >>> import keras, tensorflow as tf
        >>> from tfkit.recompute import recompute
        >>> dense, drop = keras.layers.Dense(4), keras.layers.Dropout(0.5, seed=1)
        >>> block = recompute(lambda x, training: drop(dense(x), training=training))
        >>> x = tf.ones((2, 3))
        >>> with tf.GradientTape() as tape:
        ...     loss = tf.reduce_sum(block(x, training=True))
        >>> [g.shape for g in tape.gradient(loss, dense.trainable_variables)]
        [TensorShape([3, 4]), TensorShape([4])]
    """
    if not callable(fn):
        raise TypeError(
            f"recompute: argument `fn` must be callable; received {fn!r} of type "
            f"{type(fn).__name__}."
        )
    name = getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)
    layers = None
    if isinstance(fn, keras.layers.Layer):
        layers = lambda: _internals.flatten_layers(fn)  # noqa: E731
    warned: set[str] = set()

    def wrapped(*args, **kwargs):
        return recompute_call(
            fn, args, kwargs, owner=f"recompute({name!r})", layers=layers, warned=warned
        )

    wrapped.__wrapped__ = fn
    wrapped.__name__ = f"recompute_{name}"
    return wrapped
