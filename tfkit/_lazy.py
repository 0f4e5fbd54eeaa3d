"""Run a callback once Keras/TensorFlow is imported, without importing them first.

``import tfkit`` must not import TensorFlow (a CLI ``--help`` would pay ~10 s
for it), yet ``keras.saving.load_model(..., safe_mode=True)`` must find every
tfkit class however the user orders the imports. This module installs a
``sys.meta_path`` finder that watches the imports of ``keras``, ``tensorflow``
and of tfkit's own submodules; when the outermost watched import returns and
Keras or TensorFlow is loaded, it removes itself and calls the callback once.

Waiting for the *outermost* import matters: ``import tfkit.schedules`` imports
Keras half-way through tfkit.schedules, and registering there would import
tfkit modules that depend on the half-built tfkit.schedules.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Callable, Iterable


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, triggers: Iterable[str], callback: Callable[[], None]) -> None:
        self._triggers = frozenset(triggers)
        self._callback = callback
        self._depth = 0
        self._lock = threading.RLock()

    def _watched(self, fullname: str) -> bool:
        return fullname in self._triggers or fullname.startswith("tfkit.")

    def find_spec(self, fullname, path, target=None):
        if not self._watched(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and hasattr(loader, "exec_module"):
            # An instance attribute shadows the loader's method: the loader keeps
            # its type (importlib.resources and friends look at it).
            loader.exec_module = self._wrap(loader.exec_module)
        return spec

    def _wrap(self, exec_module):
        def exec_and_maybe_fire(module) -> None:
            with self._lock:
                self._depth += 1
            try:
                exec_module(module)
            finally:
                with self._lock:
                    self._depth -= 1
                    outermost = self._depth == 0
            if outermost:
                self._fire()

        return exec_and_maybe_fire

    def _fire(self) -> None:
        with self._lock:
            if not any(name in sys.modules for name in self._triggers):
                return
            if self not in sys.meta_path:
                return
            sys.meta_path.remove(self)
        self._callback()


def call_after_import(triggers: Iterable[str], callback: Callable[[], None]) -> None:
    """Call ``callback()`` once, after the outermost import that loads one of ``triggers``."""
    sys.meta_path.insert(0, _AfterImport(triggers, callback))
