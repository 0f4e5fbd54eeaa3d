"""Averages of a model's weights (EMA or SWA), kept on device and updated once per real update."""

from __future__ import annotations

import contextlib
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from tfkit import _internals, _validation
from tfkit.callbacks._state import CallbackState
from tfkit.optimizers.hyperparameters import resolve_optimizer
from tfkit.optimizers.tree import leaves, walk

__all__ = ["WeightAveraging"]

KINDS = ("ema", "swa")
BATCH_NORM = ("average", "recompute")
FINAL_WEIGHTS = ("averaged", "current")
_OWNER = "WeightAveraging"
# model -> the averaging its installed train step updates in-graph (tfkit.training.install).
_installed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register_step(model, averaging) -> None:
    """Record that ``model``'s train step updates ``averaging`` itself (None: it does not)."""
    if averaging is None:
        _installed.pop(model, None)
    else:
        _installed[model] = averaging


def installed_averaging(model):
    """The averaging ``model``'s train step updates in-graph, or None."""
    try:
        return _installed.get(model)
    except TypeError:
        return None


def _plain(variable):
    """The tf.Variable behind a Keras variable (what graphs assign to)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _strategy_scope(model):
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy.scope()


def _is_float(variable) -> bool:
    return keras.backend.is_float_dtype(variable.dtype)


def _batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested and custom layers included."""
    return [
        layer
        for layer in _internals.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def ema_decay(decay: float, averaged: int, warmup: bool) -> float:
    """The EMA decay of the update after ``averaged`` averaged updates (0: a copy).

    Plain: ``decay``. Warm-up form (TF1 ``ExponentialMovingAverage`` with
    ``num_updates``): ``min(decay, (1 + n) / (10 + n))``.
    """
    if averaged == 0:
        return 0.0
    return min(decay, (1.0 + averaged) / (10.0 + averaged)) if warmup else decay


@keras.saving.register_keras_serializable(package="tfkit")
class WeightAveraging(keras.callbacks.Callback):
    """Exponential (EMA) or equal (SWA) averages of the weights, one update per real step.

    With ``w_u`` the weights after the ``u``-th real optimizer update and
    ``n`` the number of updates averaged so far, each averaged update does::

        n == 0:       avg <- w_u                                  (a copy)
        kind="ema":   avg <- avg + (1 - d_n) * (w_u - avg)
                      d_n = decay, or min(decay, (1 + n) / (10 + n)) with warmup=True
        kind="swa":   avg <- avg + (w_u - avg) / (n + 1)          (the mean of all)
        n <- n + 1

    The updates averaged are ``u = start + every, start + 2 * every, ...``
    where ``start`` is ``start_step``, or the number of updates done when
    epoch ``start_epoch`` begins. These are torch's ``AveragedModel`` with
    ``get_ema_multi_avg_fn(decay)`` and its default SWA average.

    **What counts as an update.** The callback reads the ``iterations`` of the
    first leaf optimizer (below ``LossScaleOptimizer``, ``GradientAccumulator``
    and ``MultiOptimizer``) after every batch, in one small compiled function
    (no host transfer), and averages only when it advanced. It advances once
    per real update: once per accumulation window under
    ``tfkit.GradientAccumulator`` (never per micro-batch), and not on a step a
    loss-scale optimizer skipped for overflow. With
    ``tfkit.training.install(model, weight_averaging=averaging)`` the same
    function runs inside the train step instead, right after
    ``optimizer.apply`` (no extra dispatch per batch; see docs/averaging.md
    for the cost of each).

    An update whose weights are not all finite is not averaged (counted in
    ``state.nonfinite``): a diverged step never reaches the averages.

    **How they are kept.** One float32 variable per floating-point weight,
    created once on the weights' devices (mirrored under a
    ``tf.distribute`` strategy), also when the weights are float16/bfloat16.
    Swapping them into the model exchanges values in place (no further copy
    of the weights for float32 weights).

    **BatchNorm.** ``batch_norm="average"`` averages the moving statistics
    with the weights (torch's ``use_buffers=True``). ``batch_norm="recompute"``
    keeps the statistics of the current weights and recomputes them for the
    averages with :meth:`recompute_batch_norm` over a pass of data (torch's
    ``update_bn``: the equal average of every batch's mean and variance, with
    Keras' biased variance); pass ``batch_norm_data`` to have it done at the
    end of ``fit``.

    **Using the averages.** :meth:`get_averaged_weights` is aligned with
    ``model.get_weights()``; ``with averaging.averaged(): ...`` runs a block
    (``evaluate``, ``save``) with the averages in the model.
    ``swap_on_evaluate`` swaps them in for validation and ``evaluate`` calls
    that receive this callback; ``swap_on_epoch`` keeps them in the model
    during the ``on_epoch_end`` of the callbacks listed *after* this one
    (``ModelCheckpoint``, ``EarlyStopping``, ``.keras`` saving), swapping back
    before the next batch; ``final_weights="averaged"`` leaves them in the
    model when ``fit`` ends (Keras' ``use_ema`` does the same).

    **Resume.** Everything (averages, counters, whether they are swapped in)
    lives in ``self.state``, a ``tf.Module``: pass this callback in
    ``tfkit.callbacks.BackupAndRestore(..., callbacks=[averaging])`` and a
    killed run resumes with the averages it would have had.

    Needs ``steps_per_execution=1`` (one callback call per update). Refuses
    Keras optimizers built with ``use_ema=True`` (they overwrite the weights
    with their own average): use one or the other.

    Args:
        kind: ``"ema"`` (default) or ``"swa"``.
        decay: EMA decay in ``[0, 1)``. Default 0.999. Ignored for SWA.
        warmup: EMA warm-up form ``min(decay, (1 + n) / (10 + n))``. Default False.
        start_step: Updates before averaging starts. Default 0.
        start_epoch: Start at this epoch (0-based) instead; default None.
        every: Average every ``every``-th update. Default 1.
        batch_norm: ``"average"`` (default) or ``"recompute"``.
        swap_on_evaluate: Validation and ``evaluate`` use the averages. Default True.
        swap_on_epoch: Averages in the model during later callbacks'
            ``on_epoch_end``. Default False.
        final_weights: ``"averaged"`` (default) or ``"current"``: the model's
            weights when ``fit`` ends.
        batch_norm_data: Data for :meth:`recompute_batch_norm` at the end of
            ``fit`` (``batch_norm="recompute"`` only; not serialized).

    Example:
        >>> import keras, numpy as np, tfkit
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.1), "mse")
        >>> swa = tfkit.callbacks.WeightAveraging("swa", start_step=2)
        >>> _ = model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=2, epochs=1,
        ...               callbacks=[swa], verbose=0)
        >>> swa.averaged_updates  # updates 3 and 4
        2
        >>> [a.shape for a in swa.get_averaged_weights()]
        [(2, 1), (1,)]

    Reference: Izmailov et al., "Averaging Weights Leads to Wider Optima and
    Better Generalization" (2018); ``torch.optim.swa_utils``.
    """

    def __init__(
        self,
        kind: str = "ema",
        decay: float = 0.999,
        warmup: bool = False,
        start_step: int = 0,
        start_epoch: int | None = None,
        every: int = 1,
        batch_norm: str = "average",
        swap_on_evaluate: bool = True,
        swap_on_epoch: bool = False,
        final_weights: str = "averaged",
        batch_norm_data=None,
    ):
        super().__init__()
        self.kind = _validation.check_choice(_OWNER, "kind", kind, KINDS)
        self.decay = _validation.check_float(_OWNER, "decay", decay, low=0.0, high=1.0, high_open=True)
        self.warmup = _validation.check_bool(_OWNER, "warmup", warmup)
        self.start_step = _validation.check_int(_OWNER, "start_step", start_step, low=0)
        if start_epoch is not None:
            start_epoch = _validation.check_int(_OWNER, "start_epoch", start_epoch, low=0)
            if self.start_step:
                _validation.fail(
                    _OWNER, "start_epoch", start_epoch, f"None when start_step={self.start_step} is set"
                )
        self.start_epoch = start_epoch
        self.every = _validation.check_int(_OWNER, "every", every, low=1)
        self.batch_norm = _validation.check_choice(_OWNER, "batch_norm", batch_norm, BATCH_NORM)
        self.swap_on_evaluate = _validation.check_bool(_OWNER, "swap_on_evaluate", swap_on_evaluate)
        self.swap_on_epoch = _validation.check_bool(_OWNER, "swap_on_epoch", swap_on_epoch)
        self.final_weights = _validation.check_choice(
            _OWNER, "final_weights", final_weights, FINAL_WEIGHTS
        )
        if batch_norm_data is not None and self.batch_norm != "recompute":
            _validation.fail(
                _OWNER, "batch_norm_data", type(batch_norm_data).__name__,
                "None unless batch_norm='recompute'",
            )  # fmt: skip
        self.batch_norm_data = batch_norm_data
        self.state = CallbackState(
            "weight_averaging",
            recorded=(-1, tf.int64),  # leaf iterations when last looked at
            averaged=(0, tf.int64),  # n: updates averaged so far
            start=(-1 if start_epoch is not None else self.start_step, tf.int64),
            swapped=(0, tf.int64),  # 1 while the averages sit in the model
            nonfinite=(0, tf.int64),  # updates not averaged: the weights were not finite
        )
        # Appended one by one in _bind so a checkpoint read before it (by
        # BackupAndRestore's on_train_begin) is restored into them on creation.
        self.state.averages = []
        self._sources = None  # the model's float weights, aligned with state.averages
        self._update_fn = self._swap_fn = self._assign_fn = None
        self._held = []  # copies of non-float32 weights while swapped
        self._swapped_for_test = False

    def get_config(self) -> dict:
        """Constructor arguments except ``batch_norm_data`` (data, passed again on load)."""
        return {
            "kind": self.kind,
            "decay": self.decay,
            "warmup": self.warmup,
            "start_step": self.start_step,
            "start_epoch": self.start_epoch,
            "every": self.every,
            "batch_norm": self.batch_norm,
            "swap_on_evaluate": self.swap_on_evaluate,
            "swap_on_epoch": self.swap_on_epoch,
            "final_weights": self.final_weights,
        }

    @classmethod
    def from_config(cls, config: dict) -> WeightAveraging:
        return cls(**config)

    # -- binding -------------------------------------------------------------
    @property
    def averaged_updates(self) -> int:
        """How many updates the averages hold (``n``)."""
        return self.state.get("averaged")

    def _leaf(self):
        optimizer = resolve_optimizer(_OWNER, self.model)
        for node in walk(optimizer):
            if getattr(node, "use_ema", False):
                raise ValueError(
                    f"{_OWNER}: the optimizer {node.name!r} was built with use_ema=True; it "
                    "overwrites the model's weights with its own moving average, which this "
                    "callback would then average again. Use one of the two: "
                    "WeightAveraging('ema', decay=ema_momentum) or use_ema=True."
                )
        return leaves(optimizer)[0]

    def _bind(self) -> None:
        model = self.model
        if not model.built:
            raise ValueError(f"{_OWNER}: the model must be built before training starts.")
        sources = [v for v in model.weights if _is_float(v)]
        same = self._sources is not None and len(self._sources) == len(sources) and all(
            a is b for a, b in zip(self._sources, sources, strict=True)
        )
        if same and self._update_fn is not None:
            return
        averages = self.state.averages
        if len(averages) != len(sources) or any(
            tuple(a.shape) != tuple(v.shape) for a, v in zip(averages, sources, strict=True)
        ):
            del averages[:]
            with _strategy_scope(model):
                for i, v in enumerate(sources):
                    averages.append(
                        tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False, name=f"average_{i}")
                    )
        self._sources = sources
        self._held = [None] * len(sources)
        with _strategy_scope(model):
            for i, v in enumerate(sources):
                if tf.as_dtype(v.dtype) != tf.float32:
                    self._held[i] = tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)
        self._build_functions(self._leaf())

    def _build_functions(self, leaf) -> None:
        state, averages, every = self.state, list(self.state.averages), self.every
        plain = [_plain(v) for v in self._sources]
        # In "recompute" mode the statistics slots follow the current weights.
        averaged_slot = [
            self.batch_norm == "average" or v.trainable for v in self._sources
        ]
        kind, decay, warmup = self.kind, self.decay, self.warmup
        held = self._held

        def average():
            n = state.averaged.read_value()
            nf = tf.cast(n, tf.float32)
            if kind == "swa":
                rate = 1.0 / (nf + 1.0)
            else:
                d = tf.constant(decay, tf.float32)
                if warmup:
                    d = tf.minimum(d, (1.0 + nf) / (10.0 + nf))
                rate = tf.where(n > 0, 1.0 - d, 1.0)
            rate = tf.where(n > 0, rate, 1.0)  # the first averaged update is a copy
            for a, w, slot in zip(averages, plain, averaged_slot, strict=True):
                value = tf.cast(w.read_value(), tf.float32)
                a.assign(a + rate * (value - a) if slot else value)
            state.averaged.assign_add(1)
            return tf.constant(True)

        def skip_nonfinite():
            state.nonfinite.assign_add(1)
            return tf.constant(False)

        @tf.function(autograph=False)
        def update():
            u = tf.cast(leaf.iterations, tf.int64)
            start = state.start.read_value()
            due = tf.logical_and(u > state.recorded.read_value(), start >= 0)
            due = tf.logical_and(due, u > start)
            due = tf.logical_and(due, tf.math.floormod(u - start, every) == 0)
            state.recorded.assign(u)

            def average_if_finite():
                # A diverged update must not reach the averages (they would stay NaN).
                finite = tf.reduce_all(
                    tf.stack([tf.reduce_all(tf.math.is_finite(w.read_value())) for w in plain])
                )
                return tf.cond(finite, average, skip_nonfinite)

            return tf.cond(due, average_if_finite, lambda: tf.constant(False))

        @tf.function(autograph=False)
        def swap():
            for a, w, h in zip(averages, plain, held, strict=True):
                if h is None:  # float32 weight: exchange the two values
                    current = w.read_value()
                    w.assign(a.read_value())
                    a.assign(current)
            return tf.constant(True)

        @tf.function(autograph=False)
        def hold_in():
            for a, w, h in zip(averages, plain, held, strict=True):
                if h is not None:
                    h.assign(w.read_value())
                    w.assign(tf.cast(a, w.dtype))
            return tf.constant(True)

        @tf.function(autograph=False)
        def hold_out():
            for w, h in zip(plain, held, strict=True):
                if h is not None:
                    w.assign(h.read_value())
            return tf.constant(True)

        @tf.function(autograph=False)
        def assign():
            for a, w in zip(averages, plain, strict=True):
                w.assign(tf.cast(a, w.dtype))
            return tf.constant(True)

        self._update_fn, self._swap_fn, self._assign_fn = update, swap, assign
        self._hold_in_fn, self._hold_out_fn = hold_in, hold_out

    # -- the update ----------------------------------------------------------
    def update(self) -> None:
        """Average the current weights if the optimizer made a real update since the last call.

        ``fit`` calls it after every batch; call it after each step in a custom loop
        (after ``set_model(model)`` and ``on_train_begin()``).
        """
        if self._update_fn is None:
            self._bind()
        self._update_fn()

    def update_in_step(self) -> None:
        """The update, traced into a train step after ``optimizer.apply`` (a replica context).

        ``tfkit.training.install(model, weight_averaging=...)`` calls it; the
        callback must be bound (``on_train_begin``) before the step is traced.
        """
        fn = self._update_fn
        if fn is None:
            raise ValueError(
                f"{_OWNER}: the train step was traced before this callback's on_train_begin; "
                "pass it in fit's callbacks."
            )
        replica = tf.distribute.get_replica_context()
        if replica is None or replica.num_replicas_in_sync == 1:
            fn()
        else:
            # The averages are mirrored: update them once, from the cross-replica context.
            replica.merge_call(lambda _: fn())

    # -- swapping ------------------------------------------------------------
    def _swap_in(self) -> bool:
        if self._update_fn is None:
            self._bind()
        if self.state.get("swapped") or not self.state.get("averaged"):
            return False
        # Non-float32 weights are held aside so the float32 averages keep their precision.
        self._hold_in_fn()
        self._swap_fn()
        self.state.set("swapped", 1)
        return True

    def _swap_out(self) -> bool:
        if not self.state.get("swapped"):
            return False
        self._swap_fn()
        self._hold_out_fn()
        self.state.set("swapped", 0)
        return True

    @contextlib.contextmanager
    def averaged(self):
        """Context manager: the averages are in the model inside the block, the weights after.

        Before the first averaged update the model keeps its weights.

        Example:
            >>> import keras, numpy as np, tfkit
            >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
            >>> model.compile(keras.optimizers.SGD(0.1), "mse")
            >>> ema = tfkit.callbacks.WeightAveraging("ema", decay=0.5, final_weights="current")
            >>> _ = model.fit(np.ones((4, 1)), np.ones((4, 1)), batch_size=1, callbacks=[ema],
            ...               verbose=0)
            >>> with ema.averaged():
            ...     inside = model.get_weights()
            >>> all(np.allclose(a, b) for a, b in zip(inside, ema.get_averaged_weights()))
            True
        """
        swapped_here = self._swap_in()
        try:
            yield self.model
        finally:
            if swapped_here:
                self._swap_out()

    def get_averaged_weights(self) -> list[np.ndarray]:
        """The averaged weights, aligned with ``model.get_weights()`` (same order, shapes, dtypes).

        Weights that are not floating point (counters) are the model's own;
        before the first averaged update these are the model's weights.
        """
        if self._update_fn is None:
            self._bind()
        if self.state.get("swapped") or not self.state.get("averaged"):
            return self.model.get_weights()
        slots = {id(v): a for v, a in zip(self._sources, self.state.averages, strict=True)}
        out = []
        for v in self.model.weights:
            a = slots.get(id(v))
            value = a.numpy() if a is not None else keras.ops.convert_to_numpy(v)
            out.append(value.astype(keras.backend.standardize_dtype(v.dtype)))
        return out

    # -- BatchNorm statistics ------------------------------------------------
    def recompute_batch_norm(self, data, steps: int | None = None) -> int:
        """Recompute the averages' BatchNorm statistics over ``data`` (torch's ``update_bn``).

        With the averages in the model, each batch ``b`` runs a training-mode
        forward pass; every BatchNormalization layer's statistics become the
        equal mean over batches of the batch mean and (biased) variance::

            moving_mean = mean_b mean(x_b),   moving_variance = mean_b var(x_b)

        The statistics are stored with the averages (the model's own weights
        and statistics are unchanged). ``data``: a ``tf.data.Dataset`` or
        iterable of ``x`` or ``(x, ...)`` batches. Returns the number of batches used.
        """
        if steps is not None:
            steps = _validation.check_int(_OWNER, "steps", steps, low=1)
        layers = _batch_norm_layers(self.model)
        for layer in layers:
            if getattr(layer, "accumulation_steps", 1) != 1:
                raise ValueError(
                    f"{_OWNER}: recompute_batch_norm needs BatchNormalization layers that update "
                    f"on every call; {layer.name!r} has accumulation_steps="
                    f"{layer.accumulation_steps}."
                )
            if not layer.momentum < 1.0:
                raise ValueError(
                    f"{_OWNER}: recompute_batch_norm needs momentum < 1; {layer.name!r} has "
                    f"momentum={layer.momentum!r}."
                )
        if not layers:
            return 0
        stats = [(layer, layer.moving_mean, layer.moving_variance) for layer in layers]
        model = self.model

        @tf.function(autograph=False)
        def batch_stats(x):
            for _, mean, var in stats:
                mean.assign(tf.zeros_like(mean))
                var.assign(tf.zeros_like(var))
            model(x, training=True)
            # From zero, one update leaves (1 - momentum) * batch statistic.
            return [
                (tf.cast(mean, tf.float64) / (1.0 - layer.momentum),
                 tf.cast(var, tf.float64) / (1.0 - layer.momentum))
                for layer, mean, var in stats
            ]  # fmt: skip

        with self.averaged():
            saved = [(m.numpy(), v.numpy()) for _, m, v in stats]
            sums, count = None, 0
            for batch in data:
                if steps is not None and count >= steps:
                    break
                x = batch[0] if isinstance(batch, tuple | list) else batch
                values = batch_stats(x)
                values = [(m.numpy(), v.numpy()) for m, v in values]
                sums = values if sums is None else [
                    (sm + m, sv + v) for (sm, sv), (m, v) in zip(sums, values, strict=True)
                ]
                count += 1
            if count == 0:
                for (_, m, v), (sm, sv) in zip(stats, saved, strict=True):
                    m.assign(sm)
                    v.assign(sv)
                raise ValueError(f"{_OWNER}: recompute_batch_norm received no batches.")
            for (_, m, v), (sm, sv) in zip(stats, sums, strict=True):
                m.assign((sm / count).astype(np.float32))
                v.assign((sv / count).astype(np.float32))
        return count

    # -- callback hooks ------------------------------------------------------
    def on_train_begin(self, logs=None):
        spe = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if spe != 1:
            raise ValueError(
                f"{_OWNER}: needs steps_per_execution=1 (it averages after every real update, "
                f"from the batch callback); received steps_per_execution={spe}."
            )
        resuming = self.state.begin()
        self._bind()
        self._swapped_for_test = False
        if not resuming:
            self.state.set("recorded", int(self._leaf().iterations.numpy()))
            return
        # A backup written while the averages were swapped in holds them in the model.
        self._swap_out()
        # A backup written after an update but before this callback saw it: catch up.
        self._update_fn()

    def on_epoch_begin(self, epoch, logs=None):
        self._swap_out()
        if self.start_epoch is not None and epoch >= self.start_epoch and self.state.get("start") < 0:
            self.state.set("start", int(self._leaf().iterations.numpy()))

    def on_train_batch_begin(self, batch, logs=None):
        if self.swap_on_epoch:
            self._swap_out()

    def on_train_batch_end(self, batch, logs=None):
        if installed_averaging(self.model) is not self:
            self._update_fn()  # else the train step did it, in-graph

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch:
            self._swap_in()

    def on_test_begin(self, logs=None):
        if self.swap_on_evaluate and self.model is not None:
            self._swapped_for_test = self._swap_in()

    def on_test_end(self, logs=None):
        if self._swapped_for_test:
            self._swap_out()
            self._swapped_for_test = False

    def on_train_end(self, logs=None):
        self._swap_out()
        if self.batch_norm_data is not None:
            if self.state.get("averaged"):
                self.recompute_batch_norm(self.batch_norm_data)
            else:
                warnings.warn(
                    f"{_OWNER}: no update was averaged; BatchNorm statistics not recomputed.",
                    stacklevel=2,
                )
        if self.final_weights == "averaged" and self.state.get("averaged"):
            self._assign_fn()
        self.state.end()
