"""The quickstart model: a small residual conv net for 8x8 digits.

One definition shared by ``tfkit lr-find``, ``tfkit doctor`` and
``examples/quickstart.py``, with the digits data the commands train on. It
lives in the package because an installed tfkit has no ``examples/`` to
import from; the example imports it from here.
"""

from __future__ import annotations


def build_model(width: int = 32, blocks: int = 2, recompute: bool = True, num_classes: int = 10):
    """8x8x1 -> Conv(width) -> blocks x relu(x + Conv(Dropout(Conv(x)))) -> max-pool -> softmax.

    Args:
        width: channels of every convolution (default 32).
        blocks: residual blocks (default 2).
        recompute: wrap each block in :class:`tfkit.Recompute` (default True):
            its activations are recomputed in the backward pass, not stored.
        num_classes: outputs of the float32 softmax layer (default 10).

    Example:
        >>> model = build_model(recompute=False)
        >>> model.output_shape
        (None, 10)
    """
    import keras

    from tfkit.recompute import Recompute

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    for i in range(blocks):
        block = keras.Sequential(
            [
                keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
                keras.layers.Dropout(0.1),
                keras.layers.Conv2D(width, 3, padding="same"),
            ],
            name=f"block_{i}",
        )
        h = Recompute(block)(x) if recompute else block(x)
        x = keras.layers.Activation("relu")(keras.layers.Add()([x, h]))
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D()(x))
    # Softmax and loss in float32 whatever the policy (tfkit.precision.audit checks it).
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def digits(seed: int):
    """scikit-learn's offline digits as 8x8x1 images in [0, 1] and int labels, shuffled by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # optional extra "examples"
        raise ImportError(
            "the digits data needs scikit-learn: pip install 'tfkit[examples]'"
        ) from err
    import numpy as np

    data = load_digits()
    x = (data.images[..., None] / 16.0).astype("float32")
    y = data.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]
