"""Stop ``fit`` at a chosen batch with an exception, as a kill would (``on_train_end`` does not run)."""

from __future__ import annotations

import keras


class Stop(Exception):
    pass


class StopAt(keras.callbacks.Callback):
    """Raise :class:`Stop` at the end of the ``at``-th batch this callback sees."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise Stop
