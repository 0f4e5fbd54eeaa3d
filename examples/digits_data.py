"""The offline data used by the examples: scikit-learn's digits (8x8, 10 classes).

It ships inside scikit-learn, so nothing is downloaded at run time.
"""

from __future__ import annotations

import numpy as np


def load_digits_split(test_fraction: float = 0.2, seed: int = 0, image: bool = False):
    """Return ``(x_train, y_train), (x_test, y_test)`` as float32 in [0, 1] and int32 labels.

    With ``image=True`` inputs have shape ``(n, 8, 8, 1)``, else ``(n, 64)``.
    The split is stratified so both parts hold every class in proportion.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")
    x = x[..., None] if image else x.reshape(len(x), -1)
    y = data.target.astype("int32")
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return (np.ascontiguousarray(x_tr), y_tr), (np.ascontiguousarray(x_te), y_te)
