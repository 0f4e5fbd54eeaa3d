"""Offline English text for the language-model example: the standard library's docstrings.

Every Python installation ships its standard library as source, so this corpus
is real prose that needs no download. Docstrings are extracted with ``ast``
(nothing is imported or executed) from a fixed, sorted list of modules, so the
corpus is the same on every machine with the same Python version.
"""

from __future__ import annotations

import ast
import pathlib
import sysconfig

import numpy as np

# Printable ASCII plus newline: anything else is dropped, so the vocabulary is fixed.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}


def stdlib_docstrings(max_chars: int = 400_000) -> str:
    """Concatenate module, class and function docstrings of the stdlib, up to ``max_chars``."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts.append(doc.strip() + "\n\n")
                    total += len(parts[-1])
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


def encode(text: str) -> np.ndarray:
    return np.array([_INDEX[c] for c in text if c in _INDEX], dtype="int32")


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def windows(ids: np.ndarray, context: int, stride: int | None = None):
    """Cut ``ids`` into (input, next-character target) windows of length ``context``."""
    stride = stride or context
    starts = np.arange(0, len(ids) - context - 1, stride)
    x = np.stack([ids[s : s + context] for s in starts])
    y = np.stack([ids[s + 1 : s + context + 1] for s in starts])
    return x, y
