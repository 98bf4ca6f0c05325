"""An offline VTAB-1k-like suite built from the shipped digit sets: 1000 training examples per task.

Targets span domain affinity to an MNIST source: natural-like (sklearn digits), specialised (corrupted
MNIST) and structured tasks whose labels are not digit identity (rotation angle, digit location, counting).
"""
from __future__ import annotations

import numpy as np

from modular import data, rng

STRUCTURED = ("rotation", "location", "count")


def _small(images: np.ndarray) -> np.ndarray:
    """Halve the resolution (2x2 average) so a digit fits in a quadrant of the canvas."""
    n, h, w, c = images.shape
    return images[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _canvas(digits: np.ndarray, slots: np.ndarray, size: int) -> np.ndarray:
    """Paste small digits into the 2x2 grid of quadrants listed by `slots` (a boolean [4])."""
    canvas = np.zeros((size, size, digits.shape[-1]), np.float32)
    half = size // 2
    for j, slot in enumerate(np.flatnonzero(slots)):
        r, c = divmod(int(slot), 2)
        canvas[r * half:(r + 1) * half, c * half:(c + 1) * half] = np.maximum(
            canvas[r * half:(r + 1) * half, c * half:(c + 1) * half], digits[j][:half, :half])
    return canvas


def structured(kind: str, images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of structured task `kind` built from digit `images`: 4 classes, labels drawn with `seed`."""
    draw = np.random.default_rng(seed)
    n, size = len(images), images.shape[1]
    if kind == "rotation":  # label k: rotated by k * 90 degrees
        labels = draw.integers(0, 4, n)
        return np.stack([np.rot90(x, k, axes=(0, 1)) for x, k in zip(images, labels)]), labels.astype(np.int32)
    small = _small(images)
    if kind == "location":  # which quadrant holds the digit
        labels = draw.integers(0, 4, n)
        out = np.stack([_canvas(small[i:i + 1], np.eye(4, dtype=bool)[labels[i]], size) for i in range(n)])
        return out, labels.astype(np.int32)
    if kind == "count":  # how many digits (1..4) are on the canvas
        labels = draw.integers(0, 4, n)
        out = []
        for i in range(n):
            slots = np.zeros(4, bool)
            slots[draw.choice(4, labels[i] + 1, replace=False)] = True
            out.append(_canvas(small[draw.choice(n, labels[i] + 1)], slots, size))
        return np.stack(out), labels.astype(np.int32)
    raise ValueError(f"Unknown structured task {kind!r}; known: {', '.join(STRUCTURED)}.")


def load_task(name: str, *, image_size: int = 16, channels: int = 1, seed: int = 0, max_train: int = 1000,
              max_test: int | None = 1000, source: str = "mnist5k", split_seed: int | None = None) -> data.Dataset:
    """A target task: a data.load name, or 'rotation' / 'location' / 'count' built from `source` images.

    `seed` draws the training subsample, the test cap and the structured labels; `split_seed` (default `seed`)
    the train/test split: pass the backbone's pretraining seed so no test image derives from a pretraining one."""
    base = data.load(source if name in STRUCTURED else name, image_size=image_size, channels=channels, seed=seed,
                     split_seed=split_seed)
    ds = base.subset(max_train=max_train, seed=seed)
    if max_test is not None and len(ds.test_labels) > max_test:
        keep = np.random.default_rng(seed).permutation(len(ds.test_labels))[:max_test]
        ds = data.Dataset(ds.name, ds.train_images, ds.train_labels, ds.test_images[keep], ds.test_labels[keep],
                          ds.num_classes)
    if name in STRUCTURED:  # new labels for the (already capped) source images
        tr_x, tr_y = structured(name, ds.train_images, rng.seed(seed, "structured_labels", "train"))
        te_x, te_y = structured(name, ds.test_images, rng.seed(seed, "structured_labels", "test"))
        ds = data.Dataset(name, tr_x.astype(np.float32), tr_y, te_x.astype(np.float32), te_y, 4)
    return ds
