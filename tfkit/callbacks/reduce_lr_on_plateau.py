"""Reduce the learning rate on a plateau, whatever the learning rate is (float, schedule, groups)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from tfkit import _validation
from tfkit.callbacks import _monitor
from tfkit.callbacks._state import CallbackState, MonitorStateMixin
from tfkit.callbacks.hyperparameter_logger import learning_rate_logs
from tfkit.optimizers.hyperparameters import install_for

__all__ = ["ReduceLROnPlateau"]


@keras.saving.register_keras_serializable(package="tfkit")
class ReduceLROnPlateau(MonitorStateMixin, keras.callbacks.Callback):
    """Reduce the learning rate when a monitored quantity stops improving.

    Keras' ``ReduceLROnPlateau`` raises ``TypeError`` when the optimizer's
    learning rate is a ``LearningRateSchedule``
    (docs/keras-defects.md#reduce-lr-on-schedule), and ``AttributeError`` on a
    ``MultiOptimizer``. This one works on any optimizer tree: a reduction
    multiplies the ``learning_rate_multiplier`` of every parameter group's
    :class:`tfkit.optimizers.HyperparameterState` by the same factor, so the
    groups keep their ratios and every schedule keeps its shape; the rate an
    update applies is ``multiplier * rate(step)``. ``min_lr`` bounds the
    *reduction*: the factor is never so small that the largest group's current
    rate falls below ``min_lr`` (the schedule's own decay is not clamped).

    The product of the reductions lives in one place, the groups' multiplier:
    a variable read in-graph (no retrace when it changes), tracked by the
    optimizer (``tf.train.Checkpoint(optimizer=...)`` saves it) and carried by
    ``BackupAndRestore`` with the other knobs. ``self.state`` holds the
    counters (``wait``, ``best``, ``cooldown_counter``) for resumes; see
    ``tfkit.callbacks.EarlyStopping`` for the resume rule.

    In a custom loop driven through ``keras.callbacks.CallbackList``, call
    ``on_train_begin`` before the step function is first traced (with an
    uncompiled model, create ``tfkit.TrainStep`` first).

    Two decision rules, chosen by the argument names:

    * Keras' rule (default; ``min_delta``): at each epoch end, in cooldown the
      counter decreases and ``wait = 0``; an improvement (``min_delta``,
      ``threshold_mode`` as in ``EarlyStopping``) resets ``wait``; otherwise, out
      of cooldown, ``wait += 1`` and when ``wait >= patience`` the rate is
      reduced, the cooldown starts and ``wait = 0``. ``min_lr`` bounds the
      largest group's rate and every group is scaled by the same factor.
    * PyTorch's rule, selected by passing ``threshold`` or ``eps`` (names only
      PyTorch has): the same arguments give ``torch.optim.lr_scheduler.
      ReduceLROnPlateau``'s decisions and rates epoch by epoch. An epoch that
      does not improve by ``threshold`` counts as bad, then a cooldown epoch
      resets the count; the rate is reduced when bad epochs ``> patience``;
      each group's rate becomes ``max(rate * factor, min_lr[group])`` and is
      only changed when that lowers it by more than ``eps``. Defaults are
      PyTorch's: ``threshold_mode="rel"``, ``threshold=1e-4``, ``eps=1e-8``.

    Mapping between the rules: PyTorch's ``patience=p`` is Keras' ``patience=p + 1``,
    and PyTorch's ``cooldown=c`` acts like Keras' ``cooldown=c + 1`` (Keras counts
    the epoch that ends a cooldown, PyTorch does not). One deliberate difference
    from PyTorch: a non-finite value (NaN, and also ``-inf`` in "min" mode) is
    never an improvement.

    Args:
        monitor: Key of the logs to watch. Default ``"val_loss"``.
        factor: Multiplier applied at each reduction, ``0 < factor < 1``. Default 0.1.
        patience: Epochs without improvement before a reduction (``>= 0``). Default 10.
        verbose: 0 silent, 1 prints each reduction. Default 0.
        mode: ``"auto"``, ``"min"`` or ``"max"``. Default ``"auto"``.
        min_delta: Threshold for an improvement (``>= 0``), Keras' rule. Default 1e-4
            (None: 1e-4); not with ``threshold``.
        cooldown: Epochs to wait after a reduction before counting again (``>= 0``). Default 0.
        min_lr: Lower bound on the (effective) learning rate (``>= 0``). Default 0.
            With PyTorch's rule also one bound per parameter group: a list in
            the order of ``tfkit.optimizers.control(optimizer)``, or a dict by
            group name.
        threshold_mode: ``"abs"`` or ``"rel"``. Default None: ``"abs"`` (Keras'
            rule), ``"rel"`` (PyTorch's rule, as PyTorch).
        threshold: PyTorch's name for the improvement threshold (``>= 0``);
            passing it selects PyTorch's rule. Default None.
        eps: PyTorch's minimal change of a rate (``>= 0``); passing it selects
            PyTorch's rule (default there 1e-8). Default None.

    Example:
        >>> import numpy as np, keras
        >>> from tfkit.callbacks import ReduceLROnPlateau
        >>> sched = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=100)
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(sched), "mse")
        >>> cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
        >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=3, verbose=0, callbacks=[cb])
        >>> cb.multiplier  # first epoch sets `best`, the next two reduce
        0.25

    Reference: ``keras.callbacks.ReduceLROnPlateau``;
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (``threshold_mode``).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float | None = 1e-4,
        cooldown: int = 0,
        min_lr: float | Sequence[float] | dict = 0.0,
        threshold_mode: str | None = None,
        threshold: float | None = None,
        eps: float | None = None,
    ):
        super().__init__()
        owner = "ReduceLROnPlateau"
        self._lookup = _monitor.MonitorLookup(owner, monitor)
        _monitor.check_choice(owner, "mode", mode, _monitor.MODES)
        self.torch_rule = threshold is not None or eps is not None
        if self.torch_rule:
            if min_delta not in (None, 1e-4):
                raise ValueError(
                    f"{owner}: pass either `min_delta` (Keras' rule) or `threshold`/`eps` "
                    f"(PyTorch's rule), not both; received min_delta={min_delta!r}, "
                    f"threshold={threshold!r}, eps={eps!r}."
                )
            threshold = 1e-4 if threshold is None else threshold
            eps = 1e-8 if eps is None else eps
            threshold_mode = "rel" if threshold_mode is None else threshold_mode
            min_delta = _monitor.check_number(owner, "threshold", threshold, low=0)
            eps = _monitor.check_number(owner, "eps", eps, low=0)
        else:
            threshold_mode = "abs" if threshold_mode is None else threshold_mode
            min_delta = 1e-4 if min_delta is None else min_delta
            _monitor.check_number(owner, "min_delta", min_delta, low=0)
        _monitor.check_choice(owner, "threshold_mode", threshold_mode, _monitor.THRESHOLD_MODES)
        _monitor.check_number(owner, "factor", factor, low=0, high=1,
                              low_open=True, high_open=True)
        _monitor.check_number(owner, "patience", patience, low=0, integer=True)
        _monitor.check_number(owner, "cooldown", cooldown, low=0, integer=True)
        self.min_lr = _min_lrs(owner, min_lr, self.torch_rule)
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = mode
        self.min_delta = float(min_delta)
        self.cooldown = int(cooldown)
        self.threshold_mode = threshold_mode
        self.eps = eps
        self.state = CallbackState(
            "reduce_lr_on_plateau",
            wait=(0, "int64"),
            best=(math.nan, "float64"),
            cooldown_counter=(0, "int64"),
        )
        self._direction = None
        self._groups = {}

    @property
    def cooldown_counter(self) -> int:
        return self.state.get("cooldown_counter")

    @property
    def multiplier(self) -> float:
        """The groups' ``learning_rate_multiplier``: the product of the reductions (1.0 before fit)."""
        if not self._groups:
            return 1.0
        return float(next(iter(self._groups.values())).learning_rate_multiplier.numpy())

    def on_train_begin(self, logs=None):
        self.state.begin()
        # A rate reduced in an earlier fit stays reduced (as Keras' float rate does).
        self._groups = install_for("ReduceLROnPlateau", self.model)
        # The multipliers are the optimizer's knobs: BackupAndRestore restores them.
        self._check_group_min_lr()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            # As Keras' callback: the rate(s) before this epoch's reduction; a
            # HyperparameterLogger placed earlier wrote the same values.
            for key, value in learning_rate_logs(self._groups).items():
                logs.setdefault(key, value)
        current = self._lookup(logs)
        if current is None:
            return
        if self._direction is None:
            self._direction = _monitor.resolve_direction("ReduceLROnPlateau", self.monitor, self.mode, self.model)
        if self.torch_rule:
            self._torch_decision(epoch, current)
            return
        wait, cooldown_counter = self.wait, self.cooldown_counter
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if _monitor.is_improvement(current, self.best, self._direction, self.min_delta, self.threshold_mode):
            self.state.set("best", current)
            wait = 0
        elif cooldown_counter <= 0:
            wait += 1
            if wait >= self.patience:
                if self._reduce(epoch):
                    cooldown_counter = self.cooldown
                    wait = 0
        self.state.set("wait", wait)
        self.state.set("cooldown_counter", cooldown_counter)

    def _torch_decision(self, epoch, current: float) -> None:
        """PyTorch's ``ReduceLROnPlateau.step``: count the bad epoch, then the cooldown."""
        wait, cooldown_counter = self.wait, self.cooldown_counter
        if _monitor.is_improvement(current, self.best, self._direction, self.min_delta, self.threshold_mode):
            self.state.set("best", current)
            wait = 0
        else:
            wait += 1
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0  # bad epochs in a cooldown are ignored
        if wait > self.patience:
            self._reduce_each_group(epoch)
            cooldown_counter, wait = self.cooldown, 0
        self.state.set("wait", wait)
        self.state.set("cooldown_counter", cooldown_counter)

    def _reduce_each_group(self, epoch) -> None:
        """PyTorch's ``_reduce_lr``: ``max(rate * factor, min_lr[g])`` per group, if it moves > eps."""
        for i, (name, state) in enumerate(self._groups.items()):
            old = state.learning_rate()  # at the current step, knobs (earlier reductions) included
            new = max(old * self.factor, self._group_min_lr(i, name))
            if old - new > self.eps:
                factor = new / old
                state.learning_rate_multiplier.assign(
                    float(state.learning_rate_multiplier.numpy()) * factor
                )
        if self.verbose:
            rates = ", ".join(f"{s.learning_rate():.4g}" for s in self._groups.values())
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau: learning rate(s) now {rates}.")

    def _check_group_min_lr(self) -> None:
        names = list(self._groups)
        if isinstance(self.min_lr, list) and len(self.min_lr) != len(names):
            _validation.fail(
                "ReduceLROnPlateau", "min_lr", self.min_lr,
                f"one bound per parameter group ({len(names)}: {names})",
            )
        if isinstance(self.min_lr, dict) and not set(self.min_lr) <= set(names):
            _validation.fail(
                "ReduceLROnPlateau", "min_lr", self.min_lr,
                f"a dict keyed by parameter-group names ({names})",
            )

    def _group_min_lr(self, index: int, name: str) -> float:
        if isinstance(self.min_lr, dict):
            return self.min_lr.get(name, 0.0)
        if isinstance(self.min_lr, list):
            return self.min_lr[index]
        return self.min_lr

    def _reduce(self, epoch) -> bool:
        largest = max(state.learning_rate() for state in self._groups.values())
        if not largest > np.float32(self.min_lr):
            return False
        factor = max(self.factor, self.min_lr / largest)
        for state in self._groups.values():
            multiplier = float(state.learning_rate_multiplier.numpy()) * factor
            if not (math.isfinite(multiplier) and multiplier > 0):
                raise ValueError(f"ReduceLROnPlateau: the learning-rate multiplier became {multiplier!r}.")
            state.learning_rate_multiplier.assign(multiplier)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing the learning rate(s) by {factor:g} "
                  f"(multiplier {self.multiplier:g}).")
        return True

    def on_train_end(self, logs=None):
        self.state.end()

    def get_config(self) -> dict:
        return {
            "monitor": self.monitor, "factor": self.factor, "patience": self.patience,
            "verbose": self.verbose, "mode": self.mode, "min_delta": self.min_delta,
            "cooldown": self.cooldown, "min_lr": self.min_lr, "threshold_mode": self.threshold_mode,
            **(
                {"min_delta": None, "threshold": self.min_delta, "eps": self.eps}
                if self.torch_rule
                else {}
            ),
        }

    @classmethod
    def from_config(cls, config: dict) -> ReduceLROnPlateau:
        return cls(**config)



def _min_lrs(owner: str, min_lr, per_group: bool):
    """``min_lr`` as a float, or (PyTorch's rule) a list or dict of per-group floats."""
    if isinstance(min_lr, dict | list | tuple) and not per_group:
        _validation.fail(
            owner, "min_lr", min_lr,
            "a number >= 0 (one bound per group is PyTorch's rule: pass `threshold` or `eps` too)",
            TypeError,
        )
    if isinstance(min_lr, dict):
        for key in min_lr:
            if not isinstance(key, str):
                _validation.fail(owner, "min_lr", min_lr, "a dict keyed by group names", TypeError)
        return {
            k: float(_validation.check_number(owner, f"min_lr[{k!r}]", v, low=0))
            for k, v in min_lr.items()
        }
    if isinstance(min_lr, list | tuple):
        return [
            float(_validation.check_number(owner, f"min_lr[{i}]", v, low=0))
            for i, v in enumerate(min_lr)
        ]
    return float(_validation.check_number(owner, "min_lr", min_lr, low=0))
